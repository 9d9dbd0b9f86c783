"""The web chat widget in a real headless Chromium (Debian's chromium + chromium-driver, driven
by Selenium; scripts/test.sh installs them): the demo page, a delivery question, the bot asking
for the order number, the answer — against the real gateway, node and demo order center. A
screenshot is saved as a test artifact (``$KEFU_TEST_ARTIFACTS``, default ./test-artifacts)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from kefu.dev.stack import DemoStack
from kefu.node.gateway.app import Gateway
from kefu.node.gateway.config import GatewayConfig, resolve_gateway

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        (CHROMIUM is None or DRIVER is None) and not os.environ.get("KEFU_REQUIRE_BROWSER"),
        reason="chromium + chromium-driver not installed (scripts/test.sh installs them)",
    ),
]


class Browser:
    """One headless Chromium on the demo page; each method blocks (run it in a thread)."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM or "chromium"
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--lang=zh-CN",
            "--window-size=900,800",
        ):
            opts.add_argument(arg)
        self.driver = webdriver.Chrome(service=Service(DRIVER or "chromedriver"), options=opts)

    def _wait(self, cond: Any) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, 30).until(cond)

    def bubbles(self) -> list[str]:
        from selenium.webdriver.common.by import By

        return [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, ".kefu-bot")]

    def status(self) -> str:
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.CSS_SELECTOR, ".kefu-status").text)

    def open_demo(self, url: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.get(f"{url}/demo")
        self._wait(lambda d: d.find_elements(By.CSS_SELECTOR, ".kefu-status"))
        self._wait(lambda d: self.status() == "在线")
        box = self.driver.find_element(By.CSS_SELECTOR, ".kefu-widget")
        assert box.get_attribute("role") == "dialog" and box.get_attribute("aria-label")
        field = self.driver.find_element(By.CSS_SELECTOR, ".kefu-widget input[name=message]")
        assert field.get_attribute("aria-label") == "消息"
        assert self.driver.switch_to.active_element == field  # keyboard focus in the input

    def say(self, text: str) -> str:
        """Type and press Enter (keyboard only); the new bot bubble."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        n = len(self.bubbles())
        field = self.driver.find_element(By.CSS_SELECTOR, ".kefu-widget input[name=message]")
        field.send_keys(text, Keys.ENTER)
        self._wait(lambda d: len(self.bubbles()) == n + 1)
        return self.bubbles()[-1]

    def wait_status(self, text: str) -> None:
        self._wait(lambda d: self.status() == text)

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))

    def quit(self) -> None:
        self.driver.quit()


async def test_demo_page_widget_in_headless_chromium(tmp_path: Path) -> None:
    import asyncio

    async with DemoStack(tmp_path / "stack") as stack:
        assert stack.node is not None and stack.node.registry is not None
        key_file = tmp_path / "demo.key"
        key_file.write_text(stack.node.registry.new_keys["demo-shop"], encoding="utf-8")
        with stack.db() as db:
            order = db.execute(
                "SELECT order_number FROM orders WHERE status = 'shipped' LIMIT 1"
            ).fetchone()[0]
        cfg = GatewayConfig.model_validate(
            {
                "listen": "127.0.0.1:0",
                "nodes": [{"id": "local-1", "address": f"127.0.0.1:{stack.node.port}"}],
                "tenants": [{"id": "demo-shop", "api_key_file": str(key_file)}],
            }
        )
        artifacts = Path(os.environ.get("KEFU_TEST_ARTIFACTS") or ROOT / "test-artifacts")
        shot = artifacts / "gateway-widget.png"
        browser = await asyncio.to_thread(Browser)
        try:
            gw = await Gateway(resolve_gateway(cfg, base=tmp_path)).start()
            try:
                await asyncio.to_thread(browser.open_demo, gw.url)
                ask = await asyncio.to_thread(browser.say, "我的订单什么时候到")
                answer = await asyncio.to_thread(browser.say, order)
                await asyncio.to_thread(browser.screenshot, shot)
            finally:
                await gw.close()
            # The connection drops (gateway restarted); the widget reconnects on its own and
            # the conversation goes on: the bot still knows the order number.
            await asyncio.to_thread(browser.wait_status, "连接已断开，正在重连…")
            restarted = cfg.model_copy(update={"listen": f"127.0.0.1:{gw.port}"})
            async with Gateway(resolve_gateway(restarted, base=tmp_path)) as gw2:
                await asyncio.to_thread(browser.wait_status, "在线")
                again = await asyncio.to_thread(browser.say, "这个订单的物流到哪了")
                sessions = await stack.tenant_store().list_sessions(limit=10)
        finally:
            await asyncio.to_thread(browser.quit)
    assert "订单号" in ask
    assert order in answer and "无法" not in answer, answer  # an answer, not a failure
    assert "订单号" not in again, again  # the order number was remembered
    assert len(sessions.items) == 1  # one conversation across the reconnect
    assert shot.stat().st_size > 1000
    assert gw2.port == gw.port
