"""The steady-state guard's error-rate test on synthetic counts: false alarms and detection.

Each run: a version's trailing baseline (``--baseline`` requests at ``--p0`` errors), then a
live window filled ``--step`` requests at a time up to ``--live`` requests, the guard's
planner (:func:`kefu.control_plane.guard.findings`) checking after every step, as the leader
does every pass. A/A runs (live at p0) count false alarms; runs with the live error rate at
``--p1`` count detections and the requests needed. Pure computation, no servers.

    .venv/bin/python benchmarks/guard_sim.py --runs 1000
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from kefu.control_plane.guard import Counts, SteadyPolicy, VersionStats, findings


def one_run(rng: np.random.Generator, args: argparse.Namespace, p_live: float) -> int:
    """Requests in the live window when the guard first flagged the error rate (0: never)."""
    policy = SteadyPolicy(min_turns=args.min_turns)
    base_errors = int(rng.binomial(args.baseline, args.p0))
    base = Counts(turns=args.baseline, errors=base_errors)
    live = Counts()
    now = 1_000_000.0
    while live.turns < args.live:
        live.turns += args.step
        live.errors += int(rng.binomial(args.step, p_live))
        s = VersionStats(tenant="t", region="r", version="v", baseline=base, live={"0": live})
        if any(b.kind == "error" for b in findings(s, now, policy)):
            return live.turns
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--baseline", type=int, default=20_000)
    ap.add_argument("--live", type=int, default=1_500, help="requests in the live window")
    ap.add_argument("--step", type=int, default=50, help="requests between two guard passes")
    ap.add_argument("--p0", type=float, default=0.01)
    ap.add_argument("--p1", type=float, default=0.05)
    ap.add_argument("--min-turns", type=int, default=100)
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    aa = [one_run(rng, args, args.p0) for _ in range(args.runs)]
    bad = [one_run(rng, args, args.p1) for _ in range(args.runs)]
    elapsed = time.perf_counter() - started
    false_alarms = sum(1 for x in aa if x)
    detected = [x for x in bad if x]
    checks = args.live // args.step
    print(
        f"baseline {args.baseline} requests at {args.p0:.1%}; live window up to {args.live} "
        f"requests, checked every {args.step} ({checks} checks per run); {args.runs} runs each"
    )
    print(f"A/A false alarms: {false_alarms}/{args.runs} = {false_alarms / args.runs:.1%}")
    print(
        f"live at {args.p1:.1%}: detected {len(detected)}/{args.runs} = "
        f"{len(detected) / args.runs:.1%}; requests needed median "
        f"{statistics.median(detected) if detected else 0:.0f}, max {max(detected, default=0)}"
    )
    print(f"{2 * args.runs} runs in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
