"""Canary analysis through a real replica on a real nats-server: `kefu cp rollout start
--policy`, an unknown policy refused in both languages, telemetry batches with a bad canary
folded by the leader and rolled back on its own, the alert delivered to a real HTTP webhook
receiver (signed, retried after a 500, one alert id), `kefu cp rollout analysis` (table and
--json), `kefu cp rollout policy list` and `kefu cp alerts list|ack`; a viewer may read the
analysis. Webhook delivery alone: retry with backoff, at-least-once with a stable id."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from cp_support import ACTOR, new_version, seed_demo, trust_with

from kefu.bus import MemoryBus
from kefu.control_plane.alerts import Alert, Webhook, WebhookDelivery, raise_alert, sign
from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
from kefu.control_plane.state import ensure_layout
from kefu.keys import SigningKey
from kefu.natsserver import NatsServer
from kefu.node.agent.telemetry import TelemetryRecorder, TurnSample
from kefu.rollout import CAPABILITY_SPLIT, arm_for
from kefu.v1 import bearer_metadata
from kefu.v1 import control_plane_pb2 as pb
from kefu.v1 import control_plane_pb2_grpc as pbg
from kefu.wire import BUCKET_NODES, NodeStatus, encode, telemetry_subject

SECRET = "webhook-secret"


@pytest.mark.slow
async def test_canary_analysis_api_and_cli(
    nats_server: NatsServer,
    ops_key: SigningKey,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    received: list[tuple[dict[str, str], bytes]] = []
    answers = [500]  # the rollback alert's first POST fails: delivery retries

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((dict(request.headers), body))
        # Region r1 has no node here, so region-health alerts arrive too; they are answered.
        rollback = json.loads(body)["kind"] == "rollback"
        return web.Response(status=answers.pop(0) if rollback and answers else 200)

    receiver = web.Application()
    receiver.router.add_post("/alerts", hook)
    runner = web.AppRunner(receiver)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    opts = ControlPlaneOptions(
        nats_url=nats_server.url,
        trust=trust_with(ops_key),
        listen="127.0.0.1:0",
        regions=["r1"],
        rollout_period_s=0.2,
        webhooks=[Webhook(name="test", url=f"http://127.0.0.1:{port}/alerts", secret=SECRET)],
    )
    async with (
        ControlPlaneApp(opts) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch,
    ):
        assert app.cp is not None and app.bus is not None and app.first_token
        await seed_demo(app.cp, "r1")
        await app.cp.publish_model(new_version(tmp_path, ops_key, "9.0.0"), actor=ACTOR)
        node = NodeStatus(
            node_id="edge-1", region="r1", capabilities=[CAPABILITY_SPLIT], heartbeat_at=time.time()
        )
        await app.bus.kv_put(BUCKET_NODES, node.node_id, encode(node))
        stub = pbg.ControlPlaneStub(ch)
        md = bearer_metadata(app.first_token)
        from kefu.cli import main

        cp = ["cp", "--target", f"127.0.0.1:{app.port}", "--token", app.first_token]
        start = ["rollout", "start", "demo-shop", "--model", "intent=demo-shop-intent@9.0.0"]
        start += ["--wave", "r1", "--steps", "50%", "--bake", "3600"]
        rc = await asyncio.to_thread(main, [*cp, *start, "--policy", "nonsense"])
        err = capsys.readouterr().err
        assert rc != 0 and "nonsense" in err and "无此金丝雀策略" in err and "Traceback" not in err
        rc = await asyncio.to_thread(main, [*cp, "--json", *start, "--policy", "default"])
        started = json.loads(capsys.readouterr().out)
        assert rc == 0 and started["policy"] == "default"
        rid = started["id"]
        for _ in range(100):  # running, judged (nothing to compare yet: continue)
            a = await stub.GetRolloutAnalysis(pb.GetRolloutRequest(rollout_id=rid), metadata=md)
            if a.action:
                break
            await asyncio.sleep(0.1)
        assert a.action == "continue" and a.policy == "default"
        salt = (await app.cp.get_rollout(rid)).salt

        # The node's telemetry: the canary's turns fall back 40 % of the time, the baseline's 5 %.
        rec = TelemetryRecorder(node_id="edge-1", region="r1")
        rng = random.Random(11)
        for i in range(500):
            sid = f"s{i}"
            arm = arm_for(salt, sid, 0.5)
            for t in range(2):
                rec.record_turn(
                    TurnSample(
                        tenant="demo-shop", scenario="order", model_version="v",
                        latency_ms=30.0, session_id=sid, rollout_id=rid, arm=arm,
                        fallback=rng.random() < (0.4 if arm == "canary" else 0.05),
                        weight=0.5 if t == 0 else 0.0, new_session=t == 0,
                    )
                )  # fmt: skip
        batch = rec.close_window()
        assert batch is not None
        await app.bus.publish(telemetry_subject("r1", "edge-1"), encode(batch), msg_id="edge-1:1")
        for _ in range(100):
            ro = await stub.GetRollout(pb.GetRolloutRequest(rollout_id=rid), metadata=md)
            if ro.phase == "rolled_back":
                break
            await asyncio.sleep(0.1)
        assert ro.phase == "rolled_back" and "canary analysis" in ro.reason

        rc = await asyncio.to_thread(main, [*cp, "rollout", "analysis", rid])
        out = capsys.readouterr().out
        assert rc == 0 and "roll back / 回滚" in out and "WORSE" in out and "fallback" in out
        rc = await asyncio.to_thread(main, [*cp, "--json", "rollout", "analysis", rid])
        doc = json.loads(capsys.readouterr().out)
        fb = next(m for m in doc["metrics"] if m["metric"] == "fallback")
        assert fb["worse"] and fb["lower"] > 0 and int(doc["canary_sessions"]) > 200
        rc = await asyncio.to_thread(main, [*cp, "rollout", "policy", "list"])
        out = capsys.readouterr().out
        assert rc == 0 and "default" in out and "low-traffic" in out

        audit = await stub.QueryAudit(pb.QueryAuditRequest(tenant="demo-shop"), metadata=md)
        ev = [e for e in audit.events if e.action == "rollout.analysis.rollback"]
        assert len(ev) == 1 and json.loads(ev[0].detail)["action"] == "rollback"

        issued = await stub.IssueOperatorToken(
            pb.IssueOperatorTokenRequest(name="watcher", role="viewer"), metadata=md
        )
        seen = await stub.GetRolloutAnalysis(
            pb.GetRolloutRequest(rollout_id=rid), metadata=bearer_metadata(issued.token)
        )
        assert seen.action == "rollback"

        # The alert reached the webhook: signed, retried after the 500, the same alert id.
        def rollbacks() -> list[tuple[dict[str, str], bytes]]:
            return [(h, b) for h, b in received if json.loads(b)["kind"] == "rollback"]

        for _ in range(100):
            if len(rollbacks()) >= 2:
                break
            await asyncio.sleep(0.1)
        for headers, body in received:
            assert headers["X-Kefu-Signature"] == sign(SECRET, body)
            expect = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["X-Kefu-Signature"] == expect
        delivered = rollbacks()
        assert len(delivered) == 2, received
        assert delivered[0][1] == delivered[1][1]
        alert = json.loads(delivered[1][1])
        assert alert["kind"] == "rollback" and alert["detail"]["rollout_id"] == rid
        assert delivered[1][0]["X-Kefu-Alert-Id"] == alert["id"]
        rc = await asyncio.to_thread(main, [*cp, "alerts", "list", "--unacked"])
        out = capsys.readouterr().out
        assert rc == 0 and "rolled back" in out and "CRITICAL" in out
        rc = await asyncio.to_thread(main, [*cp, "--json", "alerts", "ack", alert["id"]])
        assert rc == 0 and json.loads(capsys.readouterr().out)["acked_by"] == "admin"
        rc = await asyncio.to_thread(main, [*cp, "--json", "alerts", "list", "--unacked"])
        left = json.loads(capsys.readouterr().out).get("alerts", [])
        assert rc == 0 and alert["id"] not in {a["id"] for a in left}
        assert all(a["kind"] == "failover" for a in left)  # r1's region health, not acked
        rc = await asyncio.to_thread(main, [*cp, "alerts", "ack", "nope"])
        err = capsys.readouterr().err
        assert rc != 0 and "NOT_FOUND" in err and "告警" in err
    await runner.cleanup()


async def test_webhook_delivery_retries_with_backoff_and_resumes_from_its_cursor() -> None:
    bus = MemoryBus()
    await ensure_layout(bus)
    calls: list[str] = []
    fail = [True, True]

    async def post(hook: Webhook, body: bytes, headers: dict[str, str]) -> int:
        calls.append(headers["X-Kefu-Alert-Id"])
        return 503 if fail and fail.pop() else 200

    for i in range(2):
        a = Alert(id=f"test:{i}", kind="guard", title="t / 测试", tenant="demo-shop")
        await raise_alert(bus, a)
        await raise_alert(bus, a)  # raised twice: stored once
    d = WebhookDelivery(bus, [Webhook(name="h", url="http://x", secret="s")], post=post,
                        retry_s=0.01, poll_s=0.01)  # fmt: skip
    d.start()
    for _ in range(200):
        if d.delivered == 2:
            break
        await asyncio.sleep(0.01)
    await d.stop()
    assert d.delivered == 2 and d.failures == 2
    assert calls == ["test:0", "test:0", "test:0", "test:1"]
    # a new deliverer (a new leader) resumes after the cursor: nothing sent again
    again = WebhookDelivery(bus, [Webhook(name="h", url="http://x", secret="s")], post=post)
    assert await again.deliver_once(again.hooks[0]) == 0
