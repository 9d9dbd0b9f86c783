"""The node agent: converges a node on its region's desired state and reports what it serves.

Lifecycle (:class:`NodeAgent` is an async context manager):

1. **Start offline-first**: the last-known-good documents persisted under
   ``<data-dir>/agent/lkg/`` are applied before any network call, so a node whose control plane
   or NATS is down serves exactly what it served before.
2. **Connect** in the background with capped exponential backoff and jitter (no busy loop);
   nats-py then reconnects by itself, and watchers are re-created after every reconnect.
3. **Watch** ``kefu_desired_<region>``: each (re)created watcher delivers a full snapshot, then
   changes. Only after a snapshot does the agent plan removals.
4. **Reconcile** with the pure :func:`kefu.node.agent.reconcile.plan`: per tenant, serially, fetch
   the bundles it lacks from the object store (SHA-256 of the packed bundle checked, then the
   signature and every file hash by the model store), load and warm them, then validate the
   config, pin the assigned versions and swap the tenant in. Tenants run in parallel. A
   document the node cannot accept (invalid config, untrusted bundle) is **refused**: the
   last-known-good keeps serving and the refusal is reported in the node status.
5. **Report**: heartbeat = the :class:`~kefu.wire.NodeStatus` document under ``kefu_nodes/<id>``
   (also written right after every reconcile); telemetry batches every interval, buffered
   while offline (bounded, oldest dropped and counted) and sent in order on reconnect.
6. **Shut down** (:meth:`NodeAgent.stop`, then :meth:`NodeAgent.close` once the node has
   drained, so the last turns are counted): the open window is closed and the buffer flushed
   to NATS within ``flush_timeout_s``; what is still undelivered is saved to
   ``<data-dir>/agent/telemetry-pending.jsonl`` and sent first after the restart
   (:attr:`NodeAgent.shutdown` says how many batches went which way).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kefu import __version__
from kefu.bus import Bus, BusUnavailable, NotFound, cancel_and_wait
from kefu.config import TenantConfig, parse_tenant_config
from kefu.errors import KefuError, PermanentError, TemporaryError
from kefu.models.store import ModelStore
from kefu.node.agent.guard import GuardPolicy, Probation, held, is_failure
from kefu.node.agent.guard_keeper import GuardKeeper, count_boot
from kefu.node.agent.reconcile import (
    ApplySplit,
    ApplyTenant,
    FetchBundle,
    LoadBundle,
    LocalState,
    NodeAction,
    RemoveTenant,
    pin_models,
    plan,
)
from kefu.node.agent.storage import BundleFetcher, LastKnownGood, NodeTarget
from kefu.node.agent.telemetry import TelemetryRecorder, TelemetryShipper, TelemetryShutdown
from kefu.wire import (
    BUCKET_NODES,
    DesiredTenant,
    NodeStatus,
    ObservedTenant,
    WireError,
    check_id,
    decode,
    desired_bucket,
    digest,
    encode,
)

__all__ = ["AgentOptions", "NodeAgent", "NodeTarget", "TelemetryShutdown"]

log = logging.getLogger("kefu.node.agent.agent")


@dataclass(kw_only=True)
class AgentOptions:
    node_id: str
    region: str
    data_dir: Path
    listen: str = ""
    heartbeat_s: float = 5.0
    telemetry_s: float = 10.0
    max_telemetry_buffered: int = 360
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    #: How long one bundle download may take before it is retried later.
    fetch_timeout_s: float = 120.0
    #: A model version no tenant uses any more is unloaded after this long.
    unload_grace_s: float = 30.0
    #: On close: how long the last telemetry may take to reach NATS before it is saved.
    flush_timeout_s: float = 3.0
    #: The node-local guard (node.yaml ``guard:``): a failing new version is reverted.
    guard: GuardPolicy = field(default_factory=GuardPolicy)

    def __post_init__(self) -> None:
        check_id(self.node_id, "node id")
        check_id(self.region, "region")


def _backoff(attempt: int, lo: float, hi: float) -> float:
    return min(hi, lo * 2**attempt) * random.uniform(0.8, 1.2)


@dataclass
class _Flags:
    synced: bool = False
    connected: asyncio.Event = field(default_factory=asyncio.Event)


class NodeAgent:
    def __init__(
        self,
        options: AgentOptions,
        target: NodeTarget,
        store: ModelStore,
        *,
        connect: Callable[[], Awaitable[Bus]],
        telemetry: TelemetryRecorder | None = None,
    ):
        self.options = options
        self.target = target
        self.store = store
        self._connect = connect
        self.telemetry = telemetry or TelemetryRecorder(
            node_id=options.node_id,
            region=options.region,
            max_buffered=options.max_telemetry_buffered,
        )
        self.bus: Bus | None = None
        self.desired: dict[str, DesiredTenant] = {}
        self.observed: dict[str, ObservedTenant] = {}
        self.applied: dict[str, str] = {}
        self.applied_base: dict[str, str] = {}
        self.refused: dict[str, str] = {}
        self.started_at = time.time()
        self.reconciles = 0
        #: Why the last reconcile could not finish ("" once one finishes); in the status.
        self.reconcile_error = ""
        self.reconcile_error_at = 0.0
        self._flags = _Flags()
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._tenant_locks: dict[str, asyncio.Lock] = {}
        self.lkg = LastKnownGood(options.data_dir / "agent" / "lkg")
        self.guard = GuardKeeper(
            options.data_dir / "agent" / "guard.json",
            policy=options.guard,
            node_id=options.node_id,
        )
        #: tenant → the document it serves (what a guard revert goes back to).
        self._docs: dict[str, DesiredTenant] = {}
        self._reverting: set[asyncio.Task[None]] = set()
        #: Starts of this node on its data directory (set by :meth:`start`).
        self.boots = 0
        self.fetcher = BundleFetcher(
            store, target, bus=lambda: self.bus, fetch_timeout_s=options.fetch_timeout_s
        )
        self.shipper = TelemetryShipper(
            self.telemetry,
            bus=lambda: self.bus,
            region=options.region,
            node_id=options.node_id,
            pending_path=options.data_dir / "agent" / "telemetry-pending.jsonl",
            interval_s=options.telemetry_s,
            flush_timeout_s=options.flush_timeout_s,
        )
        self._report_failed = False
        #: Set by :meth:`close`.
        self.shutdown: TelemetryShutdown | None = None
        self._parsed: dict[tuple[str, str], TenantConfig] = {}
        #: Fired after every reconcile pass (tests and benchmarks wait on it).
        self.changed = asyncio.Condition()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> NodeAgent:
        self.boots = await asyncio.to_thread(count_boot, self.options.data_dir / "agent" / "boots")
        await asyncio.to_thread(self.guard.load)
        await self._restore_lkg()
        self.shipper.restore()
        self._tasks = [
            asyncio.create_task(self._connect_loop(), name="kefu-agent-connect"),
            asyncio.create_task(self._watch_loop(), name="kefu-agent-watch"),
            asyncio.create_task(self._reconcile_loop(), name="kefu-agent-reconcile"),
            asyncio.create_task(self._heartbeat_loop(), name="kefu-agent-heartbeat"),
            asyncio.create_task(
                self.shipper.run(self._flags.connected), name="kefu-agent-telemetry"
            ),
        ]
        return self

    async def stop(self) -> None:
        """Stop following (no reconcile, heartbeat or telemetry task runs after it); the bus
        stays open for :meth:`close`. Idempotent."""
        tasks, self._tasks = self._tasks, []
        reverting, self._reverting = self._reverting, set()
        await cancel_and_wait(*tasks, *reverting)

    async def close(self) -> TelemetryShutdown:
        """Stop, flush the telemetry within ``flush_timeout_s``, save what is left, close the
        bus. Idempotent: a second call returns the first call's outcome."""
        await self.stop()
        if self.shutdown is not None:
            return self.shutdown
        self.shutdown = await self.shipper.close()
        if self.bus is not None:
            bus, self.bus = self.bus, None
            try:
                async with asyncio.timeout(self.options.flush_timeout_s + 1.0):
                    await bus.close()
            except (KefuError, TimeoutError) as exc:
                log.warning("closing the NATS connection: %s", exc or "timeout")
        return self.shutdown

    async def __aenter__(self) -> NodeAgent:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.close())

    # ------------------------------------------------------------------ last-known-good

    async def _restore_lkg(self) -> None:
        for path, doc in self.lkg.documents():
            try:
                if not isinstance(doc, DesiredTenant):
                    raise doc
                defaults = {b.ref for b in doc.models.values()}
                actions: list[NodeAction] = [
                    LoadBundle(bundle=b, activate=b.ref in defaults) for b in doc.bundles()
                ]
                actions.append(ApplyTenant(doc=doc))
                await self._run_tenant(doc.tenant, actions, offline=True)
                log.info(
                    "serving %s from last-known-good (config v%d)", doc.tenant, doc.config_version
                )
            except (KefuError, OSError) as exc:
                log.error("last-known-good %s unusable: %s", path, exc)

    # ------------------------------------------------------------------ connection

    async def _connect_loop(self) -> None:
        attempt = 0
        while self.bus is None:
            try:
                self.bus = await self._connect()
                self._flags.connected.set()
                log.info("agent %s connected", self.options.node_id)
                return
            except TemporaryError as exc:
                delay = _backoff(
                    attempt, self.options.reconnect_min_s, self.options.reconnect_max_s
                )
                log.warning("control plane unreachable (%s); retrying in %.1fs", exc, delay)
                attempt += 1
                await asyncio.sleep(delay)

    async def _watch_loop(self) -> None:
        await self._flags.connected.wait()
        bucket = desired_bucket(self.options.region)
        attempt = 0
        while True:
            assert self.bus is not None
            snapshot: dict[str, DesiredTenant] | None = {}
            try:
                async for e in self.bus.kv_watch(bucket):
                    if e is None:
                        if snapshot is not None:
                            self.desired = snapshot
                            snapshot = None
                            self._flags.synced = True
                            attempt = 0
                            self._kick.set()
                        continue
                    target = snapshot if snapshot is not None else self.desired
                    if e.deleted:
                        target.pop(e.key, None)
                    else:
                        try:
                            target[e.key] = decode(DesiredTenant, e.value, what=f"{bucket}/{e.key}")
                        except WireError as exc:
                            log.error("ignoring unreadable desired state: %s", exc)
                            continue
                    if snapshot is None:
                        self._kick.set()
            except (BusUnavailable, NotFound) as exc:
                delay = _backoff(
                    attempt, self.options.reconnect_min_s, self.options.reconnect_max_s
                )
                log.info("watch %s ended (%s); re-creating in %.1fs", bucket, exc, delay)
                attempt += 1
                await asyncio.sleep(delay)

    # ------------------------------------------------------------------ reconcile

    def local_state(self) -> LocalState:
        needed = {b.ref: b for d in self.desired.values() for b in d.bundles()}
        stored = frozenset(r for r, b in needed.items() if self.fetcher.stored(b))
        return LocalState(
            applied=dict(self.applied),
            applied_base=dict(self.applied_base),
            refused=dict(self.refused),
            stored=stored,
            loaded=self.target.loaded(),
            held=frozenset(t for t, d in self.desired.items() if held(self.guard.holds, d)),
        )

    async def reconcile_once(self) -> None:
        if not self._flags.synced:
            return  # never plan removals from a partial view
        self.guard.release(self.desired)
        await self._save_guard()
        local = self.local_state()
        for tenant in local.held:
            self._mark_held(tenant)
        actions = plan(self.desired, local)
        results = await asyncio.gather(
            *(self._run_tenant(t, a) for t, a in actions.items()), return_exceptions=True
        )
        self.reconciles += 1
        failed = [r for r in results if isinstance(r, BaseException)]
        # A node that cannot apply its desired state says so in its status, not only its log.
        self.reconcile_error = "; ".join(str(r) or type(r).__name__ for r in failed)[:2000]
        if failed:
            self.reconcile_error_at = time.time()
        await self._report()
        async with self.changed:
            self.changed.notify_all()
        for r in failed:
            raise r  # a temporary failure: the loop retries the whole plan

    async def _reconcile_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            try:
                await self.reconcile_once()
            except TemporaryError as exc:
                log.warning("reconcile incomplete (%s); retrying", exc)
                await asyncio.sleep(self.options.reconnect_min_s)
                self._kick.set()

    async def _run_tenant(
        self, tenant: str, actions: list[NodeAction], *, offline: bool = False
    ) -> None:
        lock = self._tenant_locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            doc: DesiredTenant | None = None
            try:
                for action in actions:
                    if isinstance(action, FetchBundle):
                        await self.fetcher.fetch(action.bundle)
                    elif isinstance(action, LoadBundle):
                        await self.fetcher.load(action.bundle, activate=action.activate)
                    elif isinstance(action, ApplyTenant):
                        doc = action.doc
                        await self._apply(doc, persist=not offline)
                    elif isinstance(action, ApplySplit):
                        doc = action.doc
                        await self._apply_split(doc, persist=not offline)
                    elif isinstance(action, RemoveTenant):
                        await self.target.remove_tenant(action.tenant)
                        self.applied.pop(tenant, None)
                        self.applied_base.pop(tenant, None)
                        self.target.apply_split(tenant, None)
                        self.observed.pop(tenant, None)
                        self._docs.pop(tenant, None)
                        self.guard.forget(tenant)
                        self.lkg.remove(tenant)
                        log.info("tenant %s removed from this node", tenant)
            except PermanentError as exc:
                doc = doc or next(
                    (a.doc for a in actions if isinstance(a, ApplyTenant | ApplySplit)), None
                )
                if doc is None or offline:
                    raise
                self._refuse(doc, exc)

    def _refuse(self, doc: DesiredTenant, exc: Exception) -> None:
        fp = doc.fingerprint()
        self.refused[doc.tenant] = fp
        prev = self.observed.get(doc.tenant, ObservedTenant())
        self.observed[doc.tenant] = prev.model_copy(
            update={
                "state": "refused",
                "refused_fingerprint": fp,
                "error": str(exc)[:2000],
            }
        )
        log.error(
            "refused desired state for %s (config v%d); %s: %s",
            doc.tenant,
            doc.config_version,
            "keeping last-known-good" if doc.tenant in self.applied else "tenant not served",
            exc,
        )

    async def _parse(self, doc: DesiredTenant, *, canary: bool = False) -> TenantConfig:
        """Validate the config text (or a config canary's), off the event loop (the YAML parser
        takes ~0.3 s on the demo config). A model-only rollout or a weight change leaves the
        text unchanged, so the validated config is reused, keyed by the digest of the text
        itself (never by what the document claims); one entry per tenant and role."""
        split = doc.split
        text = split.config_yaml if canary and split is not None else doc.config_yaml
        version = split.config_version if canary and split is not None else doc.config_version
        role = "canary" if canary else "served"
        key = (f"{doc.tenant}/{role}", digest(text))
        cached = self._parsed.get(key)
        if cached is None:
            source = f"{doc.tenant}@v{version}"
            cached = await asyncio.to_thread(parse_tenant_config, text, source=source)
            self._parsed = {k: v for k, v in self._parsed.items() if k[0] != key[0]}
            self._parsed[key] = cached
        return cached

    async def _apply(self, doc: DesiredTenant, *, persist: bool) -> None:
        config = pin_models(await self._parse(doc), doc)
        previous = self._docs.get(doc.tenant)
        await self.target.apply_tenant(doc, config)
        await self._apply_split(doc, persist=False)
        if persist:
            await asyncio.to_thread(self.lkg.save, doc)
            # A new version is watched for a while: failing turns revert it (see guard.py).
            self.guard.applied(previous, doc)
            await self._save_guard()
        log.info(
            "tenant %s serving config v%d with %s",
            doc.tenant,
            doc.config_version,
            ", ".join(b.ref for b in doc.models.values()) or "its configured models",
        )

    async def _apply_split(self, doc: DesiredTenant, *, persist: bool) -> None:
        """The rollout split alone: a weight change is one assignment in the node, no
        re-parse, no tenant swap (a config canary is built once per canary config)."""
        canary = None
        if doc.split is not None and doc.split.config_yaml:
            canary = pin_models(await self._parse(doc, canary=True), doc)
        await self.target.apply_canary_config(doc, canary)
        self.target.apply_split(doc.tenant, doc.split)
        fp = doc.fingerprint()
        self._docs[doc.tenant] = doc
        self.applied[doc.tenant] = fp
        self.applied_base[doc.tenant] = doc.base_fingerprint()
        self.refused.pop(doc.tenant, None)
        split = doc.split
        self.observed[doc.tenant] = ObservedTenant(
            state="serving",
            fingerprint=fp,
            config_version=doc.config_version,
            models={slot: b.ref for slot, b in doc.models.items()}
            | {
                f"{scenario}/{slot}": b.ref
                for scenario, pins in doc.scenario_models.items()
                for slot, b in pins.items()
            },
            rollout_id=split.rollout_id if split is not None else "",
            canary_weight=split.weight_for(self.options.node_id) if split is not None else 0.0,
        )
        if persist:
            await asyncio.to_thread(self.lkg.save, doc)
            log.info(
                "tenant %s rollout split %s at %.0f%% on this node",
                doc.tenant,
                split.rollout_id if split is not None else "(none)",
                100 * (split.weight_for(self.options.node_id) if split is not None else 0.0),
            )

    def _observed_now(self) -> dict[str, ObservedTenant]:
        """The observed tenants with the live sessions per arm and rollback switches."""
        out = {}
        for tenant, seen in self.observed.items():
            canary, baseline, switched = self.target.split_report(tenant)
            out[tenant] = seen.model_copy(
                update={
                    "sessions_canary": canary if seen.rollout_id else 0,
                    "sessions_baseline": baseline if seen.rollout_id else 0,
                    "switched": switched,
                }
            )
        return out

    # ------------------------------------------------------------------ node-local guard

    def observe_request(self, tenant: str, *, code: str = "", cause: str = "") -> None:
        """One request of ``tenant`` answered (``code`` empty) or failed; called on the event
        loop for every turn. Starts the revert when the guard says so, NATS or not."""
        failed = bool(code)
        if failed and not is_failure(code, cause):
            return  # shed, rate-limited or bad input: not the version's fault
        p = self.guard.request(tenant, failed=failed)
        if p is None:
            return
        task = asyncio.create_task(self._revert(p), name=f"kefu-agent-guard-{tenant}")
        self._reverting.add(task)
        task.add_done_callback(self._reverting.discard)

    async def _revert(self, p: Probation) -> None:
        doc = p.previous
        record = self.guard.reverted(p)
        await self._save_guard()
        log.error(
            "guard: %s failed %d of %d requests since it was applied; reverting %s to %s / "
            "新版本请求失败率过高，已自动回退到上一个可用版本",
            record.bad_version,
            record.errors,
            record.turns,
            p.tenant,
            record.reverted_to,
        )
        defaults = {b.ref for b in doc.models.values()}
        actions: list[NodeAction] = [
            FetchBundle(bundle=b) for b in doc.bundles() if not self.fetcher.stored(b)
        ]
        actions += [LoadBundle(bundle=b, activate=b.ref in defaults) for b in doc.bundles()]
        actions.append(ApplyTenant(doc=doc))
        try:
            await self._run_tenant(p.tenant, actions)
        except KefuError as exc:
            log.error("guard: could not revert %s: %s", p.tenant, exc)
            return
        self.guard.forget(p.tenant)  # the revert itself is no new version to watch
        await self._save_guard()
        self._mark_held(p.tenant)
        await self._report()
        async with self.changed:
            self.changed.notify_all()

    def _mark_held(self, tenant: str) -> None:
        """The status of a tenant whose desired versions the guard reverted: refused (the
        last-known-good serves), with why."""
        record = next((r for r in reversed(self.guard.reverts) if r.tenant == tenant), None)
        seen = self.observed.get(tenant)
        if record is None or seen is None:
            return
        self.observed[tenant] = seen.model_copy(
            update={
                "state": "refused",
                "refused_fingerprint": record.bad_fingerprint,
                "error": (
                    f"node-local guard: {record.bad_version} failed {record.errors} of "
                    f"{record.turns} requests; reverted to {record.reverted_to} / "
                    f"节点守护：新版本失败率过高，已回退"
                ),
            }
        )

    async def _save_guard(self) -> None:
        if not self.guard.dirty:
            return
        try:
            await asyncio.to_thread(self.guard.save)
        except OSError as exc:
            log.error("could not save the guard state: %s", exc)

    # ------------------------------------------------------------------ reporting

    def status(self) -> NodeStatus:
        return NodeStatus(
            node_id=self.options.node_id,
            region=self.options.region,
            software_version=__version__,
            providers=self.target.providers(),
            gpu=any(
                p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
                for p in self.target.providers()
            ),
            listen=self.options.listen,
            started_at=self.started_at,
            heartbeat_at=time.time(),
            capabilities=self.target.capabilities(),
            tenants=self._observed_now(),
            models_loaded=sorted(self.target.loaded()),
            telemetry_dropped=self.telemetry.dropped,
            telemetry_buffered=self.telemetry.buffered,
            reconcile_error=self.reconcile_error,
            reconcile_error_at=self.reconcile_error_at if self.reconcile_error else 0.0,
            boots=self.boots,
            guard=self.guard.reverts,
            **self._replication_report(),
        )

    def _replication_report(self) -> dict[str, Any]:
        report = getattr(self.target, "replication_report", None)
        return report() if report is not None else {}

    async def _report(self) -> None:
        if self.bus is None:
            return
        try:
            await self.bus.kv_put(BUCKET_NODES, self.options.node_id, encode(self.status()))
            self._report_failed = False
        except KefuError as exc:
            # Logged once per outage, not per heartbeat; the loop keeps going.
            if not self._report_failed:
                log.warning("node status not delivered (will retry): %s", exc)
            self._report_failed = True

    async def _heartbeat_loop(self) -> None:
        await self._flags.connected.wait()
        while True:
            await self._report()
            await asyncio.sleep(self.options.heartbeat_s)
            await self._release_unused()

    async def _release_unused(self) -> None:
        try:
            for ref in await self.target.release_unused(self.options.unload_grace_s):
                log.info("unloaded %s: no tenant uses it any more", ref)
        except KefuError as exc:
            log.warning("could not unload unused models: %s", exc)

    # ------------------------------------------------------------------ test helpers

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Wait until ``predicate()`` holds after some reconcile pass (or raise TimeoutError)."""
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(predicate)
