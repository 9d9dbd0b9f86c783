"""`kefu cp rollout policy set NAME` (from a YAML file and / or flags): built and validated
before anything is sent (a bad file points at its line), stored in the canary bucket next to
the built-in policies on a real nats-server, listed by `policy list`, used by
`rollout start --policy`, audited, admin only; the policy's minimum bake is a floor per step."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest
from cp_support import ACTOR, new_version, seed_demo, trust_with

from kefu.config.yamlsource import parse_yaml
from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
from kefu.control_plane.canary import DEFAULT_POLICIES, CanaryPolicy
from kefu.control_plane.canary_store import load_policy
from kefu.control_plane.policy_file import PolicyFlags, build_policy
from kefu.errors import ConfigError, PermanentError
from kefu.keys import SigningKey
from kefu.natsserver import NatsServer
from kefu.rollout import CAPABILITY_SPLIT
from kefu.v1 import bearer_metadata
from kefu.v1 import control_plane_pb2 as pb
from kefu.v1 import control_plane_pb2_grpc as pbg
from kefu.wire import BUCKET_NODES, NodeStatus, encode

STRICT = """\
# tighter than the default for a finance tenant
tolerance:
  error: 0.5%
  fallback: 0.03
min_trials: 200
min_bake_s: 600
step_limit_s: 7200
"""


def test_defaults_then_file_then_flags() -> None:
    doc = parse_yaml(STRICT, source="strict.yaml")
    p = build_policy("strict", doc, PolicyFlags(tolerance=["handoff=2%"], min_sessions=80))
    default = CanaryPolicy()
    assert p.name == "strict" and p.min_trials == 200 and p.min_sessions == 80
    assert p.min_bake_s == 600 and p.step_limit_s == 7200 and p.alpha == default.alpha
    assert p.tolerance["error"] == pytest.approx(0.005) and p.tolerance["fallback"] == 0.03
    assert p.tolerance["handoff"] == pytest.approx(0.02)
    assert p.tolerance["slow"] == default.tolerance["slow"]  # untouched: the default's
    flags_only = build_policy("quick", None, PolicyFlags(bake=60.0, step_limit=0.0))
    assert flags_only.min_bake_s == 60 and flags_only.step_limit_s == 0


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "tolerance:\n  error: 1%\n  fallback: lots\n",
            "strict.yaml:3: field 'tolerance.fallback'",
        ),
        ("tolerance:\n  speed: 1%\n", "strict.yaml:2: field 'tolerance.speed'"),
        ("tolerance:\n  error: 150%\n", "strict.yaml:2: field 'tolerance.error'"),
        ("min_trials: 0\n", "strict.yaml:1: field 'min_trials'"),
        ("tolerance: {}\nbake: 60\n", "strict.yaml:2:"),  # the field is min_bake_s
        ("name: other\n", "strict.yaml:1: field 'name'"),
        ("tolerance: [1\n", "strict.yaml:2: YAML syntax error"),
    ],
)
def test_a_bad_file_points_at_the_line(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_policy("strict", parse_yaml(text, source="strict.yaml"), PolicyFlags())
    assert where in str(info.value)


def test_bad_flags_and_names_are_clear_errors() -> None:
    with pytest.raises(PermanentError, match="METRIC=RATE"):
        build_policy("x", None, PolicyFlags(tolerance=["latency=3%"]))
    with pytest.raises(PermanentError, match="not a rate"):
        build_policy("x", None, PolicyFlags(tolerance=["error=abc"]))
    with pytest.raises(PermanentError, match=r"min_trials.*策略无效"):
        build_policy("x", None, PolicyFlags(min_trials=0))
    with pytest.raises(PermanentError, match="策略名"):
        build_policy("Default Policy", None, PolicyFlags())


def test_the_policy_bake_is_a_floor_under_every_step_bake() -> None:
    baked = CanaryPolicy(name="baked", min_bake_s=3600.0)
    assert baked.bake_for(600.0) == 3600.0 and baked.bake_for(7200.0) == 7200.0
    assert DEFAULT_POLICIES["default"].bake_for(600.0) == 600.0  # built-ins: no floor


@pytest.mark.slow
async def test_policy_set_list_start_audit_on_a_real_control_plane(
    nats_server: NatsServer,
    ops_key: SigningKey,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kefu.cli import main

    monkeypatch.setenv("COLUMNS", "250")
    opts = ControlPlaneOptions(
        nats_url=nats_server.url, trust=trust_with(ops_key), listen="127.0.0.1:0", regions=["r1"]
    )
    policy_file = tmp_path / "strict.yaml"
    policy_file.write_text(STRICT, encoding="utf-8")
    async with (
        ControlPlaneApp(opts) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch,
    ):
        assert app.cp is not None and app.bus is not None and app.first_token
        cp = ["cp", "--target", f"127.0.0.1:{app.port}", "--token", app.first_token]

        # A bad file: refused with its line before anything is stored.
        bad = tmp_path / "bad.yaml"
        bad.write_text("tolerance:\n  fallback: 30%\n  wrong: 1%\n", encoding="utf-8")
        rc = await asyncio.to_thread(
            main, [*cp, "rollout", "policy", "set", "strict", "--file", str(bad)]
        )
        err = capsys.readouterr().err
        assert rc == ConfigError.exit_code and "bad.yaml:3: field 'tolerance.wrong'" in err
        assert "Traceback" not in err

        set_cmd = ["rollout", "policy", "set", "strict", "--file", str(policy_file)]
        rc = await asyncio.to_thread(main, [*cp, "--json", *set_cmd, "--tolerance", "slow=2%"])
        out = json.loads(capsys.readouterr().out)
        assert rc == 0 and out["name"] == "strict" and out["stored"] and out["min_bake_s"] == 600
        stored = await load_policy(app.bus, "strict")  # in the canary bucket, as sent
        assert stored.min_trials == 200 and stored.tolerance["slow"] == pytest.approx(0.02)
        assert stored.tolerance["error"] == pytest.approx(0.005)

        rc = await asyncio.to_thread(main, [*cp, "rollout", "policy", "list"])
        out = capsys.readouterr().out
        assert rc == 0 and "strict (stored / 已保存)" in out and "600 s" in out
        assert "low-traffic" in out  # the built-in ones are still listed

        # Replace it with flags only (the rest: the defaults), then use it in a rollout.
        rc = await asyncio.to_thread(
            main, [*cp, "rollout", "policy", "set", "strict", "--min-trials", "150"]
        )
        assert rc == 0 and (await load_policy(app.bus, "strict")).min_trials == 150
        capsys.readouterr()

        await seed_demo(app.cp, "r1")
        await app.cp.publish_model(new_version(tmp_path, ops_key, "9.0.0"), actor=ACTOR)
        node = NodeStatus(
            node_id="edge-1", region="r1", capabilities=[CAPABILITY_SPLIT], heartbeat_at=time.time()
        )
        await app.bus.kv_put(BUCKET_NODES, node.node_id, encode(node))
        start = ["rollout", "start", "demo-shop", "--model", "intent=demo-shop-intent@9.0.0"]
        start += ["--wave", "r1", "--steps", "50%", "--bake", "60", "--policy", "strict"]
        rc = await asyncio.to_thread(main, [*cp, "--json", *start])
        started = json.loads(capsys.readouterr().out)
        assert rc == 0 and started["policy"] == "strict"

        stub = pbg.ControlPlaneStub(ch)
        md = bearer_metadata(app.first_token)
        audit = await stub.QueryAudit(pb.QueryAuditRequest(limit=200), metadata=md)
        sets = [e for e in audit.events if e.action == "canary_policy.set"]
        assert [e.resource for e in sets] == ["canary_policies/strict"] * 2
        assert all(e.actor == "admin" for e in sets)
        assert not sets[0].before_digest and sets[1].before_digest == sets[0].after_digest
        assert json.loads(sets[1].detail)["min_trials"] == 150

        # A viewer may list, not set; the API validates what a raw client sends.
        issued = await stub.IssueOperatorToken(
            pb.IssueOperatorTokenRequest(name="watcher", role="viewer"), metadata=md
        )
        viewer = bearer_metadata(issued.token)
        listed = await stub.ListCanaryPolicies(pb.ListCanaryPoliciesRequest(), metadata=viewer)
        assert {p.name for p in listed.policies if p.stored} == {"strict"}
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.PutCanaryPolicy(pb.CanaryPolicy(name="x"), metadata=viewer)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.PutCanaryPolicy(pb.CanaryPolicy(name="half"), metadata=md)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "alpha" in (invalid.value.details() or "")
