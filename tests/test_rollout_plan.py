"""The rollout document and the pure planner: validation, baseline capture, waves, steps, bake
time, convergence, capability exclusion, commands, promote / rollback / abort finalisation,
and the sticky split's hash."""

from __future__ import annotations

import math

import pytest

from kefu.control_plane.rollout_plan import (
    NodeFacts,
    ReleaseActive,
    RolloutError,
    SetModels,
    apply_command,
    plan,
    start_rollout,
)
from kefu.rollout import (
    CanarySplit,
    Rollout,
    Step,
    Wave,
    arm_for,
    parse_weight,
    split_point,
)
from kefu.wire import Assignment, WireError

OLD = "intent-zh@1"
NEW = "intent-zh@2"


def _assignments(*regions: str) -> list[Assignment]:
    return [
        Assignment(tenant="shop", region=r, models={"intent": OLD}, config_version=3)
        for r in regions
    ]


def _start(**kw: object) -> Rollout:
    args: dict[str, object] = {
        "tenant": "shop",
        "target": {"intent": NEW},
        "waves": [Wave(regions=["east"], node_share=0.5), Wave(regions=["west"])],
        "steps": [Step(weight=0.1, bake_s=60), Step(weight=1.0, bake_s=60)],
        "assignments": _assignments("east", "west"),
        "actor": "alice",
        "now": 1000.0,
    }
    args.update(kw)
    return start_rollout(**args)  # type: ignore[arg-type]


def _nodes(ro: Rollout | None = None, *, capable: bool = True, **weights: float) -> list[NodeFacts]:
    """Two nodes per region; ``weights`` names what a node reports for ``ro``."""
    out = []
    for region in ("east", "west"):
        for i in (1, 2):
            node = f"{region}-{i}"
            w = weights.get(node.replace("-", "_"))
            out.append(
                NodeFacts(
                    node_id=node,
                    region=region,
                    capable=capable or node != "east-1",
                    rollout_id=ro.id if ro is not None and w is not None else "",
                    weight=w or 0.0,
                )
            )
    return out


def _converge(ro: Rollout) -> list[NodeFacts]:
    """Every member reports the weight it should run."""
    want = {m.node_id: ro.node_weight(m) for m in ro.members}
    return [
        NodeFacts(
            node_id=n.node_id,
            region=n.region,
            capable=True,
            rollout_id=ro.id if n.node_id in want else "",
            weight=want.get(n.node_id, 0.0),
        )
        for n in _nodes()
    ]


# ------------------------------------------------------------------------------ the document


def test_start_captures_the_baseline_per_region() -> None:
    ro = _start()
    assert ro.phase == "pending" and ro.created_by == "alice"
    assert ro.baseline["east"].models == {"intent": OLD}
    assert ro.baseline["west"].config_version == 3
    assert ro.id.startswith("ro-") and len(ro.salt) == 16


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"target": {"intent": "intent-zh"}}, "version"),  # a bare name is not concrete
        ({"target": {"mood": NEW}}, "slot"),
        ({"steps": [Step(weight=0.5), Step(weight=0.1)]}, "increase"),
        ({"waves": [Wave(regions=["east"]), Wave(regions=["east"])]}, "no more of region"),
        ({"waves": []}, "waves"),
        ({"assignments": _assignments("east")}, "west"),
        ({"target": {"intent": OLD}}, "nothing to roll out"),
    ],
)
def test_start_refuses_a_bad_rollout_naming_why(kw: dict[str, object], words: str) -> None:
    with pytest.raises(RolloutError, match=words):
        _start(**kw)


def test_weights_and_waves_are_validated() -> None:
    with pytest.raises(ValueError):
        Step(weight=0.0)
    with pytest.raises(ValueError):
        Step(weight=1.5)
    with pytest.raises(ValueError):
        Wave(regions=["East!"])
    with pytest.raises(ValueError):
        Wave(regions=["east"], node_share=0.0)
    with pytest.raises(ValueError):
        Rollout.model_validate({**_start().model_dump(), "unknown": 1})
    assert parse_weight("5%") == pytest.approx(0.05)
    assert parse_weight("25") == pytest.approx(0.25)
    assert parse_weight("0.5") == pytest.approx(0.5)
    for bad in ("0", "101", "x", "-3%"):
        with pytest.raises(WireError):
            parse_weight(bad)


def test_the_document_round_trips_through_json() -> None:
    ro = _start()
    assert Rollout.model_validate_json(ro.model_dump_json()) == ro


# ------------------------------------------------------------------------------ the split


def test_split_is_stable_and_widening_never_moves_a_session() -> None:
    sessions = [f"s{i}" for i in range(2000)]
    at_5 = {s for s in sessions if arm_for("salt", s, 0.05) == "canary"}
    at_25 = {s for s in sessions if arm_for("salt", s, 0.25) == "canary"}
    assert at_5 <= at_25  # widening only adds sessions to the canary
    assert [arm_for("salt", s, 0.25) for s in sessions] == [
        arm_for("salt", s, 0.25) for s in sessions
    ]
    assert all(0.0 <= split_point("salt", s) < 1.0 for s in sessions)
    # Another salt is another, independent split.
    other = {s for s in sessions if arm_for("pepper", s, 0.25) == "canary"}
    assert other != at_25


def test_split_share_is_within_the_binomial_interval() -> None:
    n, p = 4000, 0.25
    hits = sum(arm_for("ro-salt", f"session-{i}", p) == "canary" for i in range(n))
    sd = math.sqrt(n * p * (1 - p))
    assert abs(hits - n * p) < 2.576 * sd


def test_canary_split_weight_for_a_node_not_listed_is_zero() -> None:
    split = CanarySplit(rollout_id="ro-abcdef", salt="x", weights={"east-1": 0.1})
    assert split.weight_for("east-1") == 0.1 and split.weight_for("east-2") == 0.0


# ------------------------------------------------------------------------------ the planner


def test_pending_begins_wave_one_on_a_share_of_the_capable_nodes() -> None:
    p = plan(_start(), _nodes(), 1010.0)
    ro = p.next
    assert ro.phase == "running" and ro.wave == 0 and ro.step == 0
    assert [m.node_id for m in ro.members] == ["east-1"]  # 50 % of 2 east nodes
    assert ro.weights("east") == {"east-1": 0.1} and ro.weights("west") == {}
    assert "wave 1/2 begins in east" in p.reasons[-1]
    assert not p.actions


def test_a_node_without_the_capability_is_kept_out_and_reported() -> None:
    p = plan(_start(), _nodes(capable=False), 1010.0)
    assert [m.node_id for m in p.next.members] == ["east-2"]
    assert p.next.excluded_nodes == ["east-1"]
    assert any("east-1" in r and "capability" in r for r in p.reasons)


def test_a_wave_without_a_capable_node_pauses_and_resume_tries_again() -> None:
    nodes = [NodeFacts(node_id="east-1", region="east", capable=False)]
    p = plan(_start(), nodes, 1010.0)
    assert p.next.phase == "paused" and "no capable node" in p.next.reason
    resumed = apply_command(p.next, "resume", actor="bob", now=1020.0)
    again = plan(resumed, _nodes(), 1030.0).next
    assert again.phase == "running" and [m.node_id for m in again.members] == ["east-1"]


def test_no_step_advances_before_every_member_serves_it() -> None:
    ro = plan(_start(), _nodes(), 1010.0).next
    # east-1 has not applied the split yet: nothing changes, nothing is written.
    p = plan(ro, _nodes(), 5000.0)
    assert p.next == ro and not p.changed
    # east-1 reports a different weight: still waiting.
    p = plan(ro, _nodes(ro, east_1=0.05), 5000.0)
    assert p.next == ro and not p.changed


def test_bake_time_counts_from_convergence_then_the_step_widens() -> None:
    ro = plan(_start(), _nodes(), 1010.0).next
    p = plan(ro, _converge(ro), 1020.0)
    ro = p.next
    assert ro.converged_at == 1020.0 and "serving on 1 node" in p.reasons[0]
    assert not plan(ro, _converge(ro), 1079.0).changed  # 59 s < 60 s bake
    p = plan(ro, _converge(ro), 1080.0)
    ro = p.next
    assert ro.step == 1 and ro.weight == 1.0 and ro.converged_at == 0.0
    assert "widening to 100%" in p.reasons[0]


def test_a_member_falling_behind_restarts_the_bake() -> None:
    ro = plan(_start(), _nodes(), 1010.0).next
    ro = plan(ro, _converge(ro), 1020.0).next
    p = plan(ro, _nodes(), 1050.0)  # east-1 restarted and reports nothing
    assert p.next.converged_at == 0.0 and "bake restarts" in p.reasons[0]


def test_full_run_through_waves_then_promote_writes_the_target_everywhere() -> None:
    ro = _start()
    now = 1000.0
    seen_waves = []
    for _ in range(20):
        now += 61
        p = plan(ro, _converge(ro), now)
        ro = p.next
        seen_waves.append((ro.wave, ro.step))
        if ro.phase == "promoted":
            break
    assert ro.phase == "promoted" and ro.finalized
    assert {a.region for a in p.actions if isinstance(a, SetModels)} == {"east", "west"}
    assert all(a.models == {"intent": NEW} for a in p.actions if isinstance(a, SetModels))
    assert ReleaseActive(tenant="shop") in p.actions
    # Wave 2 took both west nodes; wave 1's east-1 held the last step's weight meanwhile.
    assert sorted(m.node_id for m in ro.members) == ["east-1", "west-1", "west-2"]
    assert (1, 0) in seen_waves
    assert "promoting" in p.reasons[0]


def test_a_region_returns_in_a_later_wave_with_a_larger_share() -> None:
    ro = _start(waves=[Wave(regions=["east"], node_share=0.5), Wave(regions=["east", "west"])])
    ro = plan(ro, _nodes(), 1000.0).next
    assert [m.node_id for m in ro.members] == ["east-1"]
    for now in (1001.0, 1062.0, 1063.0, 1124.0):
        ro = plan(ro, _converge(ro), now).next
    assert ro.wave == 1
    assert sorted((m.node_id, m.wave) for m in ro.members) == [
        ("east-1", 0),
        ("east-2", 1),
        ("west-1", 1),
        ("west-2", 1),
    ]
    assert ro.regions == ["east", "west"]


def test_earlier_waves_hold_the_last_weight_while_the_next_wave_starts_small() -> None:
    ro = plan(_start(), _nodes(), 1000.0).next
    for now in (1001.0, 1062.0, 1063.0, 1124.0):
        ro = plan(ro, _converge(ro), now).next
    assert ro.wave == 1 and ro.step == 0
    assert ro.weights("east") == {"east-1": 1.0}
    assert ro.weights("west") == {"west-1": 0.1, "west-2": 0.1}


def test_pause_freezes_and_resume_restarts_the_bake() -> None:
    ro = plan(_start(), _nodes(), 1010.0).next
    ro = plan(ro, _converge(ro), 1020.0).next
    paused = apply_command(ro, "pause", actor="bob", now=1030.0, why="latency")
    assert paused.phase == "paused" and paused.updated_by == "bob" and "latency" in paused.reason
    assert not plan(paused, _converge(paused), 9999.0).changed
    with pytest.raises(RolloutError, match="already paused"):
        apply_command(paused, "pause", actor="bob", now=1031.0)
    resumed = apply_command(paused, "resume", actor="bob", now=1040.0)
    assert resumed.phase == "running" and resumed.converged_at == 0.0
    with pytest.raises(RolloutError, match="not paused"):
        apply_command(resumed, "resume", actor="bob", now=1041.0)


def test_rollback_writes_the_captured_baseline_and_releases_the_tenant() -> None:
    ro = plan(_start(), _nodes(), 1010.0).next
    rolled = apply_command(ro, "rollback", actor="bob", now=1030.0)
    assert rolled.phase == "rolled_back" and not rolled.finalized
    assert rolled.weights("east") == {"east-1": 0.0}  # no node runs the canary any more
    p = plan(rolled, _converge(rolled), 1031.0)
    assert p.next.finalized
    sets = [a for a in p.actions if isinstance(a, SetModels)]
    assert {(a.region, a.models["intent"]) for a in sets} == {("east", OLD), ("west", OLD)}
    assert ReleaseActive(tenant="shop") in p.actions
    assert not plan(p.next, [], 1032.0).changed  # finalized: nothing more to do
    with pytest.raises(RolloutError, match="already rolled_back"):
        apply_command(p.next, "resume", actor="bob", now=1033.0)


def test_manual_promote_skips_to_the_end() -> None:
    ro = plan(_start(), _nodes(), 1010.0).next
    promoted = apply_command(ro, "promote", actor="bob", now=1020.0)
    assert promoted.phase == "promoted" and promoted.wave == 1 and promoted.step == 1
    p = plan(promoted, [], 1021.0)
    assert {a.region for a in p.actions if isinstance(a, SetModels)} == {"east", "west"}


def test_abort_releases_without_touching_assignments() -> None:
    ro = apply_command(_start(), "abort", actor="bob", now=1001.0)
    p = plan(ro, [], 1002.0)
    assert p.actions == [ReleaseActive(tenant="shop")] and "aborted" in p.reasons[0]


def test_unknown_command_is_refused() -> None:
    with pytest.raises(RolloutError, match="unknown command"):
        apply_command(_start(), "explode", actor="bob", now=1.0)


def test_the_same_inputs_give_the_same_plan() -> None:
    ro = plan(_start(rollout_id="ro-fixed01"), _nodes(), 1010.0).next
    assert plan(ro, _converge(ro), 1100.0) == plan(ro, _converge(ro), 1100.0)


def test_a_config_target_is_checked_and_held_on_the_captured_baseline() -> None:
    from kefu.config import parse_tenant_config
    from kefu.control_plane.rollout_plan import check_config_target
    from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG

    demo = DEMO_TENANT_CONFIG.read_text(encoding="utf-8")
    assigned = [
        Assignment(tenant="demo-shop", region=r, models={"intent": "demo-shop-intent@1"})
        for r in ("east", "west")
    ]
    ro = _start(
        tenant="demo-shop",
        target={},
        target_config=5,
        current_config=4,
        assignments=assigned,
    )
    # Regions following the current config are captured at the version current at start.
    assert {r: b.config_version for r, b in ro.baseline.items()} == {"east": 4, "west": 4}
    check_config_target(parse_tenant_config(demo), ro, assigned)  # the same model names: fine
    renamed = demo.replace("name: demo-shop-intent", "name: other-intent", 1)
    assert renamed != demo
    with pytest.raises(RolloutError, match=r"models\.intent names 'other-intent'"):
        check_config_target(parse_tenant_config(renamed), ro, assigned)
    pinned = [
        a.model_copy(update={"scenario_models": {"gone": {"intent": "x@1"}}}) for a in assigned
    ]
    with pytest.raises(RolloutError, match="no scenario 'gone'"):
        check_config_target(parse_tenant_config(demo), ro, pinned)
    with pytest.raises(RolloutError, match="nothing to roll out"):
        _start(
            tenant="demo-shop", target={}, target_config=4, current_config=4, assignments=assigned
        )
    # Promote pins the config; rollback restores the captured version.
    promoted = apply_command(ro, "promote", actor="alice", now=1001.0)
    actions = plan(promoted, [], 1002.0).actions
    assert {a.config_version for a in actions if isinstance(a, SetModels)} == {5}
    rolled = apply_command(ro, "rollback", actor="alice", now=1001.0)
    actions = plan(rolled, [], 1002.0).actions
    assert {a.config_version for a in actions if isinstance(a, SetModels)} == {4}
