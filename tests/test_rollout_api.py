"""Rollouts through the gRPC API and `kefu cp rollout` against a real replica (its leader runs
the controller) on a real nats-server: start, list, show --json, pause, resume, rollback; a
viewer may read but not start; bad input is INVALID_ARGUMENT with a bilingual message."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest
from cp_support import ACTOR, DEMO_YAML, new_version, seed_demo, trust_with

from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
from kefu.keys import SigningKey
from kefu.natsserver import NatsServer
from kefu.rollout import CAPABILITY_SPLIT
from kefu.v1 import bearer_metadata
from kefu.v1 import control_plane_pb2 as pb
from kefu.v1 import control_plane_pb2_grpc as pbg
from kefu.wire import BUCKET_NODES, NodeStatus, encode


@pytest.mark.slow
async def test_rollout_api_and_cli(
    nats_server: NatsServer,
    ops_key: SigningKey,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich tables without wrapping
    opts = ControlPlaneOptions(
        nats_url=nats_server.url,
        trust=trust_with(ops_key),
        listen="127.0.0.1:0",
        regions=["r1"],
        rollout_period_s=0.2,
    )
    async with (
        ControlPlaneApp(opts) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch,
    ):
        assert app.cp is not None and app.bus is not None and app.first_token
        await seed_demo(app.cp, "r1")
        await app.cp.publish_model(new_version(tmp_path, ops_key, "9.0.0"), actor=ACTOR)
        # A node that does not advertise the split: kept out of the wave and reported.
        old = NodeStatus(node_id="old-node", region="r1", heartbeat_at=time.time())
        new = NodeStatus(
            node_id="new-node",
            region="r1",
            capabilities=[CAPABILITY_SPLIT],
            heartbeat_at=time.time(),
        )
        for n in (old, new):
            await app.bus.kv_put(BUCKET_NODES, n.node_id, encode(n))
        stub = pbg.ControlPlaneStub(ch)
        md = bearer_metadata(app.first_token)
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.StartRollout(
                pb.StartRolloutRequest(
                    tenant="demo-shop",
                    models={"intent": "demo-shop-intent@9.0.0"},
                    waves=[pb.RolloutWave(regions=["r1"])],
                    steps=[pb.RolloutStep(weight=0.5), pb.RolloutStep(weight=0.1)],
                ),
                metadata=md,
            )
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "递增" in (ei.value.details() or "")

        from kefu.cli import main

        cp = ["cp", "--target", f"127.0.0.1:{app.port}", "--token", app.first_token]
        rc = await asyncio.to_thread(
            main,
            [
                *cp,
                "--json",
                "rollout",
                "start",
                "demo-shop",
                "--model",
                "intent=demo-shop-intent@9.0.0",
                "--wave",
                "r1",
                "--steps",
                "10%,100%",
                "--bake",
                "3600",
                "--reason",
                "new intent model",
            ],
        )
        started = json.loads(capsys.readouterr().out)
        assert rc == 0 and started["phase"] == "pending" and started["tenant"] == "demo-shop"
        rid = started["id"]
        for _ in range(50):  # the leader's controller begins wave 1
            ro = await stub.GetRollout(pb.GetRolloutRequest(rollout_id=rid), metadata=md)
            if ro.phase == "running":
                break
            await asyncio.sleep(0.1)
        assert ro.phase == "running" and list(ro.excluded_nodes) == ["old-node"]
        assert [m.node_id for m in ro.members] == ["new-node"] and ro.nodes_total == 1
        assert ro.nodes_converged == 0  # the stand-in node reports no split

        rc = await asyncio.to_thread(main, [*cp, "rollout", "list", "--tenant", "demo-shop"])
        out = capsys.readouterr().out
        assert rc == 0 and rid in out and "0/1" in out
        rc = await asyncio.to_thread(main, [*cp, "rollout", "show", rid])
        out = capsys.readouterr().out
        assert rc == 0 and "old-node" in out and "new-node" in out

        for verb, phase in (
            ("pause", "paused"),
            ("resume", "running"),
            ("rollback", "rolled_back"),
        ):
            rc = await asyncio.to_thread(
                main, [*cp, "--json", "rollout", verb, rid, "--reason", f"test {verb}"]
            )
            assert rc == 0 and json.loads(capsys.readouterr().out)["phase"] == phase
        rc = await asyncio.to_thread(main, [*cp, "rollout", "resume", rid])
        err = capsys.readouterr().err
        assert rc != 0 and "INVALID_ARGUMENT" in err and "Traceback" not in err

        # A config canary from the CLI: a staged version, then a rollout naming only it.
        staged = tmp_path / "staged.yaml"
        staged.write_text(DEMO_YAML.replace("name:", "name: ", 1), encoding="utf-8")
        rc = await asyncio.to_thread(
            main, [*cp, "--json", "config", "put", "demo-shop", str(staged), "--staged"]
        )
        version = json.loads(capsys.readouterr().out)["version"]
        assert rc == 0 and version == 2
        tenants = await stub.ListTenants(pb.ListTenantsRequest(), metadata=md)
        assert [t.current_config for t in tenants.tenants] == [1]  # staged: not current
        start = ["rollout", "start", "demo-shop", "--wave", "r1", "--steps", "10%"]
        rc = await asyncio.to_thread(
            main, [*cp, "--json", *start, "--config-version", str(version)]
        )
        started = json.loads(capsys.readouterr().out)
        assert rc == 0 and started["target_config_version"] == version, started
        rc = await asyncio.to_thread(main, [*cp, "rollout", "abort", started["id"]])
        assert rc == 0, capsys.readouterr().err
        rc = await asyncio.to_thread(main, [*cp, *start])  # neither a model nor a config
        err = capsys.readouterr().err
        assert rc != 0 and "config version" in err and "Traceback" not in err

        # A viewer reads rollouts but may not start one.
        issued = await stub.IssueOperatorToken(
            pb.IssueOperatorTokenRequest(name="watcher", role="viewer"), metadata=md
        )
        viewer = bearer_metadata(issued.token)
        listed = await stub.ListRollouts(
            pb.ListRolloutsRequest(tenant="demo-shop"), metadata=viewer
        )
        assert rid in [r.id for r in listed.rollouts] and len(listed.rollouts) == 2
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.CommandRollout(
                pb.CommandRolloutRequest(rollout_id=rid, command="abort"), metadata=viewer
            )
        assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
        audit = await stub.QueryAudit(pb.QueryAuditRequest(tenant="demo-shop"), metadata=md)
        actions = [e.action for e in audit.events]
        for action in ("rollout.pause", "rollout.resume", "rollout.rollback", "config.stage"):
            assert actions.count(action) == 1, actions
        assert actions.count("rollout.start") == 2, actions  # the model and the config canary
        assert any(e.actor == "controller" for e in audit.events)
