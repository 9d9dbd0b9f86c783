"""What each view shows: its title, columns and rows, computed from a :class:`Snapshot`.

Pure (no Textual, no gRPC): a view is data in, table rows out, so the formatting is tested
without a terminal and the same definitions drive every table widget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.text import Text

from kefu.rollout import target_text
from kefu.tui.client import Snapshot

__all__ = ["VIEWS", "Cell", "View", "ago", "overview_lines", "when"]

Cell = str | Text
Rows = list[tuple[str, Sequence[Cell]]]  # (row key, cells)

REFUSED = "bold white on red"
WARN = "bold yellow"
OK = "green"


def ago(ts: float, now: float) -> str:
    """A heartbeat's age: 3s / 4m / 2h (English and Chinese read the same digits)."""
    if not ts:
        return "-"
    s = max(0.0, now - ts)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.0f}h"


def when(ts: float) -> str:
    """UTC so that every operator (and every snapshot test) reads the same clock."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


def _pct(x: float) -> str:
    return f"{x:.1%}"


@dataclass(frozen=True, kw_only=True)
class View:
    """One tab: an id (also its key binding's target), a bilingual title and its table."""

    id: str
    title: str
    columns: tuple[str, ...]
    rows: Callable[[Snapshot, float], Rows]


def _nodes(s: Snapshot, now: float) -> Rows:
    out: Rows = []
    for n in sorted(s.nodes, key=lambda n: (n.region, n.node_id)):
        runs = Text()
        for i, t in enumerate(sorted(n.tenants, key=lambda t: t.tenant)):
            if i:
                runs.append("; ")
            label = f"{t.tenant}:{t.state} v{t.config_version}"
            if t.state == "refused":
                runs.append(f"{label} REFUSED/拒绝 ({t.error[:80]})", style=REFUSED)
            elif t.state == "serving":
                runs.append(label, style=OK)
            else:
                runs.append(label, style=WARN)
        if n.reconcile_error:
            runs.append(
                f"{'; ' if n.tenants else ''}RECONCILE FAILING/同步失败 ({n.reconcile_error[:80]})",
                style=REFUSED,
            )
        online = Text("yes/是", style=OK) if n.online else Text("NO/离线", style=REFUSED)
        out.append(
            (
                n.node_id,
                (
                    n.node_id,
                    n.region,
                    n.software_version,
                    online,
                    ago(n.heartbeat_at, now),
                    runs,
                    ", ".join(n.models_loaded),
                    f"{n.telemetry_buffered}/{n.telemetry_dropped}",
                ),
            )
        )
    return out


def _tenants(s: Snapshot, now: float) -> Rows:
    by_tenant: dict[str, list[str]] = {}
    for a in s.assignments:
        models = ", ".join(f"{k}={v}" for k, v in sorted(a.models.items()))
        cfg = f"v{a.config_version}" if a.config_version else "current/当前"
        by_tenant.setdefault(a.tenant, []).append(f"{a.region}: config {cfg}; {models}")
    out: Rows = []
    for t in sorted(s.tenants, key=lambda t: t.id):
        enabled = Text("yes/是", style=OK) if t.enabled else Text("disabled/已停用", style=WARN)
        out.append(
            (
                t.id,
                (
                    t.id,
                    t.name,
                    enabled,
                    str(t.current_config),
                    str(sum(not k.revoked for k in t.api_keys)),
                    " | ".join(by_tenant.get(t.id, [])) or "-",
                ),
            )
        )
    return out


def _models(s: Snapshot, now: float) -> Rows:
    out: Rows = []
    for m in sorted(s.models, key=lambda m: (m.name, m.version)):
        acc = m.metrics.get("accuracy")
        f1 = m.metrics.get("macro_f1")
        out.append(
            (
                f"{m.name}@{m.version}",
                (
                    m.name,
                    m.version,
                    m.task,
                    f"{m.size / 1e6:.1f} MB",
                    "-" if acc is None else f"{acc:.4f}",
                    "-" if f1 is None else f"{f1:.4f}",
                    m.signer[:12],
                    m.published_by,
                    when(m.published_at),
                ),
            )
        )
    return out


def _telemetry(s: Snapshot, now: float) -> Rows:
    out: Rows = []
    for x in sorted(s.telemetry.series, key=lambda x: (x.tenant, x.scenario, x.model_version)):
        feedback = f"{x.feedback} (★{x.mean_rating:.1f})" if x.feedback else "0"
        acc = "-" if x.corrected_accuracy < 0 else _pct(x.corrected_accuracy)
        fallback = Text(_pct(x.fallback_rate), style=WARN if x.fallback_rate >= 0.2 else "")
        out.append(
            (
                f"{x.tenant}/{x.scenario}/{x.model_version}",
                (
                    x.tenant,
                    x.scenario,
                    x.model_version,
                    str(x.turns),
                    str(x.errors),
                    f"{x.p50_ms:.0f}",
                    f"{x.p95_ms:.0f}",
                    fallback,
                    _pct(x.handoff_rate),
                    f"{x.mean_confidence:.2f}",
                    feedback,
                    acc,
                ),
            )
        )
    return out


def _audit(s: Snapshot, now: float) -> Rows:
    out: Rows = []
    for e in sorted(s.audit, key=lambda e: e.seq, reverse=True):
        actor = e.actor + (f" ({e.actor_note})" if e.actor_note else "")
        digests = f"{e.before_digest[:10] or '-'} → {e.after_digest[:10] or '-'}"
        out.append(
            (
                str(e.seq),
                (str(e.seq), when(e.at), actor, e.action, e.resource, digests, e.detail[:100]),
            )
        )
    return out


PHASES = {
    "pending": ("pending / 待开始", WARN),
    "running": ("running / 进行中", OK),
    "paused": ("paused / 已暂停", WARN),
    "promoted": ("promoted / 已全量", OK),
    "rolled_back": ("rolled back / 已回滚", REFUSED),
    "aborted": ("aborted / 已中止", WARN),
}


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


REGION_STATES = {
    "up": ("up / 正常", OK),
    "suspect": ("suspect / 可疑", WARN),
    "down": ("DOWN / 故障", REFUSED),
    "recovering": ("recovering / 恢复中", WARN),
}


def _regions(s: Snapshot, now: float) -> Rows:
    """One row per region (health, hysteresis countdown, tenants it serves), then one per
    tenant no region can serve."""
    routes = list(s.failover.routes)
    out: Rows = []
    for h in sorted(s.failover.regions, key=lambda h: h.region):
        name, style = REGION_STATES.get(h.state, (h.state, WARN))
        served = sorted(r.tenant for r in routes if r.state == "serving" and r.region == h.region)
        out.append(
            (
                h.region,
                (
                    h.region,
                    Text(name + (" (drained / 已排空)" if h.drained else ""), style=style),
                    ago(h.since, now),
                    f"{h.countdown_s:.0f}s" if h.countdown_s else "-",
                    "yes / 是" if h.serves_traffic else "no / 否",
                    ", ".join(served) or "-",
                    h.evidence[:80],
                ),
            )
        )
    for r in sorted(routes, key=lambda r: r.tenant):
        if r.state == "unavailable":
            cells = (Text("unavailable / 不可用", style=REFUSED), ago(r.since, now), "-", "-")
            out.append((f"route:{r.tenant}", ("-", *cells, r.tenant, r.reason[:80])))
    return out


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


VIEWS: tuple[View, ...] = (
    View(
        id="nodes",
        title="Nodes / 节点",
        columns=(
            "node / 节点",
            "region / 区域",
            "version / 版本",
            "online / 在线",
            "heartbeat / 心跳",
            "runs / 运行",
            "models loaded / 已加载模型",
            "telemetry buf/drop / 遥测缓冲/丢弃",
        ),
        rows=_nodes,
    ),
    View(
        id="tenants",
        title="Tenants / 租户",
        columns=(
            "tenant / 租户",
            "name / 名称",
            "enabled / 启用",
            "config / 配置",
            "keys / 密钥",
            "assignments per region / 各区域分配",
        ),
        rows=_tenants,
    ),
    View(
        id="models",
        title="Models / 模型",
        columns=(
            "model / 模型",
            "version / 版本",
            "task / 任务",
            "size / 大小",
            "accuracy / 准确率",
            "macro-F1",
            "signer / 签名",
            "by / 发布者",
            "published (UTC) / 发布时间",
        ),
        rows=_models,
    ),
    View(
        id="telemetry",
        title="Telemetry / 遥测",
        columns=(
            "tenant / 租户",
            "scenario / 场景",
            "model / 模型",
            "turns / 轮次",
            "errors / 错误",
            "p50 ms",
            "p95 ms",
            "fallback / 兜底",
            "handoff / 转人工",
            "confidence / 置信度",
            "feedback / 反馈",
            "corrected acc / 纠正准确率",
        ),
        rows=_telemetry,
    ),
    View(
        id="audit",
        title="Audit / 审计",
        columns=(
            "seq",
            "when (UTC) / 时间",
            "who / 操作者",
            "action / 操作",
            "resource / 资源",
            "digest before → after / 摘要",
            "detail / 详情",
        ),
        rows=_audit,
    ),
    View(
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
    ),
    View(
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
    ),
    View(
        id="regions",
        title="Regions / 区域",
        columns=(
            "region / 区域",
            "health / 健康",
            "since / 起始",
            "countdown / 倒计时",
            "takes traffic / 承载流量",
            "tenants served / 服务租户",
            "evidence / 依据",
        ),
        rows=_regions,
    ),
)


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
