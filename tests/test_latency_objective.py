"""A scenario's response-time objective (`latency_objective_ms` in the tenant YAML): validated
with its line, carried by every turn served in that scenario, and used by the node's
telemetry to count slow turns for the canary comparison instead of the node-wide 1,000 ms.
Whole turns through the real service (demo tenant YAML, SQLite, the shipped ONNX models)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kefu.config import load_tenant_config
from kefu.errors import ConfigError
from kefu.models.store import ModelStore, trust_for
from kefu.node.agent.cp_link import turn_sample
from kefu.node.agent.telemetry import SLOW_TURN_MS, TelemetryRecorder, TurnSample
from kefu.node.dialog.conversation import ConversationService
from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG, TenantRegistry
from kefu.node.dialog.turns import TurnRequest
from kefu.node.nlu.inference import BatchingModelRuntime
from kefu.node.serving.admission import AdmissionController
from kefu.node.sessions.sqlite_store import sqlite_store_opener

LOGISTICS = "    kb_scopes: [logistics]\n"


def _demo_with(tmp_path: Path, objective: str) -> Path:
    text = DEMO_TENANT_CONFIG.read_text(encoding="utf-8")
    changed = text.replace(LOGISTICS, LOGISTICS + f"    latency_objective_ms: {objective}\n", 1)
    assert changed != text
    path = tmp_path / "demo-shop.yaml"
    path.write_text(changed, encoding="utf-8")
    return path


def _line_of(path: Path, needle: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


@pytest.mark.parametrize("bad", ["0", "-5", "fast", "120000"])
def test_a_bad_objective_is_refused_at_its_line(tmp_path: Path, bad: str) -> None:
    path = _demo_with(tmp_path, bad)
    with pytest.raises(ConfigError) as info:
        load_tenant_config(path)
    line = _line_of(path, "latency_objective_ms")
    assert f"demo-shop.yaml:{line}:" in str(info.value)
    assert "latency_objective_ms" in str(info.value)


def test_the_recorder_counts_slow_turns_against_the_scenarios_objective() -> None:
    rec = TelemetryRecorder(node_id="n1", region="r1")

    def turn(ms: float, objective: float) -> None:
        rec.record_turn(
            TurnSample(
                tenant="t", scenario="s", model_version="m@1", latency_ms=ms, session_id="s1",
                rollout_id="ro-1", arm="canary", latency_objective_ms=objective,
            )
        )  # fmt: skip

    turn(300.0, 250.0)  # over its scenario's 250 ms: slow
    turn(300.0, 0.0)  # no objective: the node-wide 1,000 ms, not slow
    turn(SLOW_TURN_MS + 1, 0.0)  # slow by the default
    turn(SLOW_TURN_MS + 1, 5000.0)  # a lenient scenario: not slow
    batch = rec.close_window()
    assert batch is not None
    (arm,) = batch.arms
    assert arm.turns == 4 and arm.slow_turns == 2


async def test_turns_in_a_scenario_carry_its_objective_into_telemetry(tmp_path: Path) -> None:
    config = _demo_with(tmp_path, "0.001")  # every logistics turn is over it
    store = ModelStore(tmp_path / "models", trust_for(tmp_path))
    store.seed_shipped()
    runtime = BatchingModelRuntime(trust=store.trust, store=store)
    for name in ("demo-shop-intent", "sentiment"):
        await runtime.load(name, name)
    registry = await TenantRegistry.open(tmp_path, [config], open_store=sqlite_store_opener())
    try:
        svc = ConversationService(
            registry=registry, runtime=runtime, admission=AdmissionController(8, 64, 1.0)
        )
        demo = registry.tenants["demo-shop"]
        logistics = await svc.converse(demo, TurnRequest(text="我的快递到哪了"))
        other = await svc.converse(demo, TurnRequest(text="how do i get a VAT invoice?"))
    finally:
        await registry.close()
        await runtime.close()
    assert logistics.scenario == "logistics" and logistics.latency_objective_ms == 0.001
    assert other.scenario != "logistics" and other.latency_objective_ms == 0.0

    rec = TelemetryRecorder(node_id="n1", region="r1")
    for r in (logistics, other):
        sample = turn_sample("demo-shop", r)
        assert sample.latency_ms < SLOW_TURN_MS  # fast by the node-wide objective
        rec.record_turn(dataclasses.replace(sample, rollout_id="ro-1", arm="canary"))
    batch = rec.close_window()
    assert batch is not None
    (arm,) = batch.arms
    assert arm.turns == 2 and arm.slow_turns == 1  # only the logistics turn
