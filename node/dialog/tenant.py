"""Tenants on a node: one YAML config, one SQLite database, one knowledge base each.

:class:`TenantRegistry` loads every tenant config it is given. A tenant whose YAML is broken is
refused with its error (file, line, field) and the others still load, so one bad file never
takes a node down. Authentication compares a presented API key against every tenant's key
hashes in constant time.

A tenant whose config lists no API keys (the demo tenant out of the box) gets a generated key
kept in ``<data-dir>/<tenant>.key`` (mode 0600): created and printed once on first start,
reused afterwards so clients keep working across restarts.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kefu.config import TenantConfig, load_tenant_config
from kefu.config.tenant import generate_api_key, hash_api_key
from kefu.errors import KefuError
from kefu.node.dialog.flow import FlowEngine
from kefu.node.dialog.knowledge import KnowledgeBase, entries_from_dicts
from kefu.node.dialog.plugins import PluginRunner, SecretStore
from kefu.node.nlu.entities import (
    DEFAULT_PATTERNS,
    EntityExtractor,
    EntityPattern,
    LookupTable,
)
from kefu.node.sessions.store import SessionStore
from kefu.rotation import usable

__all__ = [
    "DEMO_TENANT_CONFIG",
    "Tenant",
    "TenantLoadError",
    "TenantRegistry",
    "demo_key_path",
    "new_key_notice",
]

log = logging.getLogger("kefu.node.tenant")

#: Opens one tenant's session store: (data_dir, tenant id) → store. The server passes the
#: SQLite adapter's (:func:`kefu.node.sessions.sqlite_store.sqlite_store_opener`).
StoreOpener = Callable[[Path, str], Awaitable[SessionStore]]

DEMO_TENANT_CONFIG = Path(__file__).parent.parent / "tenants" / "demo-shop.yaml"

# The node's normaliser for each built-in entity type when a tenant pattern names none.
_NORMALISER_FOR_TYPE = {
    "order_number": "order_number",
    "tracking_number": "tracking_number",
    "phone": "phone",
    "amount": "amount",
    "date": "date",
    "email": "email",
}


@dataclass
class Tenant:
    id: str
    config: TenantConfig
    store: SessionStore
    kb: KnowledgeBase
    entities: EntityExtractor
    source: Path
    #: Hashes accepted besides the config's own (the generated demo key).
    extra_key_hashes: tuple[str, ...] = ()
    #: Task flows and the plugins they call (None when the config declares none).
    plugins: PluginRunner | None = None
    flows: FlowEngine | None = None
    #: Expiry (Unix seconds) of extra hashes that expire: a rotated key's successor period
    #: (from the control plane's desired state). Absent = never.
    key_expiry: Mapping[str, float] = field(default_factory=dict)
    #: Wall clock for those expiries (tests inject one).
    clock: Callable[[], float] = time.time

    def _extra_match(self, key: str) -> str | None:
        """The extra hash ``key`` matches (expired or not), checking all without early exit."""
        digest = hash_api_key(key)
        found = None
        for h in self.extra_key_hashes:
            if hmac.compare_digest(digest, h):
                found = h
        return found

    def _extra_ok(self, key: str) -> bool:
        h = self._extra_match(key)
        return h is not None and usable(self.key_expiry.get(h, 0.0), self.clock())

    def roles_for(self, key: str) -> frozenset[str]:
        """The roles of ``key`` (empty when it is not this tenant's or has expired); keys
        from the control plane and the generated demo key have every role."""
        record = self.config.find_key(key)
        if record is not None:
            return frozenset(record.roles)
        if self._extra_ok(key):
            return frozenset({"channel", "admin", "agent"})
        return frozenset()

    def key_matches(self, key: str) -> bool:
        """Constant time over all of this tenant's keys: no early exit on a match."""
        ok = self.config.check_key(key)
        return self._extra_ok(key) or ok

    def key_expired_at(self, key: str) -> float | None:
        """When ``key`` (a rotated key of this tenant) expired, or None if it is not one."""
        h = self._extra_match(key)
        if h is None:
            return None
        expires = self.key_expiry.get(h, 0.0)
        return None if usable(expires, self.clock()) else expires


@dataclass(frozen=True)
class TenantLoadError:
    source: Path
    error: str


def demo_key_path(data_dir: Path, tenant_id: str) -> Path:
    return data_dir / f"{tenant_id}.key"


def new_key_notice(data_dir: Path, tenant_id: str, key: str) -> str:
    """What a node prints once for a generated key (every entry point says it the same way)."""
    path = demo_key_path(data_dir, tenant_id)
    return f"API key for tenant {tenant_id} (shown once, kept in {path}, mode 0600):\n  {key}"


def _generated_key(data_dir: Path, tenant_id: str) -> tuple[str, bool]:
    """The tenant's generated key and whether it was created just now."""
    path = demo_key_path(data_dir, tenant_id)
    if path.exists():
        return path.read_text(encoding="utf-8").strip(), False
    data_dir.mkdir(parents=True, exist_ok=True)
    key = generate_api_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    return key, True


def build_entity_extractor(config: TenantConfig) -> EntityExtractor:
    """Tenant patterns and lookups on top of the node's defaults (overlaps go by priority)."""
    ents = config.entities
    patterns = [
        EntityPattern(
            type=p.type,
            regex=p.regex,
            langs=tuple(p.languages),
            normaliser=p.normaliser or _NORMALISER_FOR_TYPE.get(p.type, "text"),
            priority=p.priority,
            name=p.id,
            ignore_case=p.ignore_case,
        )
        for p in ents.patterns
    ]
    lookups = [
        LookupTable(
            type=lk.type, values=dict(lk.values), langs=tuple(lk.languages), priority=lk.priority
        )
        for lk in ents.lookups
    ]
    return EntityExtractor([*DEFAULT_PATTERNS, *patterns], lookups)


def build_knowledge_base(config: TenantConfig, source: Path) -> KnowledgeBase:
    rows = [e.model_dump() for e in config.kb.entries]
    return KnowledgeBase(entries_from_dicts(rows, path=source))


@dataclass
class TenantRegistry:
    data_dir: Path
    open_store: StoreOpener
    tenants: dict[str, Tenant] = field(default_factory=dict)
    errors: list[TenantLoadError] = field(default_factory=list)
    #: Keys generated at this start, to be shown once: tenant id → key.
    new_keys: dict[str, str] = field(default_factory=dict)
    #: Called with ``(tenant_id, tenant)`` after a tenant is added or changed and with
    #: ``(tenant_id, None)`` after it is removed, so per-tenant structures built from the
    #: tenants present at start (rate limits, metrics series) follow later changes.
    listeners: list[Callable[[str, Tenant | None], None]] = field(default_factory=list)
    #: Wall clock for key expiries (tests inject one).
    clock: Callable[[], float] = time.time
    _retired: list[Tenant] = field(default_factory=list, repr=False)
    _retired_plugins: list[PluginRunner] = field(default_factory=list, repr=False)

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        config_paths: Sequence[Path],
        *,
        open_store: StoreOpener,
    ) -> TenantRegistry:
        reg = cls(Path(data_dir), open_store)
        for path in config_paths:
            try:
                await reg._load(Path(path))
            except KefuError as exc:
                # One broken tenant is refused; the others keep serving.
                reg.errors.append(TenantLoadError(Path(path), str(exc)))
                log.error("tenant config refused: %s", exc)
        return reg

    async def _load(self, path: Path) -> None:
        config = load_tenant_config(path)
        tid = config.tenant.id
        if tid in self.tenants:
            raise KefuError(
                f"{path}: tenant '{tid}' is already loaded from {self.tenants[tid].source}"
            )
        if not config.tenant.enabled:
            log.info("tenant %s is disabled in %s", tid, path)
            return
        kb = build_knowledge_base(config, path)
        entities = build_entity_extractor(config)
        extra: tuple[str, ...] = ()
        if not config.api_keys:
            key, created = _generated_key(self.data_dir, tid)
            extra = (hash_api_key(key),)
            if created:
                self.new_keys[tid] = key
        plugins, flows = self._plugins_and_flows(config)
        store = await self.open_store(self.data_dir, tid)
        self.tenants[tid] = Tenant(
            id=tid,
            config=config,
            store=store,
            kb=kb,
            entities=entities,
            source=path,
            extra_key_hashes=extra,
            plugins=plugins,
            flows=flows,
            clock=lambda: self.clock(),
        )
        self._notify(tid)

    def _plugins_and_flows(
        self, config: TenantConfig
    ) -> tuple[PluginRunner | None, FlowEngine | None]:
        """The tenant's plugin runner and task flows (None, None when it declares no plugins)."""
        if not config.plugins:
            return None, None
        runner = PluginRunner(config, SecretStore(self.data_dir / "secrets"))

        async def call(pid: str, inputs: Mapping[str, str], lang: str) -> Any:
            return await runner.call(pid, inputs, lang=lang)

        return runner, FlowEngine(config, call) if config.flows else None

    def _notify(self, tenant_id: str) -> None:
        tenant = self.tenants.get(tenant_id)
        for listener in self.listeners:
            listener(tenant_id, tenant)

    async def apply(
        self,
        config: TenantConfig,
        *,
        source: Path,
        key_hashes: Sequence[str] = (),
        key_expiry: Mapping[str, float] | None = None,
    ) -> Tenant:
        """Serve ``config`` (already validated) from now on: build its knowledge base and
        entity extractor first, then swap the tenant in with one dict assignment, so turns
        in flight finish on the old config and new turns see the new one. The SQLite store
        is kept across swaps. ``key_hashes`` are accepted besides the config's own keys, each
        until its ``key_expiry`` (hash → Unix seconds) when it has one."""
        tid = config.tenant.id
        kb = build_knowledge_base(config, source)
        entities = build_entity_extractor(config)
        old = self.tenants.get(tid)
        extra = tuple(key_hashes)
        if not config.api_keys and not extra:
            key, created = _generated_key(self.data_dir, tid)
            extra = (hash_api_key(key),)
            if created:
                self.new_keys[tid] = key
        plugins, flows = self._plugins_and_flows(config)
        store = old.store if old is not None else await self.open_store(self.data_dir, tid)
        tenant = Tenant(
            id=tid,
            config=config,
            store=store,
            kb=kb,
            entities=entities,
            source=source,
            extra_key_hashes=extra,
            plugins=plugins,
            flows=flows,
            key_expiry=dict(key_expiry or {}),
            clock=lambda: self.clock(),
        )
        self.tenants[tid] = tenant  # the swap: one assignment, no await
        if old is not None and old.plugins is not None:
            self._retired_plugins.append(old.plugins)  # turns in flight may still call it
        self._notify(tid)
        return tenant

    async def variant(self, config: TenantConfig, *, source: Path) -> Tenant:
        """A tenant built from ``config`` that shares the served tenant's store and keys but
        is never found by key: a config canary's sessions run it (see node/dialog/split.py).
        The knowledge base is built off the event loop."""
        tid = config.tenant.id
        base = self.tenants.get(tid)
        if base is None:
            raise KefuError(f"tenant {tid!r} is not served here: no canary config without it")
        kb, entities = await asyncio.to_thread(
            lambda: (build_knowledge_base(config, source), build_entity_extractor(config))
        )
        plugins, flows = self._plugins_and_flows(config)
        return Tenant(
            id=tid,
            config=config,
            store=base.store,
            kb=kb,
            entities=entities,
            source=source,
            extra_key_hashes=base.extra_key_hashes,
            plugins=plugins,
            flows=flows,
        )

    def retire(self, tenant: Tenant) -> None:
        """A variant no longer used: its plugin clients close with the registry (turns in
        flight may still call them)."""
        if tenant.plugins is not None:
            self._retired_plugins.append(tenant.plugins)

    async def remove(self, tenant_id: str) -> bool:
        """Stop serving a tenant. Its store stays open until :meth:`close`, because turns in
        flight may still be writing to it."""
        tenant = self.tenants.pop(tenant_id, None)
        if tenant is not None:
            self._retired.append(tenant)
            self._notify(tenant_id)
        return tenant is not None

    def authenticate(self, key: str | None) -> Tenant | None:
        """The tenant owning ``key``; every tenant is checked so timing reveals nothing."""
        if not key:
            return None
        found: Tenant | None = None
        for tenant in self.tenants.values():
            if tenant.key_matches(key) and found is None:
                found = tenant
        return found

    def expired_key(self, key: str | None) -> tuple[str, float] | None:
        """(tenant, expiry) when ``key`` is a rotated key whose successor period is over, so
        the refusal can say so; only asked after :meth:`authenticate` failed."""
        if not key:
            return None
        for tenant in self.tenants.values():
            expired = tenant.key_expired_at(key)
            if expired is not None:
                return tenant.id, expired
        return None

    async def close(self) -> None:
        for tenant in [*self.tenants.values(), *self._retired]:
            await tenant.store.close()
            if tenant.plugins is not None:
                await tenant.plugins.close()
        for runner in self._retired_plugins:
            await runner.close()
