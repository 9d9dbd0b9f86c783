"""What the rollout analysis screen shows (pure): the verdict line, one row per metric
(baseline vs canary counts and rates, difference, its always-valid interval, p-value,
tolerance, status), the sample-ratio rows and the rollout's decision history.

The data is the reply of the same RPC ``kefu cp rollout analysis ID`` prints
(``GetRolloutAnalysis``) plus the rollout the console already holds. A row is red when the
canary is significantly worse (the analysis rolls back on it), green when its upper bound is
within the tolerance, yellow while too few samples or undecided.
"""

from __future__ import annotations

from rich.text import Text

from kefu.tui.format import OK, REFUSED, WARN, Rows, when
from kefu.v1 import control_plane_pb2 as pb

__all__ = [
    "ACTIONS",
    "METRIC_COLUMNS",
    "METRIC_NAMES",
    "SRM_COLUMNS",
    "analysis_summary",
    "decision_history",
    "metric_rows",
    "srm_rows",
]

ACTIONS = {
    "continue": ("continue / 继续观察", WARN),
    "advance": ("advance / 推进", OK),
    "rollback": ("ROLL BACK / 回滚", REFUSED),
    "pause": ("pause / 暂停", WARN),
}

METRIC_NAMES = {
    "error": "errors / 错误",
    "fallback": "fallback / 兜底",
    "slow": "slow turns / 慢轮次",
    "handoff": "hand-off / 转人工",
    "low_rating": "≤2★ rating / 差评",
    "wrong_intent": "wrong intent / 意图错误",
}

METRIC_COLUMNS = (
    "metric / 指标",
    "baseline / 基线",
    "canary / 灰度",
    "diff / 差值",
    "interval / 置信区间",
    "p",
    "tolerance / 容差",
    "verdict / 结论",
)

SRM_COLUMNS = (
    "scope / 范围",
    "canary / 灰度",
    "baseline / 基线",
    "expected canary / 期望灰度",
    "χ²",
    "p (always valid / 随时有效)",
    "mismatch / 失衡",
)


def _status(m: pb.CanaryMetric) -> tuple[str, str]:
    if m.worse:
        return "WORSE / 显著变差", REFUSED
    if m.within:
        return "ok / 在容差内", OK
    if not m.enough:
        return "too few / 样本不足", WARN
    return "undecided / 未定", WARN


def metric_rows(a: pb.RolloutAnalysis) -> Rows:
    """One row per metric; every cell carries the row's colour."""
    out: Rows = []
    for m in a.metrics:
        status, style = _status(m)
        cells = (
            METRIC_NAMES.get(m.metric, m.metric),
            f"{m.baseline_rate:.2%} ({m.baseline_events:.0f}/{m.baseline_trials:.0f})",
            f"{m.canary_rate:.2%} ({m.canary_events:.0f}/{m.canary_trials:.0f})",
            f"{m.diff:+.2%}",
            f"[{m.lower:+.2%}, {m.upper:+.2%}]" if m.enough else "-",
            f"{m.p_value:.3g}",
            f"{m.tolerance:.1%}",
            status,
        )
        painted = style if (m.worse or m.within) else ""
        row = [Text(c, style=painted) for c in cells[:-1]]
        out.append((m.metric, (*row, Text(status, style=style))))
    return out


def srm_rows(a: pb.RolloutAnalysis) -> Rows:
    """The sample-ratio checks: overall, then per node; a mismatch pauses the rollout."""
    out: Rows = []
    for s in a.sample_ratio:
        scope = "overall / 总体" if s.scope == "overall" else s.scope
        mismatch = (
            Text("YES / 失衡 (paused / 已暂停)", style=REFUSED)
            if s.mismatch
            else Text("no / 正常", style=OK)
        )
        cells = (scope, str(s.canary), str(s.baseline), f"{s.expected_canary:.1f}")
        out.append((s.scope, (*cells, f"{s.chi2:.2f}", f"{s.p_value:.3g}", mismatch)))
    return out


def analysis_summary(a: pb.RolloutAnalysis, rollout: pb.Rollout | None) -> Text:
    """The lines above the tables: the verdict, the policy, when, sessions per arm, reasons."""
    rid = a.rollout_id
    policy = a.policy or (rollout.policy if rollout is not None else "")
    out = Text()
    if not policy:
        out.append(
            f"{rid}: no canary-analysis policy — steps advance on bake time alone / "
            "未设置金丝雀分析策略，按观察期推进"
        )
        return out
    if not a.at:
        out.append(f"{rid}: no analysis yet (policy {policy}) / 尚无金丝雀分析结果")
        return out
    name, style = ACTIONS.get(a.action, (a.action, WARN))
    out.append(f"{rid}: ")
    out.append(name, style=style)
    out.append(
        f" — policy / 策略 {policy}, {when(a.at)} UTC; sessions / 会话 canary 灰度 "
        f"{a.canary_sessions} / baseline 基线 {a.baseline_sessions}"
    )
    for reason in a.reasons:
        out.append("\n  " + reason)
    return out


def decision_history(rollout: pb.Rollout | None, *, last: int = 20) -> str:
    """The rollout's transitions, newest last (each with its time, reason and who)."""
    if rollout is None or not rollout.history:
        return "no decisions yet / 暂无决策记录"
    return "\n".join(rollout.history[-last:])
