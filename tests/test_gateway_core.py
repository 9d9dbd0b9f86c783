"""The gateway's pure core: session ids, ejection, least-loaded choice, error mapping,
identity tokens, origins, rate limits, the bounded backlog, WeChat signatures and XML."""

from __future__ import annotations

import asyncio
import random

import pytest

from kefu.node.gateway.answers import ApiError, from_grpc, pick_language
from kefu.node.gateway.identity import (
    Identity,
    origin_allowed,
    sign_identity,
    turn_metadata,
    verify_identity,
)
from kefu.node.gateway.routing import (
    EjectionPolicy,
    NodeHealth,
    NodePool,
    NodeSpec,
    local_id,
    node_of,
    public_id,
)
from kefu.node.gateway.traffic import Backlog, BucketSettings, RateLimiter
from kefu.node.gateway.wechat import (
    parse_message,
    passive_text,
    passive_transfer,
    signature,
    verify_signature,
)

SECRET = b"tenant-secret"


def pool(n: int = 2, **policy: float) -> NodePool:
    p = NodePool(
        specs=[NodeSpec(id=f"n{i}", address=f"127.0.0.1:{7400 + i}") for i in range(1, n + 1)],
        policy=EjectionPolicy(**policy),  # type: ignore[arg-type]
    )
    for nid in p.nodes:
        p.probe_ok(nid, 0.0)
    return p


def test_session_ids_name_their_node_and_malformed_ids_are_not_found() -> None:
    pid = public_id("edge-1", "AbC_d-123")
    assert pid == "edge-1.AbC_d-123" and node_of(pid) == "edge-1" and local_id(pid) == "AbC_d-123"
    assert public_id("edge-1", "") == ""
    for bad in ("", "nodot", ".x", "EDGE.x", "n1.", "n1.a/b", "n1.a.b", "x" * 40 + ".a"):
        with pytest.raises(ApiError) as ei:
            node_of(bad)
        assert ei.value.code == "not_found"


def test_transport_failures_eject_after_threshold_and_a_probe_returns_the_node() -> None:
    p = pool(failures_to_eject=3, base_ejection_s=2.0, max_ejection_s=30.0)
    p.call_failed("n1", 1.0, "refused")
    p.call_failed("n1", 1.1, "refused")
    assert p.nodes["n1"].health is NodeHealth.UP
    p.call_ok("n1")  # a success resets the count
    for t in (1.2, 1.3, 1.4):
        p.call_failed("n1", t, "refused")
    n1 = p.nodes["n1"]
    assert n1.health is NodeHealth.EJECTED and n1.ejected_until == pytest.approx(3.4)
    p.probe_ok("n1", 2.0)  # still serving its ejection time
    assert n1.health is NodeHealth.EJECTED
    p.probe_ok("n1", 3.5)
    assert n1.health is NodeHealth.UP
    p.probe_failed("n1", 4.0, "not serving")  # second ejection in a row: twice as long
    assert n1.ejected_until == pytest.approx(8.0) and n1.total_ejections == 2


def test_ejection_time_is_capped_and_resets_after_staying_up() -> None:
    p = pool(base_ejection_s=1.0, max_ejection_s=4.0)
    t = 0.0
    for _ in range(5):
        p.probe_failed("n1", t, "down")
        t = p.nodes["n1"].ejected_until
        p.probe_ok("n1", t)
    assert p.nodes["n1"].ejected_until - p.nodes["n1"].up_since <= 4.0
    p.probe_ok("n1", t + 10)  # up for longer than max_ejection_s: forgiven
    assert p.nodes["n1"].ejections_in_row == 0


def test_new_conversations_go_to_the_least_loaded_healthy_node() -> None:
    p = pool(3)
    rng = random.Random(1)
    p.nodes["n1"].in_flight, p.nodes["n2"].in_flight, p.nodes["n3"].in_flight = 4, 1, 2
    assert p.choose_new(rng).id == "n2"
    p.probe_failed("n2", 0.0, "down")
    assert p.choose_new(rng).id == "n3"
    assert p.choose_new(rng, exclude=["n3"]).id == "n1"
    p.nodes["n1"].in_flight = p.nodes["n3"].in_flight = 0
    assert {p.choose_new(rng).id for _ in range(50)} == {"n1", "n3"}  # ties spread
    for nid in ("n1", "n3"):
        p.probe_failed(nid, 0.0, "down")
    with pytest.raises(ApiError) as ei:
        p.choose_new(rng)
    assert ei.value.code == "no_node" and ei.value.status == 503


def test_a_session_on_an_ejected_node_is_node_down_and_unknown_nodes_not_found() -> None:
    p = pool(2)
    p.probe_failed("n2", 0.0, "down")
    assert p.holder("n1.abc").id == "n1"
    with pytest.raises(ApiError) as ei:
        p.holder("n2.abc")
    assert (ei.value.code, ei.value.status) == ("node_down", 503)
    with pytest.raises(ApiError) as ei:
        p.holder("n9.abc")
    assert ei.value.code == "not_found"


def test_a_down_nodes_session_goes_to_the_serving_region_only_when_routes_are_followed() -> None:
    p = NodePool(
        specs=[
            NodeSpec(id="a1", address="127.0.0.1:7401", region="cn-east"),
            NodeSpec(id="b1", address="127.0.0.1:7402", region="cn-north"),
            NodeSpec(id="c1", address="127.0.0.1:7403", region="cn-south"),
        ],
        policy=EjectionPolicy(),
    )
    for nid in p.nodes:
        p.probe_ok(nid, 0.0)
    rng = random.Random(1)
    assert p.holder_or_failover("a1.s", rng, ["cn-north"]).id == "a1"  # up: stays
    p.probe_failed("a1", 0.0, "down")
    assert p.holder_or_failover("a1.s", rng, ["cn-north", "cn-south"]).id == "b1"
    p.probe_failed("b1", 0.0, "down")
    assert p.holder_or_failover("a1.s", rng, ["cn-north", "cn-south"]).id == "c1"
    for regions in (None, [], ["cn-north"]):  # no routes, unavailable, no node left there
        with pytest.raises(ApiError) as ei:
            p.holder_or_failover("a1.s", rng, regions)
        assert ei.value.code == "node_down"
    with pytest.raises(ApiError) as ei:
        p.holder_or_failover("zz.s", rng, ["cn-south"])
    assert ei.value.code == "not_found"


def test_pool_refuses_bad_node_lists() -> None:
    with pytest.raises(ValueError, match="no dots"):
        NodePool(specs=[NodeSpec(id="a.b", address="x:1")])
    with pytest.raises(ValueError, match="twice"):
        NodePool(specs=[NodeSpec(id="a", address="x:1"), NodeSpec(id="a", address="x:2")])
    with pytest.raises(ValueError, match="at least one"):
        NodePool(specs=[])


@pytest.mark.parametrize(
    ("status", "caller_key", "http", "code"),
    [
        ("INVALID_ARGUMENT", False, 400, "invalid_argument"),
        ("NOT_FOUND", False, 404, "not_found"),
        ("FAILED_PRECONDITION", False, 409, "conversation_closed"),
        ("RESOURCE_EXHAUSTED", False, 429, "rate_limited"),
        ("UNAVAILABLE", False, 503, "overloaded"),
        ("DEADLINE_EXCEEDED", False, 504, "timeout"),
        ("UNAUTHENTICATED", False, 502, "bad_gateway"),  # the gateway's own key: operator's fault
        ("UNAUTHENTICATED", True, 401, "unauthenticated"),
        ("PERMISSION_DENIED", True, 403, "forbidden"),
        ("INTERNAL", False, 502, "bad_gateway"),
    ],
)
def test_grpc_status_maps_to_http(status: str, caller_key: bool, http: int, code: str) -> None:
    err = from_grpc(status, "detail", retry_after_ms=None, caller_key=caller_key)
    assert (err.status, err.code) == (http, code)
    body = err.body("zh", "rid")["error"]
    assert body["message"] == body["messages"]["zh"] and body["messages"]["en"]
    assert body["request_id"] == "rid"


def test_retry_after_comes_from_the_node_and_is_whole_seconds() -> None:
    err = from_grpc("RESOURCE_EXHAUSTED", "", retry_after_ms=1200)
    assert err.retry_after_s == pytest.approx(1.2) and err.headers() == {"Retry-After": "2"}
    assert from_grpc("UNAVAILABLE", "").headers() == {"Retry-After": "1"}
    assert pick_language(None, "zh-CN,zh;q=0.9") == "zh"
    assert pick_language("en", "zh-CN") == "en" and pick_language(None, "fr") == "en"


def test_identity_tokens_verify_and_refuse_tampering() -> None:
    tok = sign_identity(
        SECRET, user_id="u-42", expires_at=1000, issued_at=900, attributes={"vip": True, "level": 3}
    )
    ident = verify_identity(tok, [b"old", SECRET], now=950)
    assert ident == Identity(
        user_id="u-42", attributes={"vip": "true", "level": "3"}, verified=True
    )
    head, body, sig = tok.split(".")
    forged = sign_identity(b"wrong", user_id="u-42", expires_at=1000, issued_at=900).split(".")
    cases = {
        "bad signature": f"{head}.{forged[1]}.{sig}",
        "expired": tok,
        "malformed": "a.b",
        "only alg HS256": "eyJhbGciOiJub25lIn0." + body + ".",
    }
    for why, bad in cases.items():
        with pytest.raises(ApiError) as ei:
            verify_identity(bad, [SECRET], now=2000 if why == "expired" else 950)
        assert ei.value.code == "unauthenticated" and why in ei.value.detail
    too_long = sign_identity(SECRET, user_id="u", expires_at=10**6, issued_at=0)
    with pytest.raises(ApiError, match="unauthenticated"):
        verify_identity(too_long, [SECRET], now=10)
    bad_attr = sign_identity(SECRET, user_id="u", expires_at=100, issued_at=0, attributes={"X": 1})
    with pytest.raises(ApiError):
        verify_identity(bad_attr, [SECRET], now=10)


def test_clients_cannot_set_verified_attributes_themselves() -> None:
    client = {"vip": "true", "page": "/orders", "verified": "true"}
    assert turn_metadata(client, Identity()) == {"page": "/orders"}
    vip = Identity(user_id="u", attributes={"vip": "true"}, verified=True)
    assert turn_metadata(client, vip) == {"page": "/orders", "vip": "true", "verified": "true"}


def test_origins() -> None:
    allowed = ["https://shop.example.com"]
    assert origin_allowed(None, allowed)  # server-to-server
    assert origin_allowed("https://shop.example.com/", allowed)
    assert not origin_allowed("https://evil.example.com", allowed)
    assert not origin_allowed("https://shop.example.com", [])
    assert origin_allowed("https://any.example", ["*"])


def test_rate_limit_per_tenant_and_channel() -> None:
    rl = RateLimiter(max_keys=2)
    s = BucketSettings(rate=2.0, burst=2.0)
    rl.take(("t", "web"), 0.0, s)
    rl.take(("t", "web"), 0.0, s)
    with pytest.raises(ApiError) as ei:
        rl.take(("t", "web"), 0.1, s)
    assert ei.value.status == 429 and ei.value.retry_after_s == pytest.approx(0.4)
    rl.take(("t", "app"), 0.1, s)  # another channel has its own bucket
    rl.take(("t", "web"), 0.6, s)  # refilled
    rl.take(("u", "web"), 0.6, s)
    assert len(rl._buckets) == 2  # bounded


async def test_backlog_sheds_newest_when_the_line_is_full() -> None:
    bl = Backlog(max_in_flight=1, max_waiting=1, max_wait_s=5.0)
    release = asyncio.Event()
    order: list[str] = []

    async def use(name: str) -> None:
        async with bl.slot():
            order.append(name)
            await release.wait()

    first = asyncio.create_task(use("a"))
    await asyncio.sleep(0)
    second = asyncio.create_task(use("b"))
    await asyncio.sleep(0)
    with pytest.raises(ApiError) as ei:
        await use("c")
    assert ei.value.code == "overloaded" and ei.value.headers() == {"Retry-After": "1"}
    release.set()
    await asyncio.gather(first, second)
    assert order == ["a", "b"] and bl.in_flight == 0 and bl.shed == 1


async def test_backlog_wait_times_out_and_cancelled_waiters_free_their_place() -> None:
    bl = Backlog(max_in_flight=1, max_waiting=2, max_wait_s=0.05)
    hold = asyncio.Event()

    async def holder() -> None:
        async with bl.slot():
            await hold.wait()

    h = asyncio.create_task(holder())
    await asyncio.sleep(0)
    with pytest.raises(ApiError):
        async with bl.slot():
            pass
    waiter = asyncio.create_task(holder())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bl.waiting == 0
    hold.set()
    await h
    assert bl.in_flight == 0


def test_wechat_signature_and_xml() -> None:
    sig = signature("tok", "1700000000", "nonce1")
    verify_signature("tok", {"signature": sig, "timestamp": "1700000000", "nonce": "nonce1"})
    for query in ({}, {"signature": sig, "timestamp": "1700000001", "nonce": "nonce1"}):
        with pytest.raises(ApiError) as ei:
            verify_signature("tok", query)
        assert ei.value.status == 403
    raw = (
        "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oABC]]>"
        "</FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        "<Content><![CDATA[你好]]></Content><MsgId>42</MsgId></xml>"
    ).encode()
    msg = parse_message(raw)
    assert (msg.from_user, msg.content, msg.dedupe_key) == ("oABC", "你好", "42")
    out = passive_text(msg, "答]]>案", 5).decode()
    assert "<ToUserName><![CDATA[oABC]]></ToUserName>" in out and "答]]]]><![CDATA[>案" in out
    assert "transfer_customer_service" in passive_transfer(msg, 5).decode()
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><xml>&a;</xml>'
    for bad in (bomb, b"<xml><unclosed></xml>", b"<other/>", b"\xff\xfe"):
        with pytest.raises(ApiError) as ei:
            parse_message(bad)
        assert ei.value.status == 400


def test_event_loop_choice() -> None:
    import asyncio

    import uvloop

    from kefu.node.gateway.cli import event_loop_runner

    assert event_loop_runner("asyncio") is asyncio.run
    assert event_loop_runner("auto") is uvloop.run
    assert event_loop_runner("uvloop")(_answer()) == 42


async def _answer() -> int:
    import asyncio

    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    return 42
