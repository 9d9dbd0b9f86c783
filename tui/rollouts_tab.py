"""The Rollouts / 灰度发布 tab (pure): phase, wave, step, weight, nodes converged, sessions per
arm, target.
"""

from __future__ import annotations

from rich.text import Text

from kefu.rollout import target_text
from kefu.tui.client import Snapshot
from kefu.tui.format import OK, REFUSED, WARN, Rows, View, ago

__all__ = ["PHASES", "ROLLOUTS"]

PHASES = {
    "pending": ("pending / 待开始", WARN),
    "running": ("running / 进行中", OK),
    "paused": ("paused / 已暂停", WARN),
    "promoted": ("promoted / 已全量", OK),
    "rolled_back": ("rolled back / 已回滚", REFUSED),
    "aborted": ("aborted / 已中止", WARN),
}


def _rollouts(s: Snapshot, now: float) -> Rows:
    out: Rows = []
    for r in sorted(s.rollouts, key=lambda r: (not r.finalized, r.created_at), reverse=True):
        name, style = PHASES.get(r.phase, (r.phase, WARN))
        converged = f"{r.nodes_converged}/{r.nodes_total}"
        out.append(
            (
                r.id,
                (
                    r.id,
                    r.tenant,
                    Text(name, style=style),
                    f"{r.wave + 1}/{len(r.waves)}",
                    f"{r.step + 1}/{len(r.steps)}",
                    f"{r.weight:.0%}",
                    Text(converged, style=OK if r.nodes_converged == r.nodes_total else WARN),
                    f"{r.sessions_canary}/{r.sessions_baseline}",
                    target_text(r.target, r.target_config_version),
                    ago(r.updated_at, now),
                    r.reason[:80],
                ),
            )
        )
    return out


ROLLOUTS = View(
    id="rollouts",
    title="Rollouts / 灰度发布",
    columns=(
        "rollout / 发布",
        "tenant / 租户",
        "phase / 阶段",
        "wave / 批次",
        "step / 步骤",
        "weight / 流量",
        "nodes converged / 节点就绪",
        "sessions canary/baseline / 会话 灰度/基线",
        "target / 目标版本",
        "updated / 更新",
        "reason / 原因",
    ),
    rows=_rollouts,
)
