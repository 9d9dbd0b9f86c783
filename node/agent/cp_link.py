"""Hooks a serving :class:`~kefu.node.serving.server.Node` to the control plane through a
node agent.

:class:`ServingTarget` is the agent's :class:`~kefu.node.agent.agent.NodeTarget` for a real node:
bundles go through the batching runtime's verified load, warm-up and atomic activation; tenant
configs go through :meth:`TenantRegistry.apply` (one dict assignment, so in-flight turns finish
on the old config); every turn feeds the telemetry recorder (labels and timings only).
:func:`attach_agent` builds the agent; :func:`follow_control_plane` is the one wiring both
``kefu node run --control-plane URL`` and ``kefu-node run`` (node.yaml ``control_plane:``) use,
including the shutdown order: the agent stops following, the node drains (in-flight turns
finish and are counted, SQLite is closed), then the agent flushes or saves the telemetry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kefu.bus import Bus
from kefu.certstore import TlsFiles
from kefu.config import TenantConfig
from kefu.errors import PermanentError
from kefu.model_ref import ModelSlot
from kefu.models.store import ModelStore
from kefu.natscreds import NatsCredentials, load_credentials
from kefu.node.agent.agent import AgentOptions, NodeAgent, TelemetryShutdown
from kefu.node.agent.guard import GuardPolicy
from kefu.node.agent.telemetry import TelemetryRecorder, TurnSample
from kefu.node.audit.chain import AuditEntry, safe_id
from kefu.node.dialog.conversation import TurnResult
from kefu.node.dialog.events import (
    ConversationEvent,
    FeedbackGiven,
    RequestFailed,
    SessionEnded,
    TurnServed,
)
from kefu.node.dialog.split import NodeSplit
from kefu.node.dialog.tenant import Tenant
from kefu.node.replication.records import ZoneKey
from kefu.node.replication.service import Replication, ReplicationOptions
from kefu.node.serving.server import Node
from kefu.rollout import CAPABILITY_SPLIT
from kefu.wire import BundleRef, CanarySplit, DesiredTenant

if TYPE_CHECKING:
    from kefu.config.node import ResolvedNodeConfig

__all__ = [
    "ControlPlaneLink",
    "NatsCredentials",
    "ServingTarget",
    "attach_agent",
    "default_node_id",
    "describe_shutdown",
    "follow_control_plane",
    "load_credentials",
    "turn_sample",
]


class ServingTarget:
    def __init__(self, node: Node, *, node_id: str = ""):
        assert node.runtime is not None and node.registry is not None
        self.node = node
        self.node_id = node_id
        self.runtime = node.runtime
        self.registry = node.registry
        self.splits = node.splits
        self._unused_since: dict[str, float] = {}
        #: tenant → (canary config digest, the tenant built from it).
        self._canary_configs: dict[str, tuple[str, Tenant]] = {}
        #: Replicated sessions (node.yaml ``replication:``), told of every tenant applied.
        self.replication: Replication | None = None

    async def load_bundle(self, bundle: BundleRef, path: Path, *, activate: bool) -> None:
        # Verifies signature and hashes again, loads and warms off the event loop, then
        # (for a tenant-level assignment only) activates with one assignment; the old version
        # keeps serving its in-flight turns. A scenario pin or a rollout canary is loaded
        # without activation: it must never become another tenant's default version.
        await self.runtime.load(bundle.name, path, activate=activate)
        if self.node.audit is not None:
            await self.node.audit.record(
                AuditEntry(
                    ts=time.time(),
                    actor="control-plane",
                    action="model.swapped" if activate else "model.loaded",
                    target=safe_id(bundle.ref),
                    detail={"sha256": bundle.sha256[:16]},
                )
            )

    async def apply_canary_config(self, doc: DesiredTenant, config: TenantConfig | None) -> None:
        """Build the tenant a config canary's sessions run, once per canary config (a weight
        change reuses it); None drops it."""
        key = doc.split.config_digest if doc.split is not None and config is not None else ""
        held = self._canary_configs.get(doc.tenant)
        if held is not None and held[0] == key:
            return
        if held is not None:
            self.registry.retire(held[1])
            del self._canary_configs[doc.tenant]
        if config is None or doc.split is None:
            return
        source = Path(f"control-plane:{doc.tenant}@v{doc.split.config_version} (canary)")
        variant = await self.registry.variant(config, source=source)
        self._canary_configs[doc.tenant] = (key, variant)

    def apply_split(self, tenant: str, split: CanarySplit | None) -> None:
        """This node's share of the rollout (one assignment: turns read it per new session)."""
        if split is None:
            self.splits.set_split(tenant, None)
            return
        held = self._canary_configs.get(tenant)
        variant = held[1] if held is not None and split.config_version else None
        self.splits.set_split(
            tenant,
            NodeSplit(
                rollout_id=split.rollout_id,
                salt=split.salt,
                weight=split.weight_for(self.node_id),
                canary={b.name: b.version for b in split.canary.values()},
                config_version=split.config_version if variant is not None else 0,
                config=variant,
            ),
        )

    def split_report(self, tenant: str) -> tuple[int, int, int]:
        """(live canary sessions, live baseline sessions, sessions switched by a rollback)."""
        split = self.splits.splits.get(tenant)
        arms = self.splits.sessions_per_arm(
            tenant, split.rollout_id if split else "", time.monotonic()
        )
        return arms["canary"], arms["baseline"], self.splits.switched.get(tenant, 0)

    def capabilities(self) -> list[str]:
        return [CAPABILITY_SPLIT]

    async def apply_tenant(self, doc: DesiredTenant, config: TenantConfig) -> None:
        await self.registry.apply(
            config,
            source=Path(f"control-plane:{doc.tenant}@v{doc.config_version}"),
            key_hashes=doc.api_key_hashes,
            key_expiry=doc.api_key_expiry,
        )
        if self.replication is not None:  # no await since the apply: no turn slipped between
            served = self.registry.tenants[doc.tenant]
            self.replication.tenant_applied(
                doc.tenant,
                served.store,
                doc.residency,
                served.config.session_policy.longest_retention_days(),
            )

    async def remove_tenant(self, tenant: str) -> None:
        if self.replication is not None:
            self.replication.tenant_removed(tenant)
        await self.registry.remove(tenant)

    def replication_report(self) -> dict[str, Any]:
        """The replication fields of the node status (empty without ``replication:``)."""
        return self.replication.report() if self.replication is not None else {}

    def loaded(self) -> frozenset[str]:
        return frozenset(m.ref for m in self.runtime.models())

    def in_use(self) -> set[str]:
        """Model versions some tenant's config pins (``name@version``) or routes to (``name``),
        a rollout's canary, or a live session still pins."""
        refs: set[str] = set()
        for tenant in self.registry.tenants.values():
            cfg = tenant.config
            slots = [cfg.models.intent, cfg.models.sentiment, cfg.models.encoder]
            for s in cfg.scenarios:
                slots += [s.models.intent, s.models.sentiment, s.models.encoder]
            refs |= {r.ref for r in slots if r is not None}
        for split in self.splits.splits.values():
            refs |= {f"{name}@{version}" for name, version in split.canary.items()}
        return refs | self.splits.live_refs(time.monotonic())

    async def release_unused(self, grace_s: float) -> list[str]:
        """Unload versions no tenant and no live session has used for ``grace_s`` (after a
        swap, turns already routed to the old version finish well within it; a session pinned
        to a version keeps it loaded while it lives). Active versions always stay."""
        now = time.monotonic()
        in_use = self.in_use()
        released: list[str] = []
        for m in self.runtime.models():
            if m.active or m.ref in in_use:
                self._unused_since.pop(m.ref, None)
                continue
            since = self._unused_since.setdefault(m.ref, now)
            if now - since >= grace_s:
                await self.runtime.unload(m.name, m.version)
                self._unused_since.pop(m.ref, None)
                released.append(m.ref)
        return released

    def providers(self) -> list[str]:
        seen: list[str] = []
        for m in self.runtime.models():
            seen += [p for p in m.providers if p not in seen]
        return seen or ["CPUExecutionProvider"]


def turn_sample(tenant: str, r: TurnResult) -> TurnSample:
    """What telemetry keeps of a served turn: labels, counts and timings, never its text."""
    tag = r.split
    return TurnSample(
        tenant=tenant,
        scenario=r.scenario,
        model_version=r.model_versions.get(ModelSlot.INTENT, ""),
        latency_ms=r.latency_us / 1000.0,
        confidence=r.confidence,
        fallback=r.clarify,
        handoff=r.handoff,
        session_id=r.session_id,
        rollout_id=tag.rollout_id if tag else "",
        arm=tag.arm if tag else "",
        weight=tag.weight if tag else 0.0,
        new_session=tag.new_session if tag else False,
        latency_objective_ms=r.latency_objective_ms,
    )


def _observe_turns(node: Node, recorder: TelemetryRecorder) -> None:
    """Feed every turn, failed request, feedback and session end to the recorder (labels,
    counts and timings only)."""
    if node.service is None:
        return

    def on_turn(tenant: str, r: TurnResult) -> None:
        recorder.record_turn(turn_sample(tenant, r))

    def on_event(e: ConversationEvent) -> None:
        if isinstance(e, TurnServed):
            on_turn(e.tenant, e.result)
        elif isinstance(e, RequestFailed):
            recorder.record_error(e.tenant, e.session_id)
        elif isinstance(e, FeedbackGiven):
            recorder.record_feedback(
                e.tenant,
                rating=e.rating,
                corrected_intent=e.corrected_intent,
                predicted_intent=e.predicted_intent,
                scenario=e.scenario,
                model_version=e.model_version,
                session_id=e.session_id,
                resolved=e.resolved,
            )
        elif isinstance(e, SessionEnded):
            recorder.record_session_end(e.tenant, e.session_id)

    node.service.events.subscribe(on_event, TurnServed, RequestFailed, FeedbackGiven, SessionEnded)


def _guard_turns(node: Node, agent: NodeAgent) -> None:
    """Every answered or failed request of a tenant goes to the node-local guard."""
    if node.service is None:
        return

    def on_event(e: ConversationEvent) -> None:
        if isinstance(e, TurnServed):
            agent.observe_request(e.tenant)
        elif isinstance(e, RequestFailed) and e.tenant:
            agent.observe_request(e.tenant, code=e.code, cause=e.cause)

    node.service.events.subscribe(on_event, TurnServed, RequestFailed)


def attach_agent(
    node: Node,
    *,
    url: str,
    node_id: str,
    region: str,
    user: str | None = None,
    password: str | None = None,
    heartbeat_s: float = 5.0,
    telemetry_s: float = 10.0,
    flush_timeout_s: float = 3.0,
    tls: TlsFiles | None = None,
    domain: str | None = None,
    guard: GuardPolicy | None = None,
) -> NodeAgent:
    """An agent (not yet started) that keeps ``node`` on its region's desired state; ``tls``
    verifies the NATS server and presents the node's certificate (its NATS identity)."""
    from kefu.natsbus import NatsBus, NatsOptions
    from kefu.natsserver import inbox_prefix

    assert node.runtime is not None
    store = node.runtime.store or ModelStore(node.options.data_dir / "models", node.runtime.trust)
    options = AgentOptions(
        node_id=node_id,
        region=region,
        data_dir=node.options.data_dir,
        listen=f"{node.options.listen.rsplit(':', 1)[0]}:{node.port}",
        heartbeat_s=heartbeat_s,
        telemetry_s=telemetry_s,
        flush_timeout_s=flush_timeout_s,
        guard=guard or GuardPolicy(),
    )
    nats_options = NatsOptions(
        servers=[url],
        user=user,
        password=password,
        name=f"kefu-node-{node_id}",
        inbox_prefix=inbox_prefix(user) if user else "_INBOX",
        tls=tls,
        domain=domain,
    )

    async def connect() -> Bus:
        return await NatsBus.connect(nats_options)

    recorder = TelemetryRecorder(node_id=node_id, region=region)
    _observe_turns(node, recorder)
    if node.audit is not None:
        # Audit records leave the node with the telemetry (ids and counts only, no text).
        node.audit.listeners.append(recorder.record_audit)
    target = ServingTarget(node, node_id=node_id)
    agent = NodeAgent(options, target, store, connect=connect, telemetry=recorder)
    _guard_turns(node, agent)
    return agent


def default_node_id() -> str:
    import socket

    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower())[:40]
    return host.strip("-") or "node"


def nats_login(
    url: str | None, credentials: Path | None
) -> tuple[str, str | None, str | None, TlsFiles | None, str | None]:
    """(url, user, password, TLS files, JetStream domain) from a URL and/or a credentials
    file holding one."""
    user, password, tls, domain = None, None, None, None
    if credentials is not None:
        creds = load_credentials(credentials, require_url=not url)
        url, user, password, tls = url or creds.url, creds.user, creds.password, creds.tls
        domain = creds.domain
    if not url:
        raise PermanentError(
            "no NATS URL: give one, or a credentials file holding it / 缺少 NATS 地址"
        )
    return url, user, password, tls, domain


@dataclass(kw_only=True)
class ReplicationLink:
    """node.yaml ``replication:`` resolved: the ZONE connection, the zone and its key file."""

    url: str | None = None
    credentials: Path | None = None
    zone: str
    key_file: Path
    batch: int = 64
    timeout_s: float = 5.0

    def build(self, *, region: str, node_id: str) -> Replication:
        """The replication service (not started); a bad key or credentials file is a clear
        ConfigError-like PermanentError, never a traceback."""
        from kefu.natsbus import NatsOptions
        from kefu.natsserver import inbox_prefix

        # The leaf's ZONE account: its JetStream is the region's own (no domain prefix).
        url, user, password, tls, _ = nats_login(self.url, self.credentials)
        try:
            text = self.key_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise PermanentError(
                f"replication: cannot read the zone key {self.key_file}: {exc.strerror} / "
                "无法读取区域复制密钥"
            ) from exc
        return Replication(
            ReplicationOptions(
                region=region,
                zone_key=ZoneKey.parse(self.zone, text),
                nats=NatsOptions(
                    servers=[url],
                    user=user,
                    password=password,
                    tls=tls,
                    name=f"{node_id}-repl",
                    # The replication login may read only its own inbox (kefu/natstopology.py).
                    inbox_prefix=inbox_prefix(f"{node_id}-repl"),
                    timeout_s=self.timeout_s,
                ),
                batch=self.batch,
                timeout_s=self.timeout_s,
            )
        )


@dataclass(kw_only=True)
class ControlPlaneLink:
    """How a node reaches its control plane: from flags or from node.yaml ``control_plane:``."""

    url: str | None = None
    credentials: Path | None = None
    region: str = "local"
    node_id: str | None = None
    telemetry_s: float = 10.0
    heartbeat_s: float = 5.0
    flush_timeout_s: float = 3.0
    guard: GuardPolicy | None = None
    replication: ReplicationLink | None = None

    @classmethod
    def from_config(cls, resolved: ResolvedNodeConfig) -> ControlPlaneLink | None:
        cp = resolved.config.control_plane
        if cp is None:
            return None
        return cls(
            url=cp.url,
            credentials=resolved.credentials_file,
            region=cp.region,
            node_id=cp.node_id,
            telemetry_s=cp.telemetry_interval_s,
            heartbeat_s=cp.heartbeat_s,
            flush_timeout_s=cp.flush_timeout_s,
            guard=GuardPolicy(**resolved.config.guard.model_dump()),
            replication=_replication_link(resolved),
        )


def _replication_link(resolved: ResolvedNodeConfig) -> ReplicationLink | None:
    r = resolved.config.replication
    if r is None or resolved.replication_key_file is None:
        return None
    return ReplicationLink(
        url=r.url,
        credentials=resolved.replication_credentials,
        zone=r.zone,
        key_file=resolved.replication_key_file,
        batch=r.batch,
        timeout_s=r.timeout_s,
    )


@asynccontextmanager
async def follow_control_plane(node: Node, link: ControlPlaneLink) -> AsyncIterator[NodeAgent]:
    """Run the agent for a started ``node``. On exit the node is drained too (idempotent, so
    the caller's own ``Node`` context exits harmlessly); ``agent.shutdown`` then tells what
    became of the telemetry."""
    url, user, password, tls, domain = nats_login(link.url, link.credentials)
    agent = attach_agent(
        node,
        url=url,
        node_id=link.node_id or user or default_node_id(),
        region=link.region,
        user=user,
        password=password,
        tls=tls,
        domain=domain,
        heartbeat_s=link.heartbeat_s,
        telemetry_s=link.telemetry_s,
        flush_timeout_s=link.flush_timeout_s,
        guard=link.guard,
    )
    replication = None
    if link.replication is not None:
        replication = link.replication.build(region=link.region, node_id=agent.options.node_id)
        assert isinstance(agent.target, ServingTarget) and node.service is not None
        agent.target.replication = replication
        node.service.importer = replication.import_session
        await replication.start()
    await agent.start()
    try:
        yield agent
    finally:
        # No reconcile may swap a tenant while the node drains; the turns that finish during
        # the drain are recorded, so the telemetry is flushed only after it. Changes not yet
        # shipped stay in the outbox on disk and go after the restart.
        try:
            await asyncio.shield(agent.stop())
            await asyncio.shield(node.drain())
        finally:
            if replication is not None:
                await asyncio.shield(replication.close())
            await asyncio.shield(agent.close())


def describe_shutdown(s: TelemetryShutdown) -> str:
    """One line for the operator: where the last telemetry went."""
    text = (
        f"telemetry: {s.sent} batch(es) sent, {s.saved} saved for after the restart, "
        f"{s.dropped} dropped / 统计数据：已发送 {s.sent} 批，已保存 {s.saved} 批（重启后发送），"
        f"丢弃 {s.dropped} 批"
    )
    if s.save_error:
        text += f"; could not save: {s.save_error} / 保存失败"
    return text
