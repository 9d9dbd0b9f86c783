"""The control-plane gRPC API and the `kefu cp` CLI against a real replica on a real NATS."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from cp_support import (
    DEMO_YAML,
    cp_app,
    shipped_packed,
)

from kefu.keys import SigningKey
from kefu.natsserver import NatsServer
from kefu.v1 import control_plane_pb2 as pb


async def test_api_validates_audits_and_maps_errors(
    nats_server: NatsServer, ops_key: SigningKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with cp_app(nats_server.url, ops_key) as (app, stub, _, admin):
        MD = (*admin, ("x-kefu-actor", "alice"))
        await stub.CreateRegion(pb.CreateRegionRequest(region="r1"), metadata=MD)
        await stub.CreateTenant(pb.CreateTenantRequest(tenant="demo-shop"), metadata=MD)
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.CreateTenant(pb.CreateTenantRequest(tenant="demo-shop"), metadata=MD)
        assert ei.value.code() == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.PutConfig(
                pb.PutConfigRequest(tenant="demo-shop", yaml="tenant: [unclosed"), metadata=MD
            )
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "demo-shop.yaml:1" in (ei.value.details() or "")
        cv = await stub.PutConfig(
            pb.PutConfigRequest(tenant="demo-shop", yaml=DEMO_YAML), metadata=MD
        )
        assert cv.version == 1
        packed, version = shipped_packed("demo-shop-intent")
        mv = await stub.PublishModel(pb.PublishModelRequest(packed_bundle=packed), metadata=MD)
        assert mv.version == version and mv.metrics["accuracy"] > 0.5
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.Assign(
                pb.AssignRequest(tenant="demo-shop", region="r1", models={"intent": "nope@1"}),
                metadata=MD,
            )
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in (ei.value.details() or "")
        a = await stub.Assign(
            pb.AssignRequest(
                tenant="demo-shop", region="r1", models={"intent": "demo-shop-intent"}
            ),
            metadata=MD,
        )
        assert a.models["intent"] == f"demo-shop-intent@{version}"
        audit = await stub.QueryAudit(pb.QueryAuditRequest(tenant="demo-shop"), metadata=MD)
        assert [e.action for e in audit.events] == ["tenant.create", "config.put", "assign"]
        # The actor is the token's name; the client's x-kefu-actor is only a note.
        assert {(e.actor, e.actor_note) for e in audit.events} == {("admin", "alice")}
        status = await stub.GetStatus(pb.GetStatusRequest(), metadata=MD)
        for _ in range(30):
            if status.is_leader:
                break
            await asyncio.sleep(0.1)
            status = await stub.GetStatus(pb.GetStatusRequest(), metadata=MD)
        assert status.is_leader and status.leader == app.options.replica

        # The CLI is a client of the same API (run in a thread: it has its own event loop).
        from kefu.cli import main

        target = f"127.0.0.1:{app.port}"
        tok = ["--token", app.first_token]
        rc = await asyncio.to_thread(
            main, ["cp", "--target", target, *tok, "--json", "model", "list"]
        )
        out = capsys.readouterr().out
        assert rc == 0 and json.loads(out)["models"][0]["name"] == "demo-shop-intent"
        rc = await asyncio.to_thread(
            main, ["cp", "--target", target, *tok, "config", "list", "demo-shop"]
        )
        assert rc == 0 and "demo-shop" in capsys.readouterr().out
        bad = tmp_path / "bad.yaml"
        bad.write_text("tenant: [unclosed", encoding="utf-8")
        rc = await asyncio.to_thread(
            main, ["cp", "--target", target, *tok, "config", "put", "demo-shop", str(bad)]
        )
        err = capsys.readouterr().err
        assert rc != 0 and "INVALID_ARGUMENT" in err and "Traceback" not in err
        # assign pins a scenario's model, then --remove takes the pin away again.
        assign = ["cp", "--target", target, *tok, "--json", "assign", "demo-shop", "r1"]
        pin = ["--scenario-model", "logistics:intent=demo-shop-intent"]
        assert await asyncio.to_thread(main, [*assign, *pin]) == 0
        pinned = json.loads(capsys.readouterr().out)
        assert pinned["scenario_models"]["logistics"]["models"]["intent"].endswith(version)
        assert await asyncio.to_thread(main, [*assign, "--remove", "logistics:intent"]) == 0
        assert "logistics" not in json.loads(capsys.readouterr().out).get("scenario_models", {})
        assert await asyncio.to_thread(main, [*assign, "--remove", "logistics"]) != 0
        err = capsys.readouterr().err
        assert "INVALID_ARGUMENT" in err and "nothing to remove" in err and "无可移除" in err


def test_every_cp_verb_and_group_has_bilingual_help() -> None:
    from kefu.control_plane.cli import VERBS
    from kefu.control_plane.cli_help import HELP
    from kefu.control_plane.cli_regions import REGION_VERBS
    from kefu.control_plane.cli_rollout import ROLLOUT_VERBS

    paths = {*VERBS, *ROLLOUT_VERBS, *REGION_VERBS}
    paths |= {p[:1] for p in paths}
    missing = sorted(p for p in paths if " / " not in HELP.get(p, ""))
    assert not missing, f"kefu cp verbs without an English / 中文 help line: {missing}"
