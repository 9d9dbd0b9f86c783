"""Region failover end to end on the real multi-region NATS topology: a hub nats-server and
one leaf per region (a, b), the control plane on the hub, one ``kefu node run`` process per
region on its leaf, a gateway following routes (kefu/dev/failover_stack.py).

A SIGSTOP/SIGCONT of region a's node shorter than the hysteresis changes no route; kill -9 of
it under continuous traffic moves ``demo-shop`` (allows b) to b, while ``demo-solo`` (allows
only a) gets the zh/en "temporarily unavailable" reply and nothing of it reaches b (no file, no
replica stream, no subject). A demo-shop conversation begun in a (order number over two turns)
continues in b with the same session id: b's GetSession shows a's turns and the order number.
Time to switch is measured in benchmarks/failover_bench.py, not asserted here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kefu.dev.failover_stack import FailoverStack
from kefu.wire import BUCKET_ASSIGNMENTS, assignment_key, desired_bucket

pytestmark = pytest.mark.slow
ORDER = "2024112512345678"


async def test_kill_region_a_under_traffic_residency_and_stall_hysteresis(tmp_path: Path) -> None:
    async with FailoverStack(tmp_path) as s:
        assert s.app is not None and s.app.cp is not None and s.app.bus is not None
        cp, bus = s.app.cp, s.app.bus
        await s.until(lambda: _all_up(cp), timeout_s=60, what="both regions up after the dwell")
        before = {t: await s.route(t) for t in ("demo-shop", "demo-solo")}
        assert all(r is not None and r.region == "a" for r in before.values())

        # A stall shorter than the hysteresis (silent after 1.5 s, down 0.5 s later).
        s.pause("a")
        await asyncio.sleep(0.8)
        s.resume("a")
        await asyncio.sleep(2.5)  # longer than detection would take: nothing may have moved
        for t, r in before.items():
            now = await s.route(t)
            assert now is not None and r is not None and now.epoch == r.epoch, t
        assert [h.state for h in await cp.region_health() if h.region == "a"] == ["up"]

        # A conversation in a gives its order number over two turns; it is replicated to b.
        status, first = await s.send("demo-shop", text=f"我的订单号是 {ORDER}，什么时候到？")
        assert status == 200 and first["session_id"].startswith("na."), first
        sid = first["session_id"]
        status, second = await s.send("demo-shop", sid, "还没收到")
        assert status == 200 and second["session_id"] == sid, second
        view_a = await s.get_session("a", "demo-shop", sid)
        assert view_a.slots["order_number"] == ORDER
        replica = "KEFU_REPLICA_a_demo-shop"

        async def replicated() -> bool:
            return (await s.zone_streams("b")).get(replica, (0, []))[0] >= 2

        await s.until(replicated, timeout_s=30, what="the conversation's turns in b's replica")

        # kill -9 under continuous traffic from both tenants.
        stop = asyncio.Event()
        traffic = asyncio.create_task(s.traffic(("demo-shop", "demo-solo"), stop))
        # Both tenants answered by a before the kill (under load the first few samples may all
        # be one tenant's).
        await s.until(
            lambda: _has(s, "na", "demo-shop", "demo-solo"), what="both tenants served by a"
        )
        s.kill("a")

        async def moved() -> bool:
            r = await s.route("demo-shop")
            solo = await s.route("demo-solo")
            return bool(r and r.region == "b" and solo and solo.state == "unavailable")

        await s.until(moved, timeout_s=30, what="demo-shop routed to b")
        await asyncio.sleep(1.0)  # traffic after the switch
        stop.set()
        await traffic

        after = [x for x in s.samples if x.tenant == "demo-shop" and x.node == "nb"]
        assert after, "demo-shop was never served from b"
        solo = [x for x in s.samples if x.tenant == "demo-solo"]
        assert {x.node for x in solo if x.status == 200} == {"na"}
        last = solo[-1]
        assert (last.status, last.code) == (503, "region_unavailable")
        status, body = await s.send("demo-solo")
        assert status == 503
        assert "暂时不可用" in body["error"]["messages"]["zh"]
        assert "temporarily unavailable" in body["error"]["messages"]["en"]

        # Nothing of demo-solo outside a: no assignment, no desired state, no file in b.
        assert await bus.kv_get(BUCKET_ASSIGNMENTS, assignment_key("demo-solo", "b")) is None
        assert await bus.kv_get(desired_bucket("b"), "demo-solo") is None
        assert not list(s.data_dir("b").rglob("*demo-solo*"))
        assert list(s.data_dir("a").rglob("*demo-solo*"))  # it was stored in a
        # ... and no replica stream or subject of it in b's JetStream.
        streams = await s.zone_streams("b")
        assert replica in streams
        assert not [n for n in streams if "demo-solo" in n], streams
        assert not [x for _, subs in streams.values() for x in subs if ".demo-solo." in x]

        # The conversation begun in a continues in b with its history and order number.
        # (the gateway names the node that answered: nb.<the same session>)
        status, third = await s.send("demo-shop", sid, "帮我查一下物流")
        assert status == 200 and third["session_id"] == "nb." + sid.partition(".")[2], third
        view_b = await s.get_session("b", "demo-shop", sid)
        texts = [t.text for t in view_b.turns]
        assert texts[: len(view_a.turns)] == [t.text for t in view_a.turns], texts
        assert len(view_b.turns) == len(view_a.turns) + 2
        assert "帮我查一下物流" in texts[len(view_a.turns) :]
        assert view_b.slots["order_number"] == ORDER

        # Each health transition is audited with its evidence; the stall left none.
        events = [(e.action, e.detail) for e in await cp.audit_log(limit=1000)]
        # (before the nodes registered, both regions were down: "no nodes registered")
        downs = [d for a, d in events if a == "region.down" and "heartbeating" in d]
        assert len(downs) == 1 and "0/1 nodes heartbeating" in downs[0]
        assert any(a == "route.change" and "failover to b" in d for a, d in events)


async def _all_up(cp: object) -> bool:
    hs = await cp.region_health()  # type: ignore[attr-defined]
    return all(h.state == "up" for h in hs)


async def _has(s: FailoverStack, node: str, *tenants: str) -> bool:
    """Whether ``node`` answered (200) a sample of each of ``tenants`` (any tenant if none)."""
    ok = [x for x in s.samples if x.node == node and x.status == 200]
    return all(any(x.tenant == t for x in ok) for t in tenants) if tenants else bool(ok)


async def test_cut_only_a_nats_link_then_failback_after_the_dwell(tmp_path: Path) -> None:
    """(a) A real TCP cut between region a's leaf and the hub while a's node serves: the
    node's heartbeats stop reaching the control plane, the gateway still reaches it — a
    NATS-only partition: no route change, customers still served from a, a critical alert.
    (b) a's node killed (traffic moves to b), then started again: traffic returns only after
    the dwell; then new conversations go home, a conversation begun in b finishes in b."""
    from kefu.control_plane.alerts import list_alerts

    async with FailoverStack(tmp_path) as s:
        assert s.app is not None and s.app.cp is not None and s.app.bus is not None
        cp, bus = s.app.cp, s.app.bus
        await s.until(lambda: _all_up(cp), timeout_s=60, what="both regions up after the dwell")
        before = await s.route("demo-shop")
        assert before is not None and before.region == "a"

        # (a) Cut only a's NATS link, under traffic.
        stop = asyncio.Event()
        traffic = asyncio.create_task(s.traffic(("demo-shop",), stop))
        await s.until(lambda: _has(s, "na"), what="traffic served by a")
        await s.cut_link()
        cut_at = len(s.samples)

        async def partitioned() -> bool:
            return any(h.region == "a" and h.nats_partition for h in await cp.region_health())

        await s.until(partitioned, timeout_s=30, what="a judged NATS-partitioned")
        await asyncio.sleep(2.0)  # longer than suspect → down would take: nothing may move
        stop.set()
        await traffic
        during = s.samples[cut_at:]
        assert during and all(x.status == 200 and x.node == "na" for x in during), {
            (x.status, x.node, x.code) for x in during
        }
        now = await s.route("demo-shop")
        assert now is not None and (now.region, now.epoch) == ("a", before.epoch)
        assert [h.state for h in await cp.region_health() if h.region == "a"] == ["up"]
        alerts = [
            a for a in await list_alerts(bus) if a.detail.get("action") == "region.nats_partition"
        ]
        assert len(alerts) == 1 and alerts[0].severity == "critical"
        assert alerts[0].resource == "region/a" and "no failover" in alerts[0].detail["evidence"]
        assert s.link is not None and s.link.cut

        await s.restore_link()

        async def healed() -> bool:
            return all(not h.nats_partition for h in await cp.region_health())

        await s.until(healed, timeout_s=30, what="a's NATS link healed")

        # (b) a's node dies: demo-shop moves to b; a conversation begins there.
        s.kill("a")

        async def on(region: str) -> bool:
            r = await s.route("demo-shop")
            return bool(r and r.state == "serving" and r.region == region)

        await s.until(lambda: on("b"), timeout_s=30, what="demo-shop routed to b")
        status, first = await s.send("demo-shop")
        assert status == 200 and first["session_id"].startswith("nb."), first
        live = first["session_id"]

        # a comes back: recovering first, traffic stays in b for the dwell.
        s.start_node("a")

        async def recovering() -> bool:
            return any(
                h.region == "a" and h.state == "recovering" for h in await cp.region_health()
            )

        await s.until(recovering, timeout_s=60, what="a recovering")
        held = await s.route("demo-shop")
        assert held is not None and held.region == "b"
        status, body = await s.send("demo-shop")
        assert status == 200 and body["session_id"].startswith("nb."), body

        await s.until(lambda: on("a"), timeout_s=60, what="demo-shop back in a")
        # The gateway follows the route once its own health checks reach a's node again.
        await s.until(lambda: _routed_in_gateway(s, "a"), what="the gateway follows")
        status, body = await s.send("demo-shop")
        assert status == 200 and body["session_id"].startswith("na."), body
        # The conversation begun in b finishes there, with its history.
        status, body = await s.send("demo-shop", live)
        assert status == 200 and body["session_id"] == live, body
        assert body["turn_seq"] > first["turn_seq"], (first, body)

        # The dwell, from the audit trail: recovering → up no sooner than dwell_s.
        events = [e for e in await cp.audit_log(limit=1000) if e.resource == "region/a"]
        rec = max(e.at for e in events if e.action == "region.recovering")
        up = max(e.at for e in events if e.action == "region.up")
        assert up - rec >= s.options.policy.dwell_s - 0.05
        changes = [e.detail for e in await cp.audit_log(limit=1000) if e.action == "route.change"]
        assert any("serving a" in d for d in changes[-1:]), changes


async def _routed_in_gateway(s: FailoverStack, region: str) -> bool:
    assert s.gateway is not None and s.gateway.routes is not None
    r = s.gateway.routes.routes.get("demo-shop")
    reached = s.gateway.pool.reach().get(region, ([], []))[0]
    return r is not None and r.region == region and f"n{region}" in reached
