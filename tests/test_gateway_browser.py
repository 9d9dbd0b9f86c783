"""The web chat widget in a real headless Chromium (Debian's chromium + chromium-driver, driven
by Selenium; scripts/test.sh installs them): the demo page, a delivery question, the bot asking
for the order number, the answer — against the real gateway, node and demo order center. A
screenshot is saved as a test artifact (``$KEFU_TEST_ARTIFACTS``, default ./test-artifacts)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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


def drive_widget(url: str, order_number: str, shot: Path) -> list[str]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

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
    driver = webdriver.Chrome(service=Service(DRIVER or "chromedriver"), options=opts)
    try:
        driver.get(f"{url}/demo")
        wait = WebDriverWait(driver, 30)
        status = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".kefu-status")))
        wait.until(lambda d: status.text == "在线")
        box = driver.find_element(By.CSS_SELECTOR, ".kefu-widget")
        assert box.get_attribute("role") == "dialog" and box.get_attribute("aria-label")
        field = driver.find_element(By.CSS_SELECTOR, ".kefu-widget input[name=message]")
        assert field.get_attribute("aria-label") == "消息"
        assert driver.switch_to.active_element == field  # keyboard focus lands in the input
        field.send_keys("我的订单什么时候到", Keys.ENTER)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".kefu-bot")) == 1)
        field.send_keys(order_number, Keys.ENTER)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".kefu-bot")) == 2)
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))
        return [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".kefu-bot")]
    finally:
        driver.quit()


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
        async with Gateway(resolve_gateway(cfg, base=tmp_path)) as gw:
            bubbles = await asyncio.to_thread(drive_widget, gw.url, order, shot)
    assert "订单号" in bubbles[0]
    assert order[-4:] in bubbles[1] or "物流" in bubbles[1] or "快递" in bubbles[1], bubbles
    assert "无法" not in bubbles[1], bubbles  # an answer, not a plugin failure
    assert shot.stat().st_size > 1000
