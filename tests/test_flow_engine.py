"""Flow config validated at load time (unknown slot / plugin / template → ConfigError with the
line), the phrase detectors, the flow state codec, session-policy renewal and hand-off
summaries."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from kefu.config import load_tenant_config, parse_tenant_config
from kefu.errors import ConfigError
from kefu.node.dialog.flow import FlowState, is_cancel, yes_or_no
from kefu.node.dialog.handoff import build_summary, renew_if_idle, sentiment_trend
from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG
from kefu.node.sessions.memory_store import InMemorySessionStore
from kefu.node.sessions.store import NewSession, SessionStatus

DEMO = DEMO_TENANT_CONFIG.read_text(encoding="utf-8")


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    action: cancel_order\n", "    action: cancel_ordr\n", "unknown plugin 'cancel_ordr'"),
        ("    success: order_cancelled\n", "    success: order_canceled\n", "unknown template"),
        (
            'body: {address: "{new_address}"}',
            'body: {address: "{new_adress}"}',
            "unknown slot 'new_adress'",
        ),
        ("prompt: ask_return_reason,", "prompt: ask_return_raeson,", "unknown template"),
        ("    then: handoff", "    then: escalate", "then"),
        (
            "    scenarios: [returns_refunds, orders]",
            "    scenarios: [returns, orders]",
            "unknown scenario 'returns'",
        ),
        (
            "    entity_trigger: order_number  #",
            "    entity_trigger: order_numbr  #",
            "unknown entity type 'order_numbr'",
        ),
    ],
)
def test_broken_flow_config_is_refused_with_the_line(old: str, new: str, message: str) -> None:
    assert old in DEMO
    broken = DEMO.replace(old, new, 1)
    with pytest.raises(ConfigError) as ei:
        parse_tenant_config(broken, source="demo.yaml")
    assert message in str(ei.value)
    assert ei.value.line is not None and abs(ei.value.line - line_of(broken, new)) <= 8


def test_state_changing_action_needs_a_confirmation() -> None:
    broken = DEMO.replace("    confirm: confirm_cancel\n", "", 1)
    with pytest.raises(ConfigError) as ei:
        parse_tenant_config(broken)
    assert "changes state" in str(ei.value) and "confirm" in str(ei.value)


def test_template_placeholder_must_be_available() -> None:
    broken = DEMO.replace(
        "zh: 订单 {order_number} 已取消，退款 {refund_amount}",
        "zh: 订单 {order_number} 已取消，退款 {refund}",
        1,
    ).replace("The refund of {refund_amount} goes", "The refund of {refund} goes", 1)
    with pytest.raises(ConfigError) as ei:
        parse_tenant_config(broken)
    assert "{refund}" in str(ei.value) and "order_cancelled" in str(ei.value)


def test_the_demo_config_declares_every_flow() -> None:
    cfg = load_tenant_config(DEMO_TENANT_CONFIG)
    assert {f.id for f in cfg.flows} == {
        "track_delivery", "order_status", "change_address", "cancel_order", "return_refund",
        "invoice_request", "freeze_account",
    }  # fmt: skip
    assert next(f for f in cfg.flows if f.id == "freeze_account").then == "handoff"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("是的", True), ("确认", True), ("好的，取消吧", True), ("yes please", True), ("OK", True),
        ("Yes, cancel it", True), ("不要", False), ("不用了", False), ("no", False),
        ("nope, keep it", False), ("否", False), ("2024112512345678", None),
        ("我的订单什么时候到", None), ("what payment methods do you accept?", None),
    ],
)  # fmt: skip
def test_yes_or_no(text: str, want: bool | None) -> None:
    assert yes_or_no(text) is want


@pytest.mark.parametrize(
    ("text", "want"),
    [("算了", True), ("算了吧，不改了", True), ("never mind", True), ("Forget it!", True),
     ("帮我取消订单", False), ("cancel my order", False), ("不要取消了", False)],
)  # fmt: skip
def test_is_cancel(text: str, want: bool) -> None:
    assert is_cancel(text) is want


def test_flow_state_round_trip_and_damaged_state() -> None:
    state = FlowState.from_dict(
        {"active": {"flow": "cancel_order", "values": {"order_number": "1"}, "awaiting": "x"},
         "suspended": [{"flow": "track_delivery"}, "junk"]}
    )  # fmt: skip
    assert state.active is not None and state.active.values == {"order_number": "1"}
    assert [a.flow for a in state.suspended] == ["track_delivery"]
    assert FlowState.from_dict(state.to_dict()) == state
    assert FlowState.from_dict("garbage") == FlowState()


async def test_idle_session_is_renewed_with_a_context_summary() -> None:
    cfg = load_tenant_config(DEMO_TENANT_CONFIG)
    store = InMemorySessionStore()
    old = await store.create_session(NewSession(channel="app", user_id="u1", scenario="orders"))
    await store.set_slot(old.id, "order_number", "2024112512345678")
    await store.set_slot(old.id, "_history", {"recent_intents": ["order_cancel"]})
    same = await renew_if_idle(store, old, cfg, now=old.last_active_at + timedelta(minutes=5))
    assert same.id == old.id
    later = old.last_active_at + timedelta(
        seconds=cfg.policy_for("orders").inactivity_timeout_seconds + 1
    )
    fresh = await renew_if_idle(store, old, cfg, now=later)
    assert fresh.id != old.id and fresh.user_id == "u1" and fresh.channel == "app"
    ctx = fresh.attributes["previous_context"]
    assert ctx["previous_session_id"] == old.id and ctx["intents"] == ["order_cancel"]
    assert (await store.get_slots(fresh.id))["order_number"].value == "2024112512345678"
    gone = await store.get_session(old.id)
    assert gone is not None and gone.status is SessionStatus.EXPIRED


async def test_account_security_line_times_out_sooner() -> None:
    cfg = load_tenant_config(DEMO_TENANT_CONFIG)
    store = InMemorySessionStore()
    s = await store.create_session(NewSession(scenario="account_security"))
    after = s.last_active_at + timedelta(seconds=601)
    assert (await renew_if_idle(store, s, cfg, now=after)).id != s.id  # 600 s for security
    t = await store.create_session(NewSession(scenario="orders"))
    assert (
        await renew_if_idle(store, t, cfg, now=t.last_active_at + timedelta(seconds=601))
    ).id == t.id


def test_summary_and_sentiment_trend() -> None:
    assert sentiment_trend(["neutral", "neutral", "negative", "negative"]) == "worsening"
    assert sentiment_trend(["negative", "positive"]) == "improving"
    s = build_summary(
        reason="plugin_failure", scenario="orders", language="zh",
        intents=["order_cancel"], sentiments=["neutral"], slots={"order_number": "1", "_x": 2},
        turns=[], open_flow="cancel_order",
        plugin_calls=[{"plugin": "get_order", "outcome": "failed", "code": "timeout"}],
    )  # fmt: skip
    assert s["slots"] == {"order_number": "1"} and s["plugin_failures"] == ["get_order:timeout"]


def test_seed_is_deterministic(tmp_path: Path) -> None:
    from kefu.demo.order_center import seed_order_center

    a, b = tmp_path / "a.db", tmp_path / "b.db"
    seed_order_center(a, orders=50)
    seed_order_center(b, orders=50)
    q = "SELECT order_number, status, address FROM orders ORDER BY 1"
    assert sqlite3.connect(a).execute(q).fetchall() == sqlite3.connect(b).execute(q).fetchall()


async def test_console_lists_open_handoffs_page_by_page_without_skipping() -> None:
    from kefu.node.dialog.handoff import HandoffConsole, HandoffResolution

    store = InMemorySessionStore()
    console = HandoffConsole(store)
    ids = []
    for _ in range(7):
        s = await store.create_session(NewSession())
        ids.append((await store.create_handoff(s.id, reason="explicit_request")).id)
    for hid in ids[1:6:2]:  # close three in the middle
        await console.close(hid, resolution=HandoffResolution.ABANDONED, agent_id="")
    seen: list[str] = []
    cursor = None
    while True:
        views, cursor = await console.list(status=None, limit=2, cursor=cursor)
        seen += [v.handoff.id for v in views]
        if cursor is None:
            break
    assert seen == [ids[0], ids[2], ids[4], ids[6]]


async def test_console_rules() -> None:
    from kefu.node.dialog.handoff import HandoffConsole, HandoffResolution
    from kefu.node.sessions.store import InvalidRecord, RecordNotFound, StateConflict

    store = InMemorySessionStore()
    console = HandoffConsole(store)
    s = await store.create_session(NewSession())
    h = await store.create_handoff(s.id, reason="complaint")
    with pytest.raises(StateConflict):  # not claimed yet
        await console.reply(agent_id="a1", text="hi", handoff_id=h.id)
    await console.claim(h.id, "a1")
    assert (await console.claim(h.id, "a1")).handoff.agent_id == "a1"  # idempotent
    with pytest.raises(StateConflict):
        await console.claim(h.id, "a2")
    with pytest.raises(InvalidRecord):
        await console.reply(agent_id="a1", text="  ", handoff_id=h.id)
    with pytest.raises(RecordNotFound):
        await console.claim("nope", "a1")
    t1 = await console.reply(agent_id="a1", text="您好", session_id=s.id, request_id="r1")
    t2 = await console.reply(agent_id="a1", text="您好", session_id=s.id, request_id="r1")
    assert t1.seq == t2.seq  # a retried request stores nothing new
    with pytest.raises(StateConflict):
        await console.close(h.id, resolution=HandoffResolution.RESOLVED, agent_id="a2")
    view = await console.close(
        h.id, resolution=HandoffResolution.RESOLVED, agent_id="a1", note="ok"
    )
    assert view.resolution == "resolved" and view.note == "ok"
    ended = await store.get_session(s.id)
    assert ended is not None and ended.status is SessionStatus.ENDED
