"""Region failover over a real nats-server, the real control-plane process (gRPC API, leader,
failover loop) and real in-process nodes with their agents: residency in the registry, warm
standby, health transitions audited, routes, drain and failback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from cp_support import ACTOR, cp_node, seed_demo, trust_with
from support.polling import eventually

from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
from kefu.control_plane.failover import FailoverOptions
from kefu.control_plane.region_health import HealthPolicy
from kefu.keys import SigningKey
from kefu.natsserver import NatsServer
from kefu.v1 import bearer_metadata
from kefu.v1 import control_plane_pb2 as pb
from kefu.v1 import control_plane_pb2_grpc as cpg
from kefu.wire import (
    BUCKET_ASSIGNMENTS,
    BUCKET_REACH,
    GatewayReach,
    assignment_key,
    encode,
)

FAST = FailoverOptions(
    period_s=0.2,
    heartbeat_timeout_s=1.5,
    policy=HealthPolicy(down_after_s=0.5, dwell_s=1.0, max_dwell_s=4.0),
)


async def _code(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call succeeded")


def _app(url: str, key: SigningKey) -> ControlPlaneApp:
    return ControlPlaneApp(
        ControlPlaneOptions(
            nats_url=url, trust=trust_with(key), listen="127.0.0.1:0", failover=FAST
        )
    )


async def test_residency_registry_validation_roles_cli_and_audit(
    nats_server: NatsServer, ops_key: SigningKey, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        _app(nats_server.url, ops_key) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch,
    ):
        assert app.first_token
        admin = bearer_metadata(app.first_token)
        stub = cpg.ControlPlaneStub(ch)
        for r in ("cn-east", "cn-north", "eu-1"):
            await stub.CreateRegion(pb.CreateRegionRequest(region=r), metadata=admin)
        await stub.ConfigureRegion(
            pb.ConfigureRegionRequest(region="cn-north", zone="cn"), metadata=admin
        )
        await stub.ConfigureRegion(
            pb.ConfigureRegionRequest(region="eu-1", zone="eu"), metadata=admin
        )
        east = await stub.ConfigureRegion(
            pb.ConfigureRegionRequest(region="cn-east", zone="cn", failover=["cn-north"]),
            metadata=admin,
        )
        assert (east.zone, list(east.failover)) == ("cn", ["cn-north"])
        code, msg = await _code(
            stub.ConfigureRegion(
                pb.ConfigureRegionRequest(region="cn-east", zone="cn", failover=["eu-1"]),
                metadata=admin,
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "驻留区" in msg and "zone" in msg

        await stub.CreateTenant(pb.CreateTenantRequest(tenant="shop"), metadata=admin)
        t = await stub.SetTenantResidency(
            pb.SetTenantResidencyRequest(
                tenant="shop",
                residency=pb.TenantResidency(home="cn-east", allowed=["cn-north"], replicate=True),
            ),
            metadata=admin,
        )
        assert list(t.residency.allowed) == ["cn-east", "cn-north"]
        assert t.residency.failover_mode == "automatic"
        for res, words in [
            (pb.TenantResidency(home="cn-east", allowed=["eu-1"]), "outside the residency zone"),
            (pb.TenantResidency(home="mars"), "不存在"),
            (pb.TenantResidency(home="cn-east", failover_mode="sometimes"), "never"),
            (pb.TenantResidency(), "home"),
        ]:
            code, msg = await _code(
                stub.SetTenantResidency(
                    pb.SetTenantResidencyRequest(tenant="shop", residency=res), metadata=admin
                )
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT and words in msg, msg
        listed = await stub.ListTenants(pb.ListTenantsRequest(), metadata=admin)
        assert list(listed.tenants[0].residency.allowed) == ["cn-east", "cn-north"]  # unchanged

        # A viewer sees health and routes, and may not drain.
        issued = await stub.IssueOperatorToken(
            pb.IssueOperatorTokenRequest(name="noc", role="viewer"), metadata=admin
        )
        viewer = bearer_metadata(issued.token)
        status = await stub.GetFailoverStatus(pb.GetFailoverStatusRequest(), metadata=viewer)
        assert {h.region for h in status.regions} == {"cn-east", "cn-north", "eu-1"}
        code, _ = await _code(
            stub.DrainRegion(pb.RegionActionRequest(region="cn-east"), metadata=viewer)
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        code, msg = await _code(
            stub.DrainRegion(pb.RegionActionRequest(region="nowhere"), metadata=admin)
        )
        assert code == grpc.StatusCode.NOT_FOUND and "不存在" in msg

        # The CLI is a client of the same RPCs.
        from kefu.cli import main

        base = ["cp", "--target", f"127.0.0.1:{app.port}", "--token", app.first_token]
        rc = await asyncio.to_thread(
            main,
            [*base, "tenants", "residency", "shop", "--home", "cn-east", "--failover", "never"],
        )
        assert rc == 0 and "failover never" in capsys.readouterr().out
        rc = await asyncio.to_thread(main, [*base, "--json", "regions", "list"])
        regions = {r["id"]: r for r in json.loads(capsys.readouterr().out)["regions"]}
        assert regions["cn-east"]["failover"] == ["cn-north"]
        rc = await asyncio.to_thread(
            main, [*base, "regions", "set", "cn-north", "--zone", "cn", "--failover", "eu-1"]
        )
        assert rc != 0
        assert "驻留区" in capsys.readouterr().err

        # Residency also bounds assignments: nothing runs outside the allowed regions.
        code, msg = await _code(
            stub.Assign(pb.AssignRequest(tenant="shop", region="cn-north"), metadata=admin)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "驻留" in msg and "cn-north" in msg

        audit = await stub.QueryAudit(pb.QueryAuditRequest(limit=100), metadata=admin)
        actions = [(e.action, e.resource) for e in audit.events]
        assert ("region.residency", "region/cn-east") in actions
        assert actions.count(("tenant.residency", "tenant/shop/residency")) == 2
        assert ("denied", "rpc/DrainRegion") in actions


async def test_region_down_moves_allowed_tenants_only_and_drain_failback(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    async with (
        _app(nats_server.url, ops_key) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch,
    ):
        assert app.first_token and app.cp is not None and app.bus is not None
        cp, bus = app.cp, app.bus
        admin = bearer_metadata(app.first_token)
        stub = cpg.ControlPlaneStub(ch)

        async def status() -> pb.FailoverStatus:
            return await stub.GetFailoverStatus(pb.GetFailoverStatusRequest(), metadata=admin)

        def route(s: pb.FailoverStatus, tenant: str) -> tuple[str, str, int]:
            r = {x.tenant: x for x in s.routes}.get(tenant)
            return (r.state, r.region, r.epoch) if r else ("", "", 0)

        def health(s: pb.FailoverStatus, region: str) -> str:
            return {h.region: h.state for h in s.regions}[region]

        await seed_demo(cp, "a")
        await cp.create_region("b", actor=ACTOR)
        await cp.configure_region("b", zone="z", failover=[], actor=ACTOR)
        await cp.configure_region("a", zone="z", failover=["b"], actor=ACTOR)
        await cp.create_tenant("solo", actor=ACTOR)
        from kefu.wire import TenantResidency

        await cp.set_tenant_residency(
            "demo-shop", TenantResidency(home="a", allowed=["b"]), actor=ACTOR
        )
        await cp.set_tenant_residency("solo", TenantResidency(home="a"), actor=ACTOR)

        async with cp_node(tmp_path / "b", nats_server.url, ops_key, region="b", node_id="nb") as (
            _,
            agent_b,
        ):
            # Warm standby: the home assignment is copied into b, b's node loads the tenant.
            standby = await eventually(
                lambda: bus.kv_get(BUCKET_ASSIGNMENTS, assignment_key("demo-shop", "b")),
                lambda e: e is not None,
            )
            assert standby is not None
            assert await bus.kv_get(BUCKET_ASSIGNMENTS, assignment_key("solo", "b")) is None
            await agent_b.wait_for(lambda: "demo-shop" in agent_b.applied)

            async with cp_node(
                tmp_path / "a", nats_server.url, ops_key, region="a", node_id="na"
            ) as (_, agent_a):
                await agent_a.wait_for(lambda: "demo-shop" in agent_a.applied)
                s = await eventually(
                    status,
                    lambda s: (
                        route(s, "demo-shop")[:2] == ("serving", "a")
                        and route(s, "solo")[:2] == ("serving", "a")
                        and health(s, "a") == "up"
                    ),
                )
                assert route(s, "demo-shop")[:2] == ("serving", "a")
                assert route(s, "solo")[:2] == ("serving", "a")
                epoch = route(s, "demo-shop")[2]

                # Drain a (maintenance): demo-shop moves to b, solo has nowhere to go.
                await stub.DrainRegion(pb.RegionActionRequest(region="a"), metadata=admin)
                s = await eventually(status, lambda s: route(s, "demo-shop")[1] == "b")
                assert route(s, "demo-shop") == ("serving", "b", epoch + 1)
                assert route(s, "solo")[0] == "unavailable"
                await stub.FailbackRegion(pb.RegionActionRequest(region="a"), metadata=admin)
                s = await eventually(status, lambda s: route(s, "demo-shop")[1] == "a")
                assert route(s, "demo-shop") == ("serving", "a", epoch + 2)

            # a's only node is gone: suspect, then down; demo-shop fails over to b.
            s = await eventually(status, lambda s: health(s, "a") == "down", timeout_s=20)
            assert health(s, "a") == "down" and health(s, "b") == "up"
            s = await eventually(status, lambda s: route(s, "demo-shop")[1] == "b")
            assert route(s, "demo-shop")[:2] == ("serving", "b")
            assert route(s, "solo")[0] == "unavailable"
            code, msg = await _code(
                stub.FailbackRegion(pb.RegionActionRequest(region="a"), metadata=admin)
            )
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "回切" in msg

            # A gateway still reaching a's nodes although they do not heartbeat: a NATS-only
            # partition is not "down" for long — it recovers (and is alerted), traffic waits
            # for the dwell before it returns home.
            await bus.kv_put(
                BUCKET_REACH,
                "gw1.a",
                encode(GatewayReach(gateway="gw1", region="a", reachable=["na"])),
            )
            s = await eventually(status, lambda s: health(s, "a") == "recovering")
            assert route(s, "demo-shop")[1] == "b"  # not before the dwell
            s = await eventually(
                status, lambda s: health(s, "a") == "up" and route(s, "demo-shop")[1] == "a"
            )
            assert route(s, "demo-shop")[:2] == ("serving", "a")

        audit = await stub.QueryAudit(pb.QueryAuditRequest(limit=500), metadata=admin)
        events = [(e.actor, e.action, e.resource) for e in audit.events]
        for action in ("region.suspect", "region.down", "region.recovering", "region.up"):
            assert ("failover", action, "region/a") in events, action
        assert ("failover", "region.nats_partition", "region/a") in events
        assert ("admin", "region.drain", "region/a") in events
        assert ("failover", "assign.standby", "tenant/demo-shop/regions/b") in events
        down = [e for e in audit.events if e.action == "region.down" and e.resource == "region/a"][
            -1
        ]
        assert "0/1 nodes heartbeating" in down.detail and "moves traffic" in down.detail
        moved = [e for e in audit.events if e.action == "route.change" and e.tenant == "demo-shop"]
        assert len(moved) >= 4
        # Each transition is an alert too (what webhooks and `kefu cp alerts` see).
        alerts = await stub.ListAlerts(pb.ListAlertsRequest(), metadata=admin)
        raised = {(a.kind, a.resource, a.severity) for a in alerts.alerts}
        assert ("failover", "region/a", "critical") in raised  # down, and the NATS partition
        assert ("failover", "region/a", "info") in raised  # back up


@pytest.mark.parametrize("discover", [False, True], ids=["node-list", "registry"])
async def test_gateway_follows_routes_and_reports_reach(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey, discover: bool
) -> None:
    """A real gateway in front of one node per region: new conversations go where the route
    says, a tenant allowed only the drained region gets the zh/en "unavailable" reply and
    reaches no node, a live conversation finishes where it is, reachability is reported.
    ``registry``: the gateway lists no node and takes them from the control plane's registry."""
    import aiohttp

    from kefu.node.gateway.app import Gateway
    from kefu.node.gateway.config import GatewayConfig, resolve_gateway
    from kefu.wire import TenantResidency

    async with _app(nats_server.url, ops_key) as app:
        assert app.cp is not None and app.bus is not None
        cp, bus = app.cp, app.bus
        key = await seed_demo(cp, "a")
        await cp.create_region("b", actor=ACTOR)
        await cp.configure_region("b", zone="z", failover=[], actor=ACTOR)
        await cp.configure_region("a", zone="z", failover=["b"], actor=ACTOR)
        await cp.create_tenant("solo", actor=ACTOR)
        await cp.set_tenant_residency(
            "demo-shop", TenantResidency(home="a", allowed=["b"]), actor=ACTOR
        )
        await cp.set_tenant_residency("solo", TenantResidency(home="a"), actor=ACTOR)
        (tmp_path / "demo.key").write_text(key)
        (tmp_path / "solo.key").write_text("kefu_solo_not_a_real_key")
        async with (
            cp_node(tmp_path / "a", nats_server.url, ops_key, region="a", node_id="na") as (
                node_a,
                agent_a,
            ),
            cp_node(tmp_path / "b", nats_server.url, ops_key, region="b", node_id="nb") as (
                node_b,
                agent_b,
            ),
        ):
            await agent_a.wait_for(lambda: "demo-shop" in agent_a.applied)
            await agent_b.wait_for(lambda: "demo-shop" in agent_b.applied)
            nodes = [
                {"id": "na", "address": f"127.0.0.1:{node_a.port}", "region": "a"},
                {"id": "nb", "address": f"127.0.0.1:{node_b.port}", "region": "b"},
            ]
            raw = {
                "listen": "127.0.0.1:0",
                "nodes": [] if discover else nodes,
                "tenants": [
                    {"id": "demo-shop", "api_key_file": "demo.key"},
                    {"id": "solo", "api_key_file": "solo.key"},
                ],
                "health": {"interval_s": 0.2, "timeout_s": 0.5},
                "routes": {
                    "nats": nats_server.url,
                    "gateway_id": "gw1",
                    "report_s": 0.2,
                    "discover_nodes": discover,
                },
            }
            resolved = resolve_gateway(GatewayConfig.model_validate(raw), base=tmp_path)
            async with (
                Gateway(resolved) as gw,
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
            ):
                assert gw.routes is not None
                follower = gw.routes

                async def region_of(tenant: str) -> str:
                    r = follower.routes.get(tenant)
                    return f"{r.state}:{r.region}" if r else ""

                async def send(tenant: str, **body: str) -> tuple[int, dict]:
                    r = await http.post(
                        f"{gw.url}/v1/chat/{tenant}/messages",
                        json={"text": "我的订单到哪了", **body},
                    )
                    return r.status, await r.json()

                if discover:  # both nodes from the registry, with the addresses they report
                    pool = gw.pool.nodes

                    async def known() -> list[str]:
                        return sorted(pool)

                    assert await eventually(known, lambda ids: ids == ["na", "nb"]) == ["na", "nb"]
                    assert {(n.spec.address, n.spec.region) for n in pool.values()} == {
                        (x["address"], x["region"]) for x in nodes
                    }
                got = await eventually(lambda: region_of("demo-shop"), lambda v: v == "serving:a")
                assert got == "serving:a"
                await eventually(lambda: region_of("solo"), lambda v: v == "serving:a")
                await eventually(
                    lambda: cp.region_health(),
                    lambda hs: all(h.state == "up" for h in hs),
                    timeout_s=20,
                )
                status, body = await send("demo-shop")
                assert status == 200 and body["session_id"].startswith("na."), body
                reach = await eventually(
                    lambda: bus.kv_get(BUCKET_REACH, "gw1.a"),
                    lambda e: e is not None and b'"reachable":["na"]' in e.value,
                )
                assert reach is not None and b'"reachable":["na"]' in reach.value

                await cp.drain_region("a", actor=ACTOR)
                await eventually(lambda: region_of("demo-shop"), lambda v: v == "serving:b")
                await eventually(lambda: region_of("solo"), lambda v: v == "unavailable:")
                status, moved = await send("demo-shop")
                assert status == 200 and moved["session_id"].startswith("nb."), moved
                status, refused = await send("solo")
                assert status == 503 and refused["error"]["code"] == "region_unavailable"
                assert "暂时不可用" in refused["error"]["messages"]["zh"]
                assert "temporarily unavailable" in refused["error"]["messages"]["en"]

                await cp.failback_region("a", actor=ACTOR)
                await eventually(lambda: region_of("demo-shop"), lambda v: v == "serving:a")
                status, back = await send("demo-shop")
                assert back["session_id"].startswith("na.")
                # The conversation that began in b during the drain finishes in b.
                status, cont = await send("demo-shop", session_id=moved["session_id"])
                assert status == 200 and cont["session_id"] == moved["session_id"]
        # Nothing of "solo" was stored or processed outside its region (nor in a: it never
        # had a config there; the gateway refused it before any node).
        assert not [p for p in (tmp_path / "b").rglob("*solo*")]
