"""The console's tabs in key order (``1``…), assembled from one module per tab, and the
overview's text.

Pure (no Textual, no gRPC): a view is data in, table rows out (:mod:`~kefu.tui.format`), so the
formatting is tested without a terminal and the same definitions drive every table widget.
"""

from __future__ import annotations

from kefu.tui.alerts_tab import ALERTS
from kefu.tui.client import Snapshot
from kefu.tui.fleet_tabs import AUDIT, MODELS, NODES, TELEMETRY, TENANTS
from kefu.tui.format import Cell, View, ago, when
from kefu.tui.regions_tab import REGIONS
from kefu.tui.rollouts_tab import ROLLOUTS

__all__ = ["VIEWS", "Cell", "View", "ago", "overview_lines", "when"]

VIEWS: tuple[View, ...] = (NODES, TENANTS, MODELS, TELEMETRY, AUDIT, ROLLOUTS, ALERTS, REGIONS)


def overview_lines(s: Snapshot, now: float) -> list[str]:
    """The overview's text: who am I, the leader, and counts that need attention."""
    st = s.status
    online = sum(n.online for n in s.nodes)
    refused = sum(t.state == "refused" for n in s.nodes for t in n.tenants)
    enabled = sum(t.enabled for t in s.tenants)
    turns = sum(x.turns for x in s.telemetry.series)
    leader = st.leader or "none / 无"
    return [
        f"You are / 当前身份: {st.caller or '-'} ({st.caller_role or '-'})",
        f"Replica / 副本: {st.replica or '-'}   leader / 主副本: {leader}   "
        f"software / 版本: {st.software_version or '-'}",
        f"Nodes / 节点: {online}/{len(s.nodes)} online / 在线   refusals / 拒绝: {refused}",
        f"Tenants / 租户: {enabled}/{len(s.tenants)} enabled / 启用   "
        f"assignments / 分配: {len(s.assignments)}   models / 模型: {len(s.models)}",
        f"Telemetry (1 h) / 遥测（1 小时）: {turns} turns / 轮次 from "
        f"{s.telemetry.nodes_reporting} nodes / 节点, {s.telemetry.dropped} intervals dropped / "
        "丢弃",
        f"Audit events / 审计事件: {len(s.audit)}   refreshed / 刷新于: {when(s.fetched_at)} UTC",
    ]
