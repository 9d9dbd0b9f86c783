"""Canary analysis: compare a rollout's canary arm with its baseline, decide what to do.

Pure: counts in (:class:`~kefu.canary_stats.ArmCounts`), a :class:`Verdict` with its evidence
out. No I/O; the controller feeds it the durable per-rollout totals.

For every metric (a bad-event rate, :data:`~kefu.canary_stats.METRICS`) the difference
Δ = rate(canary) − rate(baseline) gets an **always-valid** confidence sequence from the
normal-mixture mSPRT (Johari, Pekelis & Walsh 2017; Howard et al. 2021): with V the variance
of Δ̂ (cluster-robust per arm, conversations as clusters) and mixture variance τ² (the metric's
tolerance δ squared),

    Λ(θ) = √(V / (V + τ²)) · exp(τ² (Δ̂ − θ)² / (2 V (V + τ²)))

is a (nonnegative super)martingale under Δ = θ, so ``p = min(1, 1/Λ(0))`` may be checked after
every batch without inflating the false-alarm rate, and {θ : Λ(θ) < 1/α} is the interval
``Δ̂ ± r`` with ``r² = 2 V (V + τ²)/τ² · (ln(1/α) + ½ ln((V + τ²)/V))``. α is split evenly over
the metrics (Bonferroni), so the policy's α bounds the chance of *any* false rollback.

Verdicts, in this order:

* **rollback** — a hard stop (the canary's error rate ≥ ``hard_error_rate`` over ≥
  ``hard_error_turns`` turns *and* that much above the baseline's — node-wide overload
  shedding hits both arms and is not the canary's fault; a node refusing the canary) or a
  metric whose interval lies wholly above 0 (the canary is significantly worse) once both
  arms have ``min_trials``;
* **pause** — sample-ratio mismatch (χ² of sessions per arm against the weights, overall or
  on one node, p < ``srm_p``: the split itself is broken, so no comparison can be trusted), or
  ``step_limit_s`` passed without a decision (inconclusive);
* **advance** — the bake time met, ``min_sessions`` per arm, and every metric with enough
  trials has its upper bound (of the wider ``advance_alpha`` interval: advancing is the lighter
  decision, the next step keeps watching) below its tolerance δ;
* **continue** — otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kefu.canary_stats import METRICS, ArmCounts, Tally

__all__ = [
    "DEFAULT_POLICIES",
    "Action",
    "CanaryPolicy",
    "MetricEvidence",
    "SrmEvidence",
    "Verdict",
    "analyse",
    "chi2_sf_1",
    "confidence_sequence",
    "msprt_p",
    "srm",
]

Action = Literal["continue", "advance", "rollback", "pause"]

#: A policy's name: a KV key token and a CLI word.
POLICY_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


class CanaryPolicy(BaseModel):
    """A named, stored policy (``kefu cp rollout policy ...``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    #: Family-wise false-rollback bound over all metrics.
    alpha: float = Field(default=0.01, gt=0.0, lt=0.5)
    #: Tolerance δ per metric (absolute rate points): the canary may be this much worse.
    tolerance: dict[str, float] = Field(
        default_factory=lambda: {
            "error": 0.01,
            "fallback": 0.05,
            "slow": 0.05,
            "handoff": 0.05,
            "low_rating": 0.10,
            "wrong_intent": 0.05,
        }
    )
    #: Advancing is the lighter decision (later steps keep watching): its interval uses this α
    #: per metric, so a good canary is not held for hours at low traffic.
    advance_alpha: float = Field(default=0.2, gt=0.0, lt=1.0)
    #: Trials per arm before a metric may decide anything.
    min_trials: int = Field(default=100, ge=1)
    #: Sessions per arm before advancing at all.
    min_sessions: int = Field(default=50, ge=1)
    hard_error_rate: float = Field(default=0.05, gt=0.0, le=1.0)
    hard_error_turns: int = Field(default=50, ge=1)
    srm_p: float = Field(default=0.001, gt=0.0, lt=0.5)
    srm_min_sessions: int = Field(default=100, ge=1)
    #: Pause as inconclusive when a step has run this long without advancing (0: never).
    step_limit_s: float = Field(default=6 * 3600.0, ge=0.0)
    #: Advance no sooner than this at any step (the longer of this and the step's own bake).
    min_bake_s: float = Field(default=0.0, ge=0.0, le=7 * 86400.0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not POLICY_NAME.fullmatch(v):
            raise ValueError(
                f"{v!r}: a policy name is lowercase letters, digits, '-' or '_', starting with "
                "a letter (at most 64) / 策略名须为小写字母、数字、'-' 或 '_'，以字母开头"
            )
        return v

    @field_validator("tolerance")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        for k, d in v.items():
            if k not in METRICS:
                raise ValueError(f"unknown metric {k!r} / 未知指标 (one of {', '.join(METRICS)})")
            if not 0.0 < d < 1.0:
                raise ValueError(f"tolerance of {k} must be in (0, 1) / 容差须在 (0, 1) 之间")
        return v

    def bake_for(self, step_bake_s: float) -> float:
        """The bake a step must meet before advancing: its own, or the policy's if longer."""
        return max(step_bake_s, self.min_bake_s)

    def delta(self, metric: str) -> float:
        return self.tolerance.get(metric, 0.05)


#: Stored under these names when the policy bucket is empty.
DEFAULT_POLICIES: dict[str, CanaryPolicy] = {
    "default": CanaryPolicy(),
    # Low-traffic tenants: fewer samples before deciding, a longer time limit.
    "low-traffic": CanaryPolicy(
        name="low-traffic", min_trials=50, min_sessions=20, step_limit_s=24 * 3600.0
    ),
    # Only hard stops and clear regressions; wider tolerances.
    "lenient": CanaryPolicy(
        name="lenient",
        tolerance={m: 0.1 for m in METRICS} | {"error": 0.02},
    ),
}


def confidence_sequence(diff: float, var: float, tau2: float, alpha: float) -> float:
    """Half-width r of the always-valid (1 − α) interval ``diff ± r`` (∞ without variance)."""
    if var <= 0.0:
        return math.inf
    r2 = 2 * var * (var + tau2) / tau2 * (math.log(1 / alpha) + 0.5 * math.log((var + tau2) / var))
    return math.sqrt(r2)


def msprt_p(diff: float, var: float, tau2: float) -> float:
    """Always-valid p-value of Δ = 0 (normal mixture, mixture variance τ²)."""
    if var <= 0.0:
        return 1.0
    log_lr = 0.5 * math.log(var / (var + tau2)) + tau2 * diff * diff / (2 * var * (var + tau2))
    return 1.0 if log_lr <= 0 else math.exp(-log_lr)


def chi2_sf_1(x: float) -> float:
    """Survival function of χ² with one degree of freedom."""
    return math.erfc(math.sqrt(max(x, 0.0) / 2))


@dataclass(frozen=True)
class MetricEvidence:
    metric: str
    canary_events: float
    canary_trials: float
    baseline_events: float
    baseline_trials: float
    canary_rate: float
    baseline_rate: float
    diff: float
    lower: float
    upper: float
    p_value: float
    tolerance: float
    enough: bool  # both arms have min_trials
    worse: bool  # significantly worse (interval above 0)
    within: bool  # upper bound (at the policy's advance_alpha) below the tolerance
    upper_advance: float


@dataclass(frozen=True)
class SrmEvidence:
    scope: str  # "overall" or a node id
    canary: int
    baseline: int
    expected_canary: float
    chi2: float
    chi2_p: float  # fixed-sample: shown, not decided on
    p_value: float  # always valid: decides
    mismatch: bool


@dataclass
class Verdict:
    action: Action
    reasons: list[str] = field(default_factory=list)
    metrics: list[MetricEvidence] = field(default_factory=list)
    srm: list[SrmEvidence] = field(default_factory=list)
    canary_sessions: int = 0
    baseline_sessions: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "reasons": list(self.reasons),
            "canary_sessions": self.canary_sessions,
            "baseline_sessions": self.baseline_sessions,
            "metrics": [vars(m) for m in self.metrics],
            "srm": [vars(s) for s in self.srm],
        }


def _merge(rows: Iterable[ArmCounts], arm: str) -> ArmCounts:
    mine = [r for r in rows if r.arm == arm]
    if len(mine) == 1:
        return mine[0]  # read only below: no copy
    total = ArmCounts(tenant="", rollout_id="", arm=arm)
    for r in mine:
        total.merge(r)
    return total


def compare(metric: str, c: Tally, b: Tally, policy: CanaryPolicy) -> MetricEvidence:
    delta = policy.delta(metric)
    alpha = policy.alpha / len(METRICS)
    diff = c.rate - b.rate
    var = c.variance() + b.variance()
    enough = c.n >= policy.min_trials and b.n >= policy.min_trials
    if var <= 0.0 and enough:
        # No variation in either arm (e.g. no bad events at all): a binomial floor, one event
        var = (max(c.rate, 1 / c.n) / c.n) + (max(b.rate, 1 / b.n) / b.n)
    r = confidence_sequence(diff, var, delta * delta, alpha)
    p = msprt_p(diff, var, delta * delta)
    lower, upper = diff - r, diff + r
    upper_advance = diff + confidence_sequence(diff, var, delta * delta, policy.advance_alpha)
    return MetricEvidence(
        metric=metric,
        canary_events=c.y,
        canary_trials=c.n,
        baseline_events=b.y,
        baseline_trials=b.n,
        canary_rate=c.rate,
        baseline_rate=b.rate,
        diff=diff,
        lower=lower,
        upper=upper,
        p_value=p,
        tolerance=delta,
        enough=enough,
        worse=enough and lower > 0.0,
        within=enough and upper_advance < delta,
        upper_advance=upper_advance,
    )


def srm(
    scope: str, canary: int, baseline: int, expected_canary: float, p_min: float
) -> SrmEvidence:
    """Sessions per arm against the expected canary count (Σ of the weights at each start).

    Reported: Pearson's χ² (1 df) and its fixed-sample p-value. Decided on: the always-valid
    mSPRT p-value of the canary share's deviation (variance s(1 − s)/n, mixture scale 10 % of
    the smaller share), because the check repeats every pass — a fixed-sample χ² checked a few
    hundred times would flag a correct split now and then."""
    n = canary + baseline
    ec = min(max(expected_canary, 0.0), float(n))
    eb = n - ec
    chi2 = 0.0
    if ec > 0:
        chi2 += (canary - ec) ** 2 / ec
    if eb > 0:
        chi2 += (baseline - eb) ** 2 / eb
    if not (ec > 0 and eb > 0):
        return SrmEvidence(scope, canary, baseline, ec, chi2, 1.0, 1.0, False)
    share = ec / n
    tau = max(0.002, 0.1 * min(share, 1 - share))
    p = msprt_p(canary / n - share, share * (1 - share) / n, tau * tau)
    return SrmEvidence(scope, canary, baseline, ec, chi2, chi2_sf_1(chi2), p, p < p_min)


def analyse(
    rows: Sequence[ArmCounts],
    policy: CanaryPolicy,
    *,
    step_age_s: float,
    bake_s: float,
    refusing_nodes: Sequence[str] = (),
) -> Verdict:
    """The verdict for one rollout's counts (all regions and nodes) at one moment."""
    c, b = _merge(rows, "canary"), _merge(rows, "baseline")
    v = Verdict(
        action="continue", canary_sessions=c.sessions_started, baseline_sessions=b.sessions_started
    )
    v.metrics = [compare(m, c.tally(m), b.tally(m), policy) for m in METRICS]

    # Sample ratio: overall and per node (sessions are started on a node, weights per node).
    v.srm.append(
        srm(
            "overall",
            c.sessions_started,
            b.sessions_started,
            c.expected_canary + b.expected_canary,
            policy.srm_p,
        )
    )
    by_node: dict[str, list[ArmCounts]] = {}
    for r in rows:
        by_node.setdefault(r.node_id, []).append(r)
    for node in sorted(by_node):
        nc, nb = _merge(by_node[node], "canary"), _merge(by_node[node], "baseline")
        if nc.sessions_started + nb.sessions_started >= policy.srm_min_sessions and node:
            v.srm.append(
                srm(
                    node,
                    nc.sessions_started,
                    nb.sessions_started,
                    nc.expected_canary + nb.expected_canary,
                    policy.srm_p,
                )
            )

    err_turns = c.tally("error").n
    c_err, b_err = c.tally("error").rate, b.tally("error").rate
    if (
        err_turns >= policy.hard_error_turns
        and c_err >= policy.hard_error_rate
        and c_err - b_err >= policy.hard_error_rate
    ):
        v.action = "rollback"
        v.reasons.append(
            f"hard stop: canary error rate {c_err:.1%} over {err_turns:.0f} turns (baseline"
            f" {b_err:.1%}) / 硬性止损：金丝雀错误率 {c_err:.1%}（{err_turns:.0f} 轮，"
            f"基线 {b_err:.1%}）"
        )
    for node in refusing_nodes:
        v.action = "rollback"
        v.reasons.append(f"hard stop: node {node} refuses the canary / 节点 {node} 拒绝金丝雀版本")
    worse = [m for m in v.metrics if m.worse]
    if worse and v.action != "rollback":
        v.action = "rollback"
    for m in worse:
        v.reasons.append(
            f"{m.metric}: canary worse by {m.diff:+.2%} (interval {m.lower:+.2%}..{m.upper:+.2%},"
            f" p={m.p_value:.2g}) / 金丝雀 {m.metric} 显著变差"
        )
    if v.action == "rollback":
        return v
    mismatched = [
        s for s in v.srm if s.mismatch and s.canary + s.baseline >= policy.srm_min_sessions
    ]
    if mismatched:
        v.action = "pause"
        for s in mismatched:
            v.reasons.append(
                f"sample ratio mismatch ({s.scope}): {s.canary} canary / {s.baseline} baseline"
                f" sessions, {s.expected_canary:.1f} expected, p={s.p_value:.2g}"
                f" / 样本比例失衡（{s.scope}）"
            )
        return v
    ready = (
        step_age_s >= bake_s
        and c.sessions_started >= policy.min_sessions
        and b.sessions_started >= policy.min_sessions
        and all(m.within for m in v.metrics if m.enough)
        and all(m.enough for m in v.metrics if m.metric in ("error", "fallback", "slow"))
    )
    if ready:
        v.action = "advance"
        v.reasons.append(
            "every metric within its tolerance, bake time met / 各指标均在容差内，观察期已满"
        )
    elif policy.step_limit_s and step_age_s >= policy.step_limit_s:
        v.action = "pause"
        v.reasons.append(
            f"inconclusive after {step_age_s:.0f} s / {step_age_s:.0f} 秒后仍无结论，暂停"
        )
    return v
