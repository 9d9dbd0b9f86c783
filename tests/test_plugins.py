"""Plugins against the real demo order center over HTTP: retries only for idempotent calls,
secrets never logged, the circuit breaker, output mapping, Python plugins via entry points."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kefu.config import load_tenant_config
from kefu.demo.order_center import OrderCenter
from kefu.dev.stack import demo_tenant_copy
from kefu.node.dialog.plugin_api import PluginOutcome
from kefu.node.dialog.plugins import CircuitBreaker, PluginRunner, SecretStore

TOKEN = "s3cr3t-token-value"


@pytest.fixture
async def center(tmp_path: Path) -> AsyncIterator[OrderCenter]:
    async with OrderCenter(tmp_path / "oc.db", port=0, token=TOKEN, seed_orders=40) as oc:
        yield oc


@pytest.fixture
async def runner(center: OrderCenter, tmp_path: Path) -> AsyncIterator[PluginRunner]:
    cfg = load_tenant_config(
        demo_tenant_copy(tmp_path / "t.yaml", order_center_url=center.url, raise_limits=False)
    )
    r = PluginRunner(cfg, SecretStore(extra={"order_center_token": TOKEN}))
    yield r
    await r.close()


def some_order(center: OrderCenter, status: str) -> str:
    import sqlite3

    with sqlite3.connect(center.db_path) as db:
        row = db.execute("SELECT order_number FROM orders WHERE status=?", (status,)).fetchone()
    return str(row[0])


async def test_get_order_maps_outputs_in_the_customers_language(
    center: OrderCenter, runner: PluginRunner
) -> None:
    number = some_order(center, "paid")
    zh, _ = await runner.call("get_order", {"order_number": number}, lang="zh")
    en, call = await runner.call("get_order", {"order_number": number}, lang="en")
    assert zh.outcome is PluginOutcome.OK and zh.values["status"] == "已付款，待发货"
    assert en.values["status"] == "paid, not yet shipped" and en.values["amount"].startswith("¥")
    assert call.outcome == "ok" and call.attempts == 1
    missing, _ = await runner.call("get_order", {"order_number": "2024010100000000"}, lang="zh")
    assert missing.outcome is PluginOutcome.NOT_FOUND and missing.code == "order_not_found"


async def test_business_refusal_is_rejected_with_the_code(
    center: OrderCenter, runner: PluginRunner
) -> None:
    r, _ = await runner.call(
        "cancel_order", {"order_number": some_order(center, "shipped")}, lang="en"
    )
    assert r.outcome is PluginOutcome.REJECTED and r.code == "already_shipped"


async def test_retries_only_for_idempotent_calls(center: OrderCenter, runner: PluginRunner) -> None:
    center.faults.status = 503
    number = some_order(center, "paid")
    get, get_call = await runner.call("get_order", {"order_number": number}, lang="zh")
    post, post_call = await runner.call("cancel_order", {"order_number": number}, lang="zh")
    assert get.outcome is post.outcome is PluginOutcome.FAILED
    assert get_call.attempts == 3 and post_call.attempts == 1  # POST is never retried
    center.faults.status = 0
    again, _ = await runner.call("get_order", {"order_number": number}, lang="zh")
    assert again.values["status"] == "已付款，待发货"  # the POST did not cancel it either


async def test_secret_is_sent_but_never_logged(
    center: OrderCenter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_tenant_config(
        demo_tenant_copy(tmp_path / "t.yaml", order_center_url=center.url, raise_limits=False)
    )
    wrong = PluginRunner(cfg, SecretStore(extra={"order_center_token": "wrong-" + TOKEN}))
    none = PluginRunner(cfg, SecretStore(directory=tmp_path / "no-secrets"))
    try:
        with caplog.at_level(logging.DEBUG):
            denied, _ = await wrong.call("get_order", {"order_number": "1"}, lang="zh")
            absent, _ = await none.call("get_order", {"order_number": "1"}, lang="zh")
    finally:
        await wrong.close()
        await none.close()
    assert denied.outcome is PluginOutcome.FAILED and denied.code == "http_401"
    assert absent.code == "secret_missing"
    assert TOKEN not in caplog.text and "plugin call failed" in caplog.text


async def test_secret_file_in_the_data_dir(tmp_path: Path) -> None:
    (tmp_path / "order_center_token").write_text(TOKEN + "\n")
    assert SecretStore(directory=tmp_path).get("order_center_token") == TOKEN
    assert SecretStore(directory=tmp_path).get("other") is None


async def test_circuit_breaker_fails_fast_while_the_back_end_is_down(
    center: OrderCenter, runner: PluginRunner
) -> None:
    await center.stop()
    codes = [
        (await runner.call("cancel_order", {"order_number": "1"}, lang="zh"))[0].code
        for _ in range(6)
    ]
    assert codes[:5] == ["unavailable"] * 5 and codes[5] == "circuit_open"


def test_circuit_breaker_half_opens_after_the_reset_time() -> None:
    now = [0.0]
    b = CircuitBreaker(failures=2, reset_s=10, clock=lambda: now[0])
    b.record(False)
    assert b.allow()
    b.record(False)
    assert b.state == "open" and not b.allow()
    now[0] = 10.0
    assert b.state == "half_open" and b.allow() and not b.allow()  # one trial call only
    b.record(False)
    assert b.state == "open"
    now[0] = 20.0
    assert b.allow()
    b.record(True)
    assert b.state == "closed" and b.allow()


async def test_python_plugin_through_its_entry_point(tmp_path: Path) -> None:
    from kefu.config import parse_tenant_config
    from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG

    text = DEMO_TENANT_CONFIG.read_text(encoding="utf-8").replace(
        "plugins:\n",
        "plugins:\n  - id: hours\n    kind: python\n    entry_point: service-hours\n"
        "    outputs: {on_duty: on_duty, hours: 'hours.{lang}'}\n",
        1,
    )
    runner = PluginRunner(parse_tenant_config(text))
    try:
        day, call = await runner.call("hours", {"at": "2024-11-25T04:00:00+00:00"}, lang="en")
        night, _ = await runner.call("hours", {"at": "2024-11-25T15:00:00+00:00"}, lang="zh")
    finally:
        await runner.close()
    assert day.values == {"on_duty": "yes", "hours": "daily 9:00–22:00 Beijing time"}
    assert night.values["on_duty"] == "no" and "北京时间" in night.values["hours"]
    assert call.outcome == "ok"
