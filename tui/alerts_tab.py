"""The Alerts / 告警 tab: newest first, severity coloured, who acknowledged (pure)."""

from __future__ import annotations

from rich.text import Text

from kefu.tui.client import Snapshot
from kefu.tui.format import OK, REFUSED, WARN, Rows, View, ago

__all__ = ["ALERTS", "SEVERITIES"]

SEVERITIES = {
    "critical": ("CRITICAL / 严重", REFUSED),
    "warning": ("warning / 警告", WARN),
    "info": ("info / 信息", OK),
}


def _alerts(s: Snapshot, now: float) -> Rows:
    out: Rows = []
    for a in sorted(s.alerts, key=lambda a: a.at, reverse=True):
        name, style = SEVERITIES.get(a.severity, (a.severity, WARN))
        acked = f"{a.acked_by} {ago(a.acked_at, now)}" if a.acked_by else "-"
        cells = (ago(a.at, now), Text(name, style=style), a.kind, a.tenant or "-", a.resource)
        out.append((a.id, (*cells, a.title[:100], acked)))
    return out


ALERTS = View(
    id="alerts",
    title="Alerts / 告警",
    columns=(
        "when / 时间",
        "severity / 级别",
        "kind / 类型",
        "tenant / 租户",
        "resource / 资源",
        "title / 标题",
        "acked / 已确认",
    ),
    rows=_alerts,
)
