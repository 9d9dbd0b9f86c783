"""The sticky in-node split: pure rules (node/dialog/split.py), then a real node following a
real control plane over a real nats-server through a rollout — arms by the stable hash, versions
kept per session across a widening, the canary loaded but never activated, a weight change
applied without re-applying the tenant, and a rollback switching canary sessions (counted)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import grpc
import pytest
from cp_support import ACTOR, DEMO_YAML, control_plane, new_version, seed_demo, trust_with
from test_cp_node import cp_node

from kefu.control_plane.canary_store import CanaryFolder, load_totals
from kefu.control_plane.rollouts import RolloutController
from kefu.keys import SigningKey
from kefu.natsserver import NatsServer
from kefu.node.dialog.split import NodeSplit, SessionPin, SplitBoard, config_for, resolve_ref
from kefu.node.dialog.turns import TurnRequest
from kefu.node.serving.admission import RateLimit, RateLimiter
from kefu.rollout import Step, Wave, arm_for
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg

# ------------------------------------------------------------------------------ pure rules

SPLIT = NodeSplit(rollout_id="ro-aaaaaa", salt="s", weight=0.5, canary={"intent": "2"})


def _loaded(_ref: str) -> bool:
    return True


def test_a_canary_session_uses_the_canary_then_keeps_its_version() -> None:
    pin = SessionPin(rollout_id="ro-aaaaaa", arm="canary")
    assert resolve_ref("intent", "intent@1", pin, SPLIT, _loaded) == ("intent@2", False)
    pin.versions["intent"] = "2"
    # Widened, paused, or promoted (config now names @2): the same version, no switch.
    assert resolve_ref("intent", "intent@1", pin, SPLIT, _loaded) == ("intent@2", False)
    assert resolve_ref("intent", "intent@2", pin, None, _loaded) == ("intent@2", False)


def test_a_rollback_switches_a_canary_session_and_says_so() -> None:
    pin = SessionPin(rollout_id="ro-aaaaaa", arm="canary", versions={"intent": "2"})
    assert resolve_ref("intent", "intent@1", pin, None, _loaded) == ("intent@1", True)


def test_a_baseline_session_keeps_its_version_after_a_promote_while_loaded() -> None:
    pin = SessionPin(rollout_id="ro-aaaaaa", arm="baseline", versions={"intent": "1"})
    assert resolve_ref("intent", "intent@2", pin, None, _loaded) == ("intent@1", False)
    assert resolve_ref("intent", "intent@2", pin, None, lambda _r: False) == ("intent@2", True)


def test_a_session_without_a_pin_follows_the_tenant() -> None:
    assert resolve_ref("intent", "intent@1", None, SPLIT, _loaded) == ("intent@1", False)


def test_pin_round_trips_through_its_slot_and_rejects_garbage() -> None:
    pin = SessionPin.new(SPLIT, "session-1")
    assert pin.arm == arm_for("s", "session-1", 0.5)
    pin.versions["intent"] = "2"
    assert SessionPin.from_slot(pin.to_slot()) == pin
    assert SessionPin.from_slot("x") is None and SessionPin.from_slot({"versions": 3}) is None


def test_board_keeps_live_versions_and_counts_arms_until_idle() -> None:
    board = SplitBoard(idle_s=10.0)
    board.note("t", "s1", SessionPin(rollout_id="ro-a", arm="canary", versions={"i": "2"}), 0.0)
    board.note("t", "s2", SessionPin(rollout_id="ro-a", arm="baseline", versions={"i": "1"}), 5.0)
    assert board.live_refs(6.0) == {"i@1", "i@2"}
    assert board.sessions_per_arm("t", "ro-a", 6.0) == {"canary": 1, "baseline": 1}
    assert board.live_refs(12.0) == {"i@1"}  # s1 idle for 12 s > 10 s
    assert board.sessions_per_arm("t", "ro-other", 12.0) == {"canary": 0, "baseline": 0}


# ------------------------------------------------------------------------------ a real node


def _within_binomial_99(hits: int, n: int, p: float) -> bool:
    return abs(hits - n * p) <= 2.576 * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.slow
async def test_a_node_splits_sessions_stickily_through_a_rollout(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    url = nats_server.url
    async with control_plane(url, trust_with(ops_key)) as stack:
        await seed_demo(stack.cp)
        await stack.cp.publish_model(new_version(tmp_path, ops_key, "cp-2"), actor=ACTOR)
        ctl = RolloutController(
            stack.cp, term=lambda: stack.lease.term, confirm=stack.lease.confirm
        )
        async with cp_node(tmp_path, url, ops_key) as (node, agent):
            await agent.wait_for(lambda: "demo-shop" in agent.applied)
            assert node.service is not None and node.runtime is not None and node.registry
            node.service.limiter = RateLimiter(RateLimit(rate=1e6, burst=1e6))
            tenant_before = node.registry.tenants["demo-shop"]
            ro = await stack.cp.start_rollout(
                "demo-shop",
                models={"intent": "demo-shop-intent@cp-2"},
                waves=[Wave(regions=["r1"])],
                steps=[Step(weight=0.3, bake_s=0), Step(weight=0.6, bake_s=3600)],
                actor=ACTOR,
            )

            async def at(weight: float) -> None:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    await ctl.run_once()
                    stack.reconciler.kick()
                    seen = agent.observed.get("demo-shop")
                    if seen and seen.rollout_id == ro.id and seen.canary_weight == weight:
                        return
                    await asyncio.sleep(0.2)
                raise AssertionError(f"node never reached {weight}: {agent.observed}")

            async def turn(text: str, sid: str | None = None) -> tuple[str, str]:
                assert node.service is not None and node.registry is not None
                r = await node.service.converse(
                    node.registry.tenants["demo-shop"], TurnRequest(text=text, session_id=sid)
                )
                return r.session_id, r.model_versions["intent"]

            await at(0.3)
            loaded = {m.ref: m for m in node.runtime.models()}
            assert "demo-shop-intent@cp-2" in loaded
            assert not loaded["demo-shop-intent@cp-2"].active  # loaded, never the default
            first: dict[str, str] = {}
            for i in range(200):
                sid, version = await turn("我的订单什么时候到" if i % 2 else "hello")
                first[sid] = version
            salt = (await stack.cp.get_rollout(ro.id)).salt
            for sid, version in first.items():  # every arm is the stable hash's
                canary = arm_for(salt, sid, 0.3) == "canary"
                assert canary == (version == "demo-shop-intent@cp-2")
            hits = sum(v == "demo-shop-intent@cp-2" for v in first.values())
            assert _within_binomial_99(hits, len(first), 0.3), hits

            # Widen to 60 %: a lightweight update (the tenant object is not rebuilt) and no
            # existing conversation moves.
            tenant_mid = node.registry.tenants["demo-shop"]
            await at(0.6)
            assert node.registry.tenants["demo-shop"] is tenant_mid
            for sid, version in first.items():
                assert (await turn("退货", sid))[1] == version
            later = [await turn("hello") for _ in range(100)]
            assert all(
                (v == "demo-shop-intent@cp-2") == (arm_for(salt, s, 0.6) == "canary")
                for s, v in later
            )
            seen = agent.status().tenants["demo-shop"]
            assert seen.sessions_canary + seen.sessions_baseline == 300

            # The node's telemetry carries each turn's arm; folded into the rollout's totals,
            # sessions per arm are the hash's and the expected canary count is Σ weights.
            canary_now = hits + sum(arm_for(salt, s, 0.6) == "canary" for s, _ in later)
            folder = CanaryFolder(stack.cp.bus)
            deadline = time.monotonic() + 15
            while True:
                await folder.poll_once()
                rows = list((await load_totals(stack.cp.bus, ro.id)).rows.values())
                per_arm = {
                    a: sum(r.sessions_started for r in rows if r.arm == a)
                    for a in ("canary", "baseline")
                }
                if sum(per_arm.values()) >= 300 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.3)
            assert per_arm == {"canary": canary_now, "baseline": 300 - canary_now}
            assert sum(r.turns for r in rows) == 500  # 200 sessions × 2 turns + 100 × 1
            assert sum(r.expected_canary for r in rows) == pytest.approx(200 * 0.3 + 100 * 0.6)
            assert {r.node_id for r in rows} == {agent.options.node_id}

            # Roll back: canary sessions switch to the baseline on their next turn, counted.
            await stack.cp.command_rollout(ro.id, "rollback", actor=ACTOR)
            deadline = time.monotonic() + 10
            while agent.observed["demo-shop"].rollout_id and time.monotonic() < deadline:
                stack.reconciler.kick()
                await asyncio.sleep(0.1)
            assert not agent.observed["demo-shop"].rollout_id
            baseline = next(v for v in first.values() if v != "demo-shop-intent@cp-2")
            for sid in first:
                assert (await turn("hello", sid))[1] == baseline
            assert agent.status().tenants["demo-shop"].switched == hits
            assert tenant_before is not None


@pytest.mark.slow
async def test_rollback_under_load_reaches_the_baseline_fast_with_zero_failed_rpcs(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    url = nats_server.url
    async with control_plane(url, trust_with(ops_key)) as stack:
        api_key = await seed_demo(stack.cp)
        await stack.cp.publish_model(new_version(tmp_path, ops_key, "cp-3"), actor=ACTOR)
        ctl = RolloutController(
            stack.cp, term=lambda: stack.lease.term, confirm=stack.lease.confirm
        )
        async with cp_node(tmp_path, url, ops_key, max_loop_lag_s=60.0) as (node, agent):
            await agent.wait_for(lambda: "demo-shop" in agent.applied)
            assert node.service is not None
            node.service.limiter = RateLimiter(RateLimit(rate=1e6, burst=1e6))
            ro = await stack.cp.start_rollout(
                "demo-shop",
                models={"intent": "demo-shop-intent@cp-3"},
                waves=[Wave(regions=["r1"])],
                steps=[Step(weight=0.5, bake_s=3600)],
                actor=ACTOR,
            )
            deadline = time.monotonic() + 20
            while agent.observed["demo-shop"].rollout_id != ro.id:
                assert time.monotonic() < deadline
                await ctl.run_once()
                stack.reconciler.kick()
                await asyncio.sleep(0.1)
            md = bearer_metadata(api_key)
            failures: list[BaseException] = []
            served: list[tuple[float, str]] = []  # (when the turn began, intent version)
            stop = asyncio.Event()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as ch:
                stub = pbg.KefuNodeStub(ch)

                async def client() -> None:
                    sid = ""
                    while not stop.is_set():
                        began = time.monotonic()
                        try:
                            r = await stub.Converse(
                                pb.ConverseRequest(
                                    channel=pb.CHANNEL_WEB, text="hello", session_id=sid
                                ),
                                metadata=md,
                                timeout=60,  # a loaded CI machine is slow, never failing
                            )
                            served.append((began, r.model_versions["intent"]))
                            sid = "" if len(served) % 3 == 0 else r.session_id
                        except grpc.aio.AioRpcError as exc:
                            failures.append(exc)

                clients = [asyncio.create_task(client()) for _ in range(8)]
                await asyncio.sleep(1.0)
                t0 = time.monotonic()
                await stack.cp.command_rollout(ro.id, "rollback", actor=ACTOR)
                while agent.observed["demo-shop"].rollout_id:
                    assert time.monotonic() - t0 < 120, "rollback never reached the node"
                    await asyncio.sleep(0.02)
                elapsed = time.monotonic() - t0
                await asyncio.sleep(1.0)
                stop.set()
                await asyncio.gather(*clients)
            assert not failures, failures[:3]
            # How fast is measured (printed here, and by benchmarks/staged_rollout_bench.py), not
            # asserted: a slow machine must not fail the test.
            # Turns that began once the node had the rollback: never the canary.
            after = [v for at, v in served if at > t0 + elapsed]
            assert after and all(v != "demo-shop-intent@cp-3" for v in after)
            assert any(v == "demo-shop-intent@cp-3" for at, v in served if at < t0)
            print(f"rollback to baseline on the node in {elapsed:.2f} s")


# ------------------------------------------------------------------------------ config canary

CANARY_GREETING = "Hello from the canary config!"


def test_config_for_keeps_a_canary_session_on_its_config_until_a_rollback() -> None:
    canary_tenant = object()
    split = NodeSplit(
        rollout_id="ro-c", salt="s", weight=0.5, config_version=2, config=canary_tenant
    )
    pin = SessionPin(rollout_id="ro-c", arm="canary")
    assert config_for(pin, split) == (canary_tenant, False) and pin.config_version == 2
    assert SessionPin.from_slot(pin.to_slot()) == pin  # the version is stored with the session
    assert config_for(SessionPin(rollout_id="ro-c", arm="baseline"), split) == (None, False)
    assert config_for(None, split) == (None, False)
    assert config_for(pin, None) == (None, True)  # rolled back: switched to the tenant's own
    other = NodeSplit(rollout_id="ro-c", salt="s", weight=0.5, config_version=3, config=object())
    assert config_for(pin, other) == (None, True)  # its canary config was replaced


@pytest.mark.slow
async def test_a_config_canary_splits_sessions_and_promotes_the_config(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    """A staged config version (a new English greeting) rolled out at 50 %: a canary session's
    turns all run the canary config, a baseline session's the served one; `config put` during
    the rollout moves neither arm; a rollback switches canary sessions (counted); a second
    rollout promoted pins every region to the new config."""
    url = nats_server.url
    async with control_plane(url, trust_with(ops_key)) as stack:
        cp = stack.cp
        await seed_demo(cp)
        staged = DEMO_YAML.replace(
            "en: Hello and welcome to Demo Shop! I'm the virtual assistant.",
            f"en: {CANARY_GREETING}",
        )
        assert staged != DEMO_YAML
        v2 = await cp.put_config("demo-shop", staged, actor=ACTOR, staged=True)
        assert (await cp.get_tenant("demo-shop")).current_config == 1  # staged: not current
        ctl = RolloutController(cp, term=lambda: stack.lease.term, confirm=stack.lease.confirm)
        async with cp_node(tmp_path, url, ops_key) as (node, agent):
            await agent.wait_for(lambda: "demo-shop" in agent.applied)
            assert node.service is not None and node.registry is not None
            node.service.limiter = RateLimiter(RateLimit(rate=1e6, burst=1e6))
            ro = await cp.start_rollout(
                "demo-shop",
                models={},
                config_version=v2.version,
                waves=[Wave(regions=["r1"])],
                steps=[Step(weight=0.5, bake_s=3600)],
                actor=ACTOR,
            )
            assert ro.target.config_version == v2.version
            assert ro.baseline["r1"].config_version == 1

            async def until(check: object) -> None:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    await ctl.run_once()
                    stack.reconciler.kick()
                    if check():  # type: ignore[operator]
                        return
                    await asyncio.sleep(0.2)
                raise AssertionError(f"never converged: {agent.observed}")

            await until(
                lambda: (
                    (seen := agent.observed.get("demo-shop")) is not None
                    and seen.rollout_id == ro.id
                    and seen.canary_weight == 0.5
                )
            )

            async def turn(text: str, sid: str | None = None) -> tuple[str, str]:
                assert node.service is not None and node.registry is not None
                r = await node.service.converse(
                    node.registry.tenants["demo-shop"], TurnRequest(text=text, session_id=sid)
                )
                return r.session_id, r.reply

            salt = (await cp.get_rollout(ro.id)).salt
            arms: dict[str, bool] = {}
            for _ in range(40):
                sid, text = await turn("hello")
                arms[sid] = CANARY_GREETING in text
                assert arms[sid] == (arm_for(salt, sid, 0.5) == "canary"), (sid, text)
            assert 0 < sum(arms.values()) < len(arms)
            # The node's Prometheus metrics count the turns per rollout arm as well.
            assert node.metrics is not None
            per_arm = dict.fromkeys(("canary", "baseline"), 0.0)
            for family in node.metrics.registry.collect():
                for sample in family.samples:
                    if sample.name == "kefu_rollout_turns_total":
                        assert sample.labels["rollout"] == ro.id
                        per_arm[sample.labels["arm"]] += sample.value
            canaries = sum(arms.values())
            assert per_arm == {"canary": canaries, "baseline": len(arms) - canaries}
            # A new current config meanwhile moves neither arm: the rollout holds the baseline.
            await cp.put_config("demo-shop", DEMO_YAML.replace("name:", "name: ", 1), actor=ACTOR)
            stack.reconciler.kick()
            await asyncio.sleep(1.0)
            for sid, canary in list(arms.items())[:10]:
                _, text = await turn("hello", sid)
                assert (CANARY_GREETING in text) == canary, sid
            await cp.command_rollout(ro.id, "rollback", actor=ACTOR)
            await until(lambda: (s := agent.observed.get("demo-shop")) and not s.rollout_id)
            for sid in arms:
                _, text = await turn("hello", sid)
                assert CANARY_GREETING not in text, sid
            assert node.splits.switched.get("demo-shop", 0) == sum(arms.values())

            # Rolled out again and promoted: every region is pinned to the staged version.
            ro2 = await cp.start_rollout(
                "demo-shop",
                models={},
                config_version=v2.version,
                waves=[Wave(regions=["r1"])],
                steps=[Step(weight=0.5, bake_s=3600)],
                actor=ACTOR,
            )
            await until(lambda: (s := agent.observed.get("demo-shop")) and s.rollout_id == ro2.id)
            await cp.command_rollout(ro2.id, "promote", actor=ACTOR)
            await until(
                lambda: (
                    (s := agent.observed.get("demo-shop")) is not None
                    and s.config_version == v2.version
                    and not s.rollout_id
                )
            )
            (a,) = await cp.list_assignments("demo-shop")
            assert a.config_version == v2.version
            _, text = await turn("hello")
            assert CANARY_GREETING in text
