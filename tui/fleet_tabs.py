"""The fleet's tabs: Nodes / 节点, Tenants / 租户, Models / 模型, Telemetry / 遥测 and
Audit / 审计 (pure: a snapshot in, table rows out).
"""

from __future__ import annotations

from rich.text import Text

from kefu.tui.client import Snapshot
from kefu.tui.format import OK, REFUSED, WARN, Rows, View, ago, pct, when

__all__ = ["AUDIT", "MODELS", "NODES", "TELEMETRY", "TENANTS"]


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
        acc = "-" if x.corrected_accuracy < 0 else pct(x.corrected_accuracy)
        fallback = Text(pct(x.fallback_rate), style=WARN if x.fallback_rate >= 0.2 else "")
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
                    pct(x.handoff_rate),
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


NODES = View(
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
)

TENANTS = View(
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
)

MODELS = View(
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
)

TELEMETRY = View(
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
)

AUDIT = View(
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
)
