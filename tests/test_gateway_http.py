"""The HTTP/JSON API over real HTTP in front of real nodes (in-process gRPC servers with the
real conversation service and SQLite): replies, sessions, feedback, errors, bad input that never
reaches a node, identity tokens, origins, rate limits, OpenAPI, metrics, logs, traceparent."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from gateway_support import DEMO_KEY, gateway_stack, node_session_count

from kefu.node.gateway import openapi
from kefu.node.gateway.identity import sign_identity

ROOT = Path(__file__).resolve().parents[1]
SECRET = "demo-identity-secret"


async def test_send_get_end_feedback_round_trip(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path) as s:
        r = await s.http.post(s.chat("/messages"), json={"text": "我的订单什么时候到"})
        assert r.status == 200, await r.text()
        first = await r.json()
        sid = first["session_id"]
        assert sid.startswith("n1.") and first["intent"] == "delivery_tracking"
        assert "订单号" in first["text"] and first["language"] == "zh"
        r = await s.http.post(
            s.chat("/messages"), json={"text": "2024112512345678", "session_id": sid}
        )
        second = await r.json()
        assert r.status == 200 and second["session_id"] == sid
        assert second["turn_seq"] > first["turn_seq"]
        view = await (await s.http.get(s.chat(f"/sessions/{sid}"))).json()
        assert [t["role"] for t in view["turns"]] == ["user", "bot", "user", "bot"]
        assert view["status"] == "active" and view["channel"] == "api"
        r = await s.http.post(
            s.chat(f"/sessions/{sid}/feedback"),
            json={"rating": 5, "turn_seq": second["turn_seq"], "resolved": True},
        )
        assert r.status == 201 and (await r.json())["feedback_id"]
        r = await s.http.post(s.chat(f"/sessions/{sid}/end"), json={"reason": "user_closed"})
        assert (await r.json()) == {"session_id": sid, "status": "ended"}
        r = await s.http.post(s.chat("/messages"), json={"text": "还在吗", "session_id": sid})
        body = await r.json()
        assert r.status == 409 and body["error"]["code"] == "conversation_closed"
        r = await s.http.post(s.chat(f"/sessions/{sid}/feedback"), json={"rating": 9})
        assert r.status == 400 and "rating" in (await r.json())["error"]["detail"]


async def test_bad_input_gets_a_clear_4xx_and_never_reaches_a_node(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, limits={"max_body_bytes": 1024}) as s:
        url = s.chat("/messages")
        json_ct = {"Content-Type": "application/json"}
        cases = [
            (dict(data=b'{"text": "hi"', headers=json_ct), 400, "invalid_json"),
            (dict(data=b"\xff\xfe{}", headers=json_ct), 400, "invalid_json"),
            (dict(data=b"[1, 2]", headers=json_ct), 400, "invalid_json"),
            (
                dict(data=b"text=hi", headers={"Content-Type": "text/plain"}),
                415,
                "unsupported_media_type",
            ),
            (dict(data=json.dumps({"text": "x" * 2000}), headers=json_ct), 413, "body_too_large"),
            (dict(json={"text": ""}), 400, "invalid_argument"),
            (dict(json={"text": 5}), 400, "invalid_argument"),
            (dict(json={"text": "hi", "evil": 1}), 400, "invalid_argument"),
            (dict(json={"text": "hi", "channel": "fax"}), 400, "invalid_argument"),
            (dict(json={"text": "hi", "session_id": "garbage"}), 404, "not_found"),
            (dict(json={"text": "hi", "session_id": "n7.abc"}), 404, "not_found"),
            (dict(json={"text": "hi", "metadata": {"a": 1}}), 400, "invalid_argument"),
        ]
        for kwargs, status, code in cases:
            r = await s.http.post(url, **kwargs)  # type: ignore[arg-type]
            body = await r.json()
            assert (r.status, body["error"]["code"]) == (status, code), (kwargs, body)
            assert body["error"]["messages"]["zh"] and body["error"]["messages"]["en"]
        r = await s.http.post(s.chat("/sessions/n1.abc/feedback"), data=b"{", headers=json_ct)
        assert r.status == 400
        r = await s.http.post(f"{s.url}/v1/chat/nope/messages", json={"text": "hi"})
        assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_tenant"
        r = await s.http.get(f"{s.url}/v1/nothing-here")
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        r = await s.http.put(url, json={"text": "hi"})
        assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
        assert await node_session_count(s) == 0


async def test_errors_follow_the_callers_language(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path) as s:
        r = await s.http.post(
            s.chat("/messages"),
            data=b"{",
            headers={"Content-Type": "application/json", "Accept-Language": "zh-CN,zh;q=0.9"},
        )
        body = await r.json()
        assert body["error"]["message"] == "请求内容不是有效的 JSON。"
        assert r.headers["X-Request-Id"] == body["error"]["request_id"]


async def test_rate_limit_is_429_with_retry_after_before_the_node(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, tenant={"rate": {"rate": 0.5, "burst": 2}}) as s:
        statuses = []
        for _ in range(3):
            r = await s.http.post(s.chat("/messages"), json={"text": "hello"})
            statuses.append(r.status)
        assert statuses == [200, 200, 429]
        assert int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["error"]["code"] == "rate_limited"
        r = await s.http.post(s.chat("/messages"), json={"text": "hello", "channel": "app"})
        assert r.status == 200  # each channel has its own budget
        assert await node_session_count(s) == 3


async def test_no_healthy_node_is_503(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path) as s:
        for n in s.nodes.values():
            await n.drain()
        for n in s.gateway.pool.nodes.values():
            s.gateway.pool.probe_failed(n.id, time.monotonic(), "test")
        r = await s.http.post(s.chat("/messages"), json={"text": "hello"})
        body = await r.json()
        assert r.status == 503 and body["error"]["code"] == "no_node"
        assert (await s.http.get(f"{s.url}/healthz")).status == 503


async def test_identity_tokens_and_vip_attributes_reach_the_node(tmp_path: Path) -> None:
    (tmp_path / "identity.secret").write_text(SECRET, encoding="utf-8")
    tenant = {"identity_secret_files": ["identity.secret"], "anonymous": False}
    async with gateway_stack(tmp_path, tenant=tenant) as s:
        r = await s.http.post(s.chat("/messages"), json={"text": "转人工"})
        assert r.status == 401 and (await r.json())["error"]["code"] == "identity_required"
        now = time.time()
        vip = sign_identity(
            SECRET.encode(),
            user_id="cust-7",
            expires_at=now + 600,
            issued_at=now,
            attributes={"vip": True},
        )
        plain = sign_identity(
            SECRET.encode(), user_id="cust-8", expires_at=now + 600, issued_at=now
        )
        r = await s.http.post(
            s.chat("/messages"), json={"text": "hi"}, headers={"X-Kefu-Identity": vip[:-3] + "AAA"}
        )
        assert r.status == 401 and "signature" in (await r.json())["error"]["detail"]
        r = await s.http.post(
            s.chat("/messages"),
            json={"text": "转人工", "channel": "web"},
            headers={"X-Kefu-Identity": vip},
        )
        vip_reply = await r.json()
        assert vip_reply["scenario"] == "vip_service" and "VIP" in vip_reply["text"]
        # A client cannot make itself VIP through metadata.
        r = await s.http.post(
            s.chat("/messages"),
            json={"text": "转人工", "channel": "web", "metadata": {"vip": "true"}},
            headers={"X-Kefu-Identity": plain},
        )
        assert (await r.json())["scenario"] != "vip_service"
        sid = vip_reply["session_id"]
        view = await s.http.get(s.chat(f"/sessions/{sid}"), headers={"X-Kefu-Identity": vip})
        assert view.status == 200
        assert (await view.json())["user_id"] == "cust-7"
        other = await s.http.get(s.chat(f"/sessions/{sid}"), headers={"X-Kefu-Identity": plain})
        assert other.status == 404  # another customer's conversation


async def test_allowed_origins_and_cors(tmp_path: Path) -> None:
    tenant = {"allowed_origins": ["https://shop.example.com"]}
    async with gateway_stack(tmp_path, tenant=tenant) as s:
        ok = {"Origin": "https://shop.example.com"}
        r = await s.http.options(s.chat("/messages"), headers=ok)
        assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == ok["Origin"]
        r = await s.http.post(s.chat("/messages"), json={"text": "hi"}, headers=ok)
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == ok["Origin"]
        evil = {"Origin": "https://evil.example.com"}
        r = await s.http.post(s.chat("/messages"), json={"text": "hi"}, headers=evil)
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
        r = await s.http.options(s.chat("/messages"), headers=evil)
        assert r.status == 403
        same = {"Origin": s.url}  # the gateway's own pages (the demo) are always allowed
        r = await s.http.post(s.chat("/messages"), json={"text": "hi"}, headers=same)
        assert r.status == 200
        assert await node_session_count(s) == 2


async def test_console_forwards_the_agents_key(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path) as s:
        r = await s.http.post(s.chat("/messages"), json={"text": "转人工"})
        hid = (await r.json())["handoff_id"]
        assert hid.startswith("n1.")
        r = await s.http.get(f"{s.url}/v1/console/handoffs")
        assert r.status == 401
        r = await s.http.get(
            f"{s.url}/v1/console/handoffs", headers={"Authorization": "Bearer wrong-key"}
        )
        assert r.status == 401 and (await r.json())["error"]["code"] == "unauthenticated"
        auth = {"Authorization": f"Bearer {DEMO_KEY}"}
        listed = await (await s.http.get(f"{s.url}/v1/console/handoffs", headers=auth)).json()
        assert [h["handoff_id"] for h in listed["handoffs"]] == [hid]
        r = await s.http.post(
            f"{s.url}/v1/console/handoffs/{hid}/claim", json={"agent_id": "a1"}, headers=auth
        )
        assert r.status == 200 and (await r.json())["status"] == "claimed"
        r = await s.http.post(
            f"{s.url}/v1/console/handoffs/{hid}/reply",
            json={"agent_id": "a1", "text": "您好，我是小李"},
            headers=auth,
        )
        assert (await r.json())["turn_seq"] > 0
        r = await s.http.post(
            f"{s.url}/v1/console/handoffs/{hid}/close",
            json={"agent_id": "a1", "resolution": "sideways"},
            headers=auth,
        )
        assert r.status == 400
        r = await s.http.post(
            f"{s.url}/v1/console/handoffs/{hid}/close",
            json={"agent_id": "a1", "resolution": "resolved"},
            headers=auth,
        )
        assert (await r.json())["resolution"] == "resolved"


async def test_openapi_served_equals_checked_in_and_covers_every_route(tmp_path: Path) -> None:
    checked_in = json.loads((ROOT / openapi.CHECKED_IN).read_text(encoding="utf-8"))
    async with gateway_stack(tmp_path) as s:
        served = await (await s.http.get(f"{s.url}/v1/openapi.json")).json()
        assert served == checked_in
        routes = {
            (r.resource.canonical, r.method.lower())
            for r in s.gateway.app.router.routes()
            if r.resource is not None and r.method != "HEAD"
        }
    documented = {(p, m) for p, ops in served["paths"].items() for m in ops}
    assert routes == documented


async def test_metrics_logs_and_traceparent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with gateway_stack(tmp_path) as s:
        with caplog.at_level(logging.INFO, logger="kefu.gateway.access"):
            r = await s.http.post(
                s.chat("/messages"),
                json={"text": "我的手机号13812345678"},
                headers={"traceparent": parent},
            )
        assert r.status == 200
        back = r.headers["traceparent"]
        assert back.startswith("00-0af7651916cd43dd8448eb211c80319c-") and back != parent
        span = s.spans.spans[-1]
        assert span.parent_id == "b7ad6b7169203331" and span.attributes["status"] == 200
        metrics = await (await s.http.get(f"{s.url}/metrics")).text()
    line = next(
        m
        for m in metrics.splitlines()
        if m.startswith("kefu_gateway_requests_total") and 'channel="api"' in m
    )
    assert 'route="/v1/chat/{public_id}/messages"' in line and 'status="200"' in line
    assert 'kefu_gateway_node_up{node="n1"} 1.0' in metrics
    records = [r for r in caplog.records if r.name == "kefu.gateway.access"]
    fields = records[-1].fields  # type: ignore[attr-defined]
    assert (
        fields["status"] == 200 and fields["tenant"] == "demo-shop" and fields["channel"] == "api"
    )
    logged = json.dumps([r.__dict__.get("fields") for r in records], ensure_ascii=False)
    assert "13812345678" not in logged and "手机号" not in logged and "13812345678" not in metrics
