"""Pure simulation of the canary analysis (kefu/control_plane/canary.py) on synthetic counts.

No servers: sessions are drawn with numpy at a set rate, split by the step's weight, summed into
the same per-arm tallies a node sends, and :func:`analyse` is asked every ``--check-s``
seconds (the telemetry interval) — checked as often as the real controller does, so the
false-alarm rate measured is the one under continuous monitoring. Steps 5 % → 25 % → 50 %,
``--bake`` seconds each; a step widens only on ``advance``; the run ends promoted, rolled back
or paused (inconclusive at the policy's step limit, or sample-ratio mismatch).

    .venv/bin/python benchmarks/canary_sim.py            # all scenarios, 1,000 runs each
    .venv/bin/python benchmarks/canary_sim.py --runs 200 --scenario aa

Scenarios: ``aa`` (canary = baseline) at 1 and 10 sessions/s → false rollback rate; ``intent``
(intent accuracy 85 % → 80 %, i.e. wrong among corrected turns 15 % → 20 %) and ``handoff``
(hand-off per session 10 % → 20 %) → detection power and sessions until rollback; ``srm`` (the
canary arm receives 0.9 × its nominal share, 45:50, at a 10 % weight: 9 % instead of 10 %) →
the sample-ratio check alone, repeated every pass up to 200,000 sessions → share detected and
sessions until detected. *sessions for 80 %* is the number of sessions (canary sessions) by
which 80 % of all runs had reached the scenario's expected end — the samples needed for 80 %
power (for ``aa``: 80 % promoted).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from kefu.canary_stats import ArmCounts, Tally
from kefu.control_plane.canary import CanaryPolicy, analyse, srm

STEPS = (0.05, 0.25, 0.5)


@dataclass(frozen=True)
class Traffic:
    """Per-session behaviour of one arm (customer-service rates)."""

    turns_mean: float = 3.0  # 1 + Poisson(2)
    error: float = 0.005  # per turn
    fallback: float = 0.08  # per turn
    slow: float = 0.03  # per turn
    handoff: float = 0.10  # per session
    rated: float = 0.20  # share of sessions rated
    low_rating: float = 0.15  # ≤ 2★ among rated
    corrected: float = 0.25  # share of sessions with a corrected turn
    wrong: float = 0.15  # wrong intent among corrections (accuracy 85 %)


@dataclass
class Scenario:
    name: str
    rate: float  # sessions per second
    canary: Traffic = field(default_factory=Traffic)
    baseline: Traffic = field(default_factory=Traffic)
    share_factor: float = 1.0  # canary gets this × its nominal share (SRM)
    weights: tuple[float, ...] = STEPS
    #: SRM scenario: only the sample-ratio check, at one weight, until it fires or this many
    #: sessions have started.
    srm_only_until: int = 0


def _add(t: Tally, y: np.ndarray, n: np.ndarray) -> None:
    keep = n > 0
    y, n = y[keep].astype(float), n[keep].astype(float)
    t.k += int(keep.sum())
    t.y += float(y.sum())
    t.n += float(n.sum())
    t.yy += float((y * y).sum())
    t.yn += float((y * n).sum())
    t.nn += float((n * n).sum())


def _sessions(rng: np.random.Generator, c: ArmCounts, k: int, tr: Traffic, w: float) -> None:
    if k == 0:
        return
    turns = 1 + rng.poisson(tr.turns_mean - 1, k)
    c.sessions_started += k
    c.expected_canary += k * w  # weight at start, summed over the sessions of both arms
    c.turns += int(turns.sum())
    _add(c.tally("error"), rng.binomial(turns, tr.error), turns)
    _add(c.tally("fallback"), rng.binomial(turns, tr.fallback), turns)
    _add(c.tally("slow"), rng.binomial(turns, tr.slow), turns)
    _add(c.tally("handoff"), rng.binomial(1, tr.handoff, k), np.ones(k))
    rated = rng.binomial(1, tr.rated, k)
    _add(c.tally("low_rating"), rated * rng.binomial(1, tr.low_rating, k), rated)
    corr = rng.binomial(1, tr.corrected, k)
    _add(c.tally("wrong_intent"), corr * rng.binomial(1, tr.wrong, k), corr)


@dataclass
class Outcome:
    end: str  # promoted | rollback | pause-srm | pause-inconclusive | running
    seconds: float
    sessions: int
    canary_sessions: int


def run_one(sc: Scenario, policy: CanaryPolicy, rng: np.random.Generator, *, bake_s: float,
            check_s: float) -> Outcome:  # fmt: skip
    c = ArmCounts(tenant="t", rollout_id="ro-sim", arm="canary", node_id="n1")
    b = ArmCounts(tenant="t", rollout_id="ro-sim", arm="baseline", node_id="n1")
    t = 0.0
    if sc.srm_only_until:
        return _srm_only(sc, policy, rng, check_s)
    for w in sc.weights:
        step_t = 0.0
        while True:
            t += check_s
            step_t += check_s
            k = rng.poisson(sc.rate * check_s)
            kc = rng.binomial(k, min(1.0, w * sc.share_factor))
            # both arms' rows carry the expected canary count of their own sessions
            _sessions(rng, c, int(kc), sc.canary, w)
            _sessions(rng, b, int(k - kc), sc.baseline, w)
            v = analyse([c, b], policy, step_age_s=step_t, bake_s=bake_s)
            total = c.sessions_started + b.sessions_started
            if v.action == "rollback":
                return Outcome("rollback", t, total, c.sessions_started)
            if v.action == "pause":
                srm = any(s.mismatch for s in v.srm)
                return Outcome(
                    "pause-srm" if srm else "pause-inconclusive", t, total, c.sessions_started
                )
            if v.action == "advance":
                break
    return Outcome("promoted", t, c.sessions_started + b.sessions_started, c.sessions_started)


def _srm_only(sc: Scenario, policy: CanaryPolicy, rng: np.random.Generator, check_s: float
              ) -> Outcome:  # fmt: skip
    w = sc.weights[0]
    kc_total = kb_total = 0
    t = 0.0
    while kc_total + kb_total < sc.srm_only_until:
        t += check_s
        k = int(rng.poisson(sc.rate * check_s))
        kc = int(rng.binomial(k, w * sc.share_factor))
        kc_total += kc
        kb_total += k - kc
        n = kc_total + kb_total
        if (
            n >= policy.srm_min_sessions
            and srm("o", kc_total, kb_total, n * w, policy.srm_p).mismatch
        ):
            return Outcome("pause-srm", t, n, kc_total)
    return Outcome("promoted", t, kc_total + kb_total, kc_total)


def _reached_by(outs: list[Outcome], end: str, share: float) -> str:
    """Sessions (canary sessions) by which ``share`` of all runs had ended in ``end``: the
    samples needed for that power. Runs that never did count as never; "—" if < ``share``."""
    hit = sorted((o.sessions, o.canary_sessions) for o in outs if o.end == end)
    need = math.ceil(share * len(outs))
    if need == 0 or len(hit) < need:
        return "—"
    s, c = hit[need - 1]
    return f"{s} ({c})"


def scenarios() -> list[Scenario]:
    return [
        Scenario("aa", rate=1.0),
        Scenario("aa", rate=10.0),
        Scenario("intent", rate=10.0, canary=Traffic(wrong=0.20)),
        Scenario("handoff", rate=10.0, canary=Traffic(handoff=0.20)),
        Scenario("srm", rate=10.0, share_factor=0.9, weights=(0.10,), srm_only_until=200_000),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--scenario", choices=["aa", "intent", "handoff", "srm"], action="append")
    ap.add_argument("--bake", type=float, default=300.0, help="seconds per step")
    ap.add_argument("--check-s", type=float, default=10.0, help="seconds between analyses")
    ap.add_argument("--seed", type=int, default=13)
    a = ap.parse_args()
    policy = CanaryPolicy()
    rng = np.random.default_rng(a.seed)
    print(f"policy: {policy.model_dump()}")
    print(f"steps {', '.join(f'{w:.0%}' for w in STEPS)}, bake {a.bake:.0f} s, analysis every "
          f"{a.check_s:.0f} s, {a.runs} runs per scenario")  # fmt: skip
    head = f"{'scenario':<10}{'sess/s':>7}{'promoted':>10}{'rollback':>10}{'pause srm':>10}"
    head += f"{'pause inc.':>11}{'median s':>10}{'median sessions (canary)':>26}"
    head += f"{'sessions for 80 % (canary)':>28}{'cpu s':>7}"
    print(head)
    for sc in scenarios():
        if a.scenario and sc.name not in a.scenario:
            continue
        t0 = time.process_time()
        outs = [run_one(sc, policy, rng, bake_s=a.bake, check_s=a.check_s) for _ in range(a.runs)]
        cpu = time.process_time() - t0
        count = {e: sum(o.end == e for o in outs) / len(outs) for e in
                 ("promoted", "rollback", "pause-srm", "pause-inconclusive")}  # fmt: skip
        target = {"aa": "promoted", "intent": "rollback", "handoff": "rollback", "srm": "pause-srm"}
        hit = [o for o in outs if o.end == target[sc.name]] or outs
        med_t = statistics.median(o.seconds for o in hit)
        med_s = statistics.median(o.sessions for o in hit)
        med_c = statistics.median(o.canary_sessions for o in hit)
        p80 = _reached_by(outs, target[sc.name], 0.8)
        print(f"{sc.name:<10}{sc.rate:>7g}{count['promoted']:>10.1%}{count['rollback']:>10.1%}"
              f"{count['pause-srm']:>10.1%}{count['pause-inconclusive']:>11.1%}{med_t:>10.0f}"
              f"{f'{med_s:.0f} ({med_c:.0f})':>26}{p80:>28}{cpu:>7.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
