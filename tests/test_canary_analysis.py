"""The canary statistics and analysis (pure): known answers computed by hand or with scipy."""

from __future__ import annotations

import math
import random

import pytest

from kefu.canary_stats import ArmCounts, SessionTallies, Tally
from kefu.control_plane.canary import (
    DEFAULT_POLICIES,
    CanaryPolicy,
    analyse,
    chi2_sf_1,
    confidence_sequence,
    msprt_p,
    srm,
)


def _tally(clusters: list[tuple[float, float]]) -> Tally:
    t = Tally()
    for y, n in clusters:
        t.add_step(0, 0, y, n)
    return t


def test_clustered_variance_matches_the_formula_by_hand() -> None:
    # Three conversations: 1/2, 0/1, 3/3 → p = 4/6; residuals 1-4/3, -2/3, 1 (= 3 - 2)
    t = _tally([(1, 2), (0, 1), (3, 3)])
    p = 4 / 6
    ss = (1 - p * 2) ** 2 + (0 - p * 1) ** 2 + (3 - p * 3) ** 2
    assert t.k == 3 and t.rate == pytest.approx(p)
    assert t.variance() == pytest.approx(3 / 2 * ss / 36)


def test_single_trial_clusters_give_the_binomial_variance() -> None:
    # n_i = 1 for all: the clustered variance is K/(K-1) · p(1-p)/K
    t = _tally([(1, 1)] * 30 + [(0, 1)] * 70)
    assert t.variance() == pytest.approx(100 / 99 * 0.3 * 0.7 / 100)


def test_session_tallies_telescope_to_each_conversations_final_square() -> None:
    rng = random.Random(7)
    into = ArmCounts(tenant="t", rollout_id="ro-abcdef", arm="canary")
    windows = [ArmCounts(tenant="t", rollout_id="ro-abcdef", arm="canary") for _ in range(4)]
    st = SessionTallies()
    final: dict[str, list[int]] = {}
    for _ in range(500):
        sid = f"s{rng.randrange(40)}"
        w = rng.choice(windows)  # increments land in arbitrary windows
        fb = rng.random() < 0.3
        st.turn(w, sid, fallback=fb, slow=False, handoff=False)
        y, n = final.setdefault(sid, [0, 0])
        final[sid] = [y + fb, n + 1]
    for w in windows:
        into.merge(w)
    direct = _tally([(y, n) for y, n in final.values()])
    got = into.tally("fallback")
    for name in ("k", "y", "n", "yy", "yn", "nn"):
        assert getattr(got, name) == pytest.approx(getattr(direct, name)), name
    assert into.tally("handoff").n == len(final)  # one hand-off trial per conversation


def test_a_changed_rating_counts_once_and_moves_the_histogram() -> None:
    a = ArmCounts(tenant="t", rollout_id="ro-abcdef", arm="canary")
    st = SessionTallies()
    st.rating(a, "s1", 1)
    st.rating(a, "s1", 5)
    st.rating(a, "s2", 2)
    assert a.rated_sessions == 2
    assert a.ratings == [0, 1, 0, 0, 1]
    low = a.tally("low_rating")
    assert (low.k, low.y, low.n) == (2, 1, 2)


def test_chi2_sf_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for x in (0.0, 0.5, 3.84, 10.83, 25.0):
        assert chi2_sf_1(x) == pytest.approx(stats.chi2.sf(x, 1), rel=1e-9, abs=1e-15)


def test_srm_known_answer() -> None:
    # 450 canary / 550 baseline at 50 %: χ² = 50²/500 · 2 = 10, p = 0.00157
    s = srm("overall", 450, 550, 500.0, 0.001)
    assert s.chi2 == pytest.approx(10.0)
    assert s.chi2_p == pytest.approx(0.0015654, rel=1e-4)
    # the decision is the always-valid p of the share: Δ = -0.05, V = .25/1000, τ = 0.05
    v, t2 = 0.25 / 1000, 0.05**2
    lam = math.sqrt(v / (v + t2)) * math.exp(t2 * 0.05**2 / (2 * v * (v + t2)))
    assert s.p_value == pytest.approx(1 / lam)
    assert s.p_value > s.chi2_p and not s.mismatch  # the price of checking continuously
    assert srm("overall", 400, 600, 500.0, 0.001).mismatch


def test_msprt_p_and_interval_agree() -> None:
    var, tau2, alpha = 0.0004, 0.0009, 0.01
    r = confidence_sequence(0.0, var, tau2, alpha)
    # at |Δ̂| = r the likelihood ratio is exactly 1/α, so the p-value is α
    assert msprt_p(r, var, tau2) == pytest.approx(alpha)
    assert msprt_p(-r, var, tau2) == pytest.approx(alpha)
    # by hand: Λ(0) at Δ̂ = 0.05
    lam = math.sqrt(var / (var + tau2)) * math.exp(tau2 * 0.05**2 / (2 * var * (var + tau2)))
    assert msprt_p(0.05, var, tau2) == pytest.approx(1 / lam)
    assert msprt_p(0.0, var, tau2) == 1.0


def _arm(
    arm: str,
    sessions: int,
    turns_per: int,
    bad: dict[str, float],
    rng: random.Random,
    node: str = "n1",
    weight: float = 0.5,
) -> ArmCounts:
    a = ArmCounts(tenant="t", rollout_id="ro-abcdef", arm=arm, node_id=node)
    st = SessionTallies()
    for i in range(sessions):
        sid = f"{arm}-{node}-{i}"
        a.sessions_started += 1
        a.expected_canary += weight
        for _ in range(turns_per):
            if rng.random() < bad.get("error", 0.0):
                a.errors += 1
                st.error(a, sid)
                continue
            a.turns += 1
            st.turn(
                a,
                sid,
                fallback=rng.random() < bad.get("fallback", 0.05),
                slow=False,
                handoff=rng.random() < bad.get("handoff", 0.02),
            )
    return a


def test_identical_arms_advance_after_the_bake() -> None:
    rng = random.Random(1)
    rows = [_arm("canary", 800, 4, {}, rng), _arm("baseline", 800, 4, {}, rng)]
    pol = CanaryPolicy()
    assert analyse(rows, pol, step_age_s=10, bake_s=300).action == "continue"
    v = analyse(rows, pol, step_age_s=301, bake_s=300)
    assert v.action == "advance", v.reasons
    assert all(not m.worse for m in v.metrics)


def test_a_much_worse_fallback_rate_rolls_back_with_evidence() -> None:
    rng = random.Random(2)
    rows = [_arm("canary", 400, 4, {"fallback": 0.25}, rng), _arm("baseline", 400, 4, {}, rng)]
    v = analyse(rows, CanaryPolicy(), step_age_s=10, bake_s=300)
    assert v.action == "rollback"
    fb = next(m for m in v.metrics if m.metric == "fallback")
    assert fb.worse and fb.lower > 0 and fb.p_value < 0.01 / 6
    assert fb.canary_trials == 1600 and "fallback" in v.reasons[0]


def test_hard_stop_on_the_canary_error_rate() -> None:
    c = ArmCounts(tenant="t", rollout_id="ro-abcdef", arm="canary")
    st = SessionTallies()
    for i in range(50):
        (
            st.error
            if i % 10 == 0
            else lambda a, s: st.turn(a, s, fallback=False, slow=False, handoff=False)
        )(c, f"s{i}")
    b = ArmCounts(tenant="t", rollout_id="ro-abcdef", arm="baseline")
    v = analyse([c, b], CanaryPolicy(), step_age_s=0, bake_s=300)
    assert v.action == "rollback" and "hard stop" in v.reasons[0]
    # 49 turns are not enough for the hard stop
    c2 = ArmCounts(tenant="t", rollout_id="ro-abcdef", arm="canary")
    for i in range(49):
        SessionTallies().error(c2, f"s{i}")
    assert analyse([c2, b], CanaryPolicy(), step_age_s=0, bake_s=300).action == "continue"


def test_no_hard_stop_when_the_baseline_fails_as_often() -> None:
    """Node-wide shedding under overload fails both arms alike: not the canary's fault."""
    arms = []
    for arm, every in (("canary", 10), ("baseline", 12)):
        a = ArmCounts(tenant="t", rollout_id="ro-abcdef", arm=arm)
        st = SessionTallies()
        for i in range(600):
            if i % every == 0:
                st.error(a, f"s{i}")
            else:
                st.turn(a, f"s{i}", fallback=False, slow=False, handoff=False)
        arms.append(a)
    v = analyse(arms, CanaryPolicy(), step_age_s=0, bake_s=300)
    assert not any("hard stop" in r for r in v.reasons), v.reasons


def test_node_refusing_the_canary_rolls_back() -> None:
    v = analyse([], CanaryPolicy(), step_age_s=0, bake_s=0, refusing_nodes=["edge-1"])
    assert v.action == "rollback" and "edge-1" in v.reasons[0]


def test_sample_ratio_mismatch_on_one_node_pauses() -> None:
    rng = random.Random(3)
    rows = [
        _arm("canary", 300, 2, {}, rng, node="n1"),
        _arm("baseline", 300, 2, {}, rng, node="n1"),
        _arm("canary", 100, 2, {}, rng, node="n2"),  # n2 sends 1/4 where 1/2 is expected
        _arm("baseline", 300, 2, {}, rng, node="n2"),
    ]
    v = analyse(rows, CanaryPolicy(), step_age_s=1000, bake_s=300)
    assert v.action == "pause"
    assert [s.scope for s in v.srm if s.mismatch] == ["overall", "n2"] or any(
        s.scope == "n2" and s.mismatch for s in v.srm
    )


def test_inconclusive_step_pauses_at_its_time_limit() -> None:
    rng = random.Random(4)
    rows = [_arm("canary", 30, 2, {}, rng), _arm("baseline", 30, 2, {}, rng)]
    pol = CanaryPolicy(step_limit_s=3600)
    assert analyse(rows, pol, step_age_s=3599, bake_s=300).action == "continue"
    v = analyse(rows, pol, step_age_s=3600, bake_s=300)
    assert v.action == "pause" and "inconclusive" in v.reasons[0]


def test_policies_validate_metric_names_and_tolerances() -> None:
    assert set(DEFAULT_POLICIES) >= {"default", "low-traffic"}
    with pytest.raises(ValueError, match="unknown metric"):
        CanaryPolicy(tolerance={"speed": 0.1})
    with pytest.raises(ValueError, match="tolerance"):
        CanaryPolicy(tolerance={"error": 1.5})
