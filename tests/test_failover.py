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
                        route(s, "demo-shop")[:2] == ("serving", "a") and health(s, "a") == "up"
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
