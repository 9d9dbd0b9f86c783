"""The node-local guard: the pure decision (probation, verdict, hold) and, end to end, a real
``kefu-node run`` process that reverts a version failing at inference to its last-known-good
with NATS stopped, keeps that decision over a restart and reports it once NATS is back (node
status + control-plane alert and audit event)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import onnx
import pytest
from cp_support import (
    ACTOR,
    CpStack,
    SecuredNats,
    control_plane,
    seed_demo,
    trust_on_node,
    trust_with,
)
from onnx import TensorProto, helper, numpy_helper
from support.processes import stop_process
from test_node_cp_join import converse_when_assigned, run_node, write_node_yaml
from tokenizers import Tokenizer

from kefu.bundle import Manifest, pack, sha256_file, sign_bundle, write_manifest
from kefu.config.node import parse_node_config
from kefu.control_plane.alerts import list_alerts
from kefu.control_plane.guard_controller import GuardController
from kefu.errors import ConfigError
from kefu.keys import SigningKey
from kefu.models.store import shipped_dir
from kefu.node.agent.guard import (
    GuardPolicy,
    GuardState,
    Probation,
    changes,
    count,
    decide,
    held,
    is_failure,
    open_probation,
    release_holds,
    revert_record,
    version_key,
    with_revert,
)
from kefu.node.agent.guard_keeper import GuardKeeper, count_boot
from kefu.node.agent.reconcile import LocalState, plan
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg
from kefu.wire import BundleRef, DesiredTenant

# --------------------------------------------------------------------------- pure decision


def doc(intent: str = "1", config_version: int = 1, tenant: str = "t") -> DesiredTenant:
    return DesiredTenant(
        tenant=tenant,
        region="r1",
        config_digest="d",
        config_version=config_version,
        config_yaml="x",
        models={"intent": BundleRef(name="intent", version=intent, sha256="", size=0)},
    )


POLICY = GuardPolicy(probation_s=60, min_turns=10, max_error_share=0.5)


def test_a_first_apply_or_an_unchanged_version_opens_no_probation() -> None:
    assert open_probation(None, doc(), 0.0) is None
    assert open_probation(doc(), doc(), 0.0) is None
    assert changes(doc("1"), doc("2", config_version=3)) == {
        "config": ("config v1", "config v3"),
        "intent": ("intent@1", "intent@2"),
    }


def run(p: Probation, outcomes: str, at: float = 1.0) -> list[str]:
    """Feed ``outcomes`` ('x' failed, '.' answered); the verdict after each."""
    out = []
    for c in outcomes:
        p = count(p, failed=c == "x")
        out.append(decide(p, at, POLICY))
    return out


def test_reverts_only_at_min_turns_and_the_error_share() -> None:
    p = open_probation(doc("1"), doc("2"), 0.0)
    assert p is not None and p.key == version_key(doc("2"))
    # 9 failures: below min_turns, no verdict yet; the 10th reverts.
    assert run(p, "x" * 10) == ["watch"] * 9 + ["revert"]
    # 4 of 10 failed (40 % < 50 %): keep watching; 5 of 10 (50 %) reverts.
    assert run(p, "xxxx......")[-1] == "watch"
    assert run(p, "xxxxx.....")[-1] == "revert"
    # After the window: passed, whatever the counts.
    assert decide(count(p, failed=True), 61.0, POLICY) == "passed"
    assert decide(p, 1.0, GuardPolicy(enabled=False)) == "passed"


def test_only_the_versions_fault_counts_as_a_failure() -> None:
    assert is_failure("INTERNAL")
    assert is_failure("UNAVAILABLE", "InferenceFailed")
    assert not is_failure("UNAVAILABLE", "Overloaded")  # shed: not the version's fault
    assert not is_failure("RESOURCE_EXHAUSTED", "RateLimited")
    assert not is_failure("INVALID_ARGUMENT", "InvalidTurn")


def test_a_revert_holds_the_version_until_the_desired_state_names_another() -> None:
    p = open_probation(doc("1"), doc("2"), 5.0)
    assert p is not None
    p = p.model_copy(update={"turns": 20, "errors": 19})
    record = revert_record(p, node_id="n1", now=9.0)
    assert (record.slot, record.bad_version, record.reverted_to) == (
        "intent",
        "intent@2",
        "intent@1",
    )
    assert (record.turns, record.errors, record.applied_at) == (20, 19, 5.0)
    state = with_revert(GuardState(probations={"t": p}), record, p.key)
    assert state.probations == {} and state.reverts == [record]
    # The same versions (a new rollout split or key changes nothing): held.
    assert held(state.holds, doc("2"))
    assert not held(state.holds, doc("3"))
    assert release_holds(state.holds, {"t": doc("2")}) == state.holds
    assert release_holds(state.holds, {"t": doc("3")}) == {}
    assert release_holds(state.holds, {}) == {}  # tenant gone


def test_the_planner_skips_a_held_tenant() -> None:
    local = LocalState(applied={"t": doc("1").fingerprint()}, stored=frozenset({"intent@2"}))
    assert plan({"t": doc("2")}, local)["t"]
    local.held = frozenset({"t"})
    assert plan({"t": doc("2")}, local) == {}


def test_the_keeper_persists_holds_and_probations(tmp_path: Path) -> None:
    path = tmp_path / "guard.json"
    k = GuardKeeper(path, policy=GuardPolicy(min_turns=3, max_error_share=0.5), node_id="n1")
    assert k.applied(doc("1"), doc("2")) is not None
    k.save()
    again = GuardKeeper(path, policy=k.policy, node_id="n1")
    again.load()
    assert again.request("t", failed=True) is None
    assert again.request("t", failed=False) is None
    p = again.request("t", failed=True)  # 2 of 3 failed
    assert p is not None and again.request("t", failed=True) is None  # handed out once
    record = again.reverted(p)
    again.save()
    third = GuardKeeper(path, policy=k.policy, node_id="n1")
    third.load()
    assert third.holds == {"t": version_key(doc("2"))} and third.reverts == [record]
    path.write_text("{not json")
    broken = GuardKeeper(path, policy=k.policy, node_id="n1")
    broken.load()  # logged, starts empty: the node still starts
    assert broken.holds == {}
    assert [count_boot(tmp_path / "boots") for _ in range(3)] == [1, 2, 3]


def test_node_yaml_guard_section_is_validated() -> None:
    cfg = parse_node_config("guard:\n  min_turns: 5\n  max_error_share: 0.3\n").config
    assert (cfg.guard.min_turns, cfg.guard.max_error_share, cfg.guard.probation_s) == (5, 0.3, 600)
    with pytest.raises(ConfigError, match="max_error_share") as err:
        parse_node_config("guard:\n  max_error_share: 2\n", source="node.yaml")
    assert str(err.value).startswith("node.yaml:2: field 'guard.max_error_share'")


# --------------------------------------------------------------------------- end to end

#: Rows kept in the broken bundle's extra lookup table: the warm-up texts' tokens are below
#: it, so the bundle loads and warms; a turn with a rarer token fails at inference.
TABLE_ROWS = 2000
FAILING = "my account was hacked"
BROKEN = "2099.1.1-broken"


def broken_version(tmp_path: Path, key: SigningKey, version: str = BROKEN) -> bytes:
    """The shipped intent bundle with a vocabulary/embedding mismatch (a real export bug): the
    graph looks every token id up in a table of ``TABLE_ROWS`` rows while the tokenizer has
    more, so onnxruntime raises "indices element out of data bounds" for rarer tokens. It
    passes signature checks and warm-up; it fails real turns."""
    dest = tmp_path / f"intent-{version}"
    shutil.copytree(shipped_dir() / "demo-shop-intent", dest)
    model = onnx.load(str(dest / "model.onnx"))
    g = model.graph
    for node in g.node:
        node.output[:] = ["logits_pre" if o == "logits" else o for o in node.output]
    g.initializer.extend(
        [
            numpy_helper.from_array(__import__("numpy").zeros(TABLE_ROWS, "float32"), "guard_t"),
            helper.make_tensor("guard_axes", TensorProto.INT64, [1], [1]),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Gather", ["guard_t", "input_ids"], ["guard_g"]),
            helper.make_node("ReduceSum", ["guard_g", "guard_axes"], ["guard_s"], keepdims=1),
            helper.make_node("Add", ["logits_pre", "guard_s"], ["logits"]),
        ]
    )
    onnx.save(model, str(dest / "model.onnx"))
    m = Manifest.from_bytes((dest / "manifest.json").read_bytes())
    m.version = version
    m.files["model.onnx"] = {
        "size": (dest / "model.onnx").stat().st_size,
        "sha256": sha256_file(dest / "model.onnx"),
    }
    write_manifest(dest, m)
    sign_bundle(dest, key)
    return pack(dest)


def test_the_failing_text_reaches_past_the_table_and_the_warm_up_does_not() -> None:
    from kefu.node.nlu.predictions import InferenceOptions

    tok = Tokenizer.from_file(str(shipped_dir() / "demo-shop-intent" / "tokenizer.json"))
    assert max(tok.encode(FAILING).ids) >= TABLE_ROWS
    for text in InferenceOptions().warmup_texts:
        assert max(tok.encode(text).ids) < TABLE_ROWS


def shipped_version() -> str:
    path = shipped_dir() / "demo-shop-intent" / "manifest.json"
    return Manifest.from_bytes(path.read_bytes()).version


def converse(port: int, key: str, text: str) -> tuple[bool, pb.ConverseReply | None]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            reply = pbg.KefuNodeStub(ch).Converse(
                pb.ConverseRequest(channel=pb.CHANNEL_WEB, text=text),
                metadata=bearer_metadata(key),
                timeout=10,
            )
            return True, reply
        except grpc.RpcError:
            return False, None


async def wait_status(stack, predicate, timeout_s: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = {n.node_id: n for n in await stack.cp.list_nodes()}
        n1 = nodes.get("n1")
        if n1 is not None and predicate(n1):
            return n1
        assert time.monotonic() < deadline, f"node status never matched: {n1}"
        await asyncio.sleep(0.2)


GUARD_YAML = "guard:\n  probation_s: 600\n  min_turns: 6\n  max_error_share: 0.5\n"


@pytest.mark.slow
async def test_node_reverts_a_version_failing_at_inference_with_nats_stopped(
    tmp_path: Path, secured_nats: SecuredNats, ops_key: SigningKey
) -> None:
    nats, cp_user = secured_nats, secured_nats.cp
    config, port, data = write_node_yaml(
        tmp_path, nats.url, user=nats.nodes["n1"], extra=GUARD_YAML
    )
    trust_on_node(data, ops_key)
    async with control_plane(nats.url, trust_with(ops_key), user=cp_user) as stack:
        key = await seed_demo(stack.cp)
        good = f"demo-shop-intent@{shipped_version()}"
        proc = run_node(config)
        try:
            first = await asyncio.to_thread(converse_when_assigned, port, key, [FAILING])
            assert first[0].model_versions["intent"] == good
            await stack.cp.publish_model(broken_version(tmp_path, ops_key), actor=ACTOR)
            await stack.cp.assign(
                "demo-shop", "r1", models={"intent": f"demo-shop-intent@{BROKEN}"}, actor=ACTOR
            )
            await wait_status(
                stack,
                lambda n: (
                    n.tenants.get("demo-shop") is not None
                    and n.tenants["demo-shop"].models.get("intent") == f"demo-shop-intent@{BROKEN}"
                ),
            )
        except BaseException:
            await asyncio.to_thread(stop_process, proc)
            raise
    try:
        nats.server.kill()  # NATS down from here on: the node is on its own
        outcomes = []
        for _ in range(40):
            ok, reply = await asyncio.to_thread(converse, port, key, FAILING)
            outcomes.append(ok)
            if ok:
                break
        # The broken version failed (at least min_turns requests), then the node reverted by
        # itself and the same turn is answered again, by the last-known-good version.
        assert outcomes[0] is False and outcomes[-1] is True, outcomes
        assert outcomes.count(False) >= 6
        assert reply is not None and reply.model_versions["intent"] == good
        saved = GuardState.model_validate_json((data / "agent" / "guard.json").read_bytes())
        assert [r.bad_version for r in saved.reverts] == [f"demo-shop-intent@{BROKEN}"]
        assert (
            saved.holds
            and json.loads((data / "agent" / "lkg" / "demo-shop.json").read_text())["models"][
                "intent"
            ]["version"]
            == good.split("@")[1]
        )
    finally:
        code, err = await asyncio.to_thread(stop_process, proc)
    assert code == 0, err
    assert "reverting demo-shop" in err and "Traceback" not in err

    # A restart (NATS still down) keeps the decision: the last-known-good serves at once.
    proc = run_node(config)
    try:
        ok, reply = await asyncio.to_thread(converse, port, key, FAILING)
        assert ok and reply is not None
        assert reply.model_versions["intent"] == good
        nats.server.start()  # NATS back: the revert is reported, the bad version not re-applied
        async with (
            control_plane(nats.url, trust_with(ops_key), user=cp_user) as stack,
            leader_guard(stack),
        ):
            n1 = await wait_status(stack, lambda n: bool(n.guard) and n.boots == 2)
            revert = n1.guard[0]
            assert (revert.tenant, revert.slot) == ("demo-shop", "intent")
            assert (revert.bad_version, revert.reverted_to) == (f"demo-shop-intent@{BROKEN}", good)
            assert revert.errors >= 6 and revert.errors >= revert.turns / 2
            assert n1.tenants["demo-shop"].models["intent"] == good
            assert n1.tenants["demo-shop"].state == "refused"
            alerts = await wait_alerts(stack, revert.id)
            assert alerts[0].kind == "guard" and alerts[0].tenant == "demo-shop"
            audit = [e for e in await stack.cp.audit_log(tenant="demo-shop") if "guard" in e.action]
            assert audit and revert.id in audit[0].detail
            ok, reply = await asyncio.to_thread(converse, port, key, FAILING)
            assert ok and reply is not None and reply.model_versions["intent"] == good
    finally:
        code, err = await asyncio.to_thread(stop_process, proc)
    assert code == 0, err


@asynccontextmanager
async def leader_guard(stack: CpStack) -> AsyncIterator[GuardController]:
    """The leader's guard on ``stack`` (the helper stack runs only the reconciler)."""

    async def confirm() -> None:
        await stack.lease.confirm()

    await stack.lease.step()
    guard = GuardController(stack.cp, confirm=confirm, period_s=0.5)
    guard.start()
    try:
        yield guard
    finally:
        await guard.stop()


async def wait_alerts(stack, alert_id: str, timeout_s: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        alerts = [a for a in await list_alerts(stack.bus) if a.id == alert_id]
        if alerts:
            return alerts
        assert time.monotonic() < deadline, "no guard alert"
        await asyncio.sleep(0.3)
