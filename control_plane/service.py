"""The control plane's operations over its state in the bus (JetStream in production).

The operations are split by job: :mod:`.state` (layout, typed reads, compare-and-set, audit),
:mod:`.catalog` (config versions, model versions), :mod:`.rollouts` (staged rollouts) and this
module (tenants, regions,
assignments, what nodes report); :class:`ControlPlane` is all of them.

:class:`ControlPlane` holds no state of its own that matters: every resource lives in a
key-value bucket, bundles in the object store, every change is appended to the audit stream
(who, what, when, digests before and after). A restarted replica therefore loses nothing, and
two replicas can serve the API at once; only the leader (see :mod:`.leader`) runs the
reconciler that compiles assignments into the per-region desired state nodes watch.

Every write validates first (tenant configs through :mod:`kefu.config`, bundles through
:func:`kefu.bundle.verify_bundle`) and raises a :class:`~kefu.errors.KefuError` with a
bilingual message; the API maps those to gRPC status codes.
"""

from __future__ import annotations

import json
import secrets
import time

from kefu.bus import Conflict, snapshot
from kefu.config.tenant import generate_api_key, hash_api_key
from kefu.control_plane.guard import BUCKET_GUARD
from kefu.control_plane.regions import RegionOps
from kefu.control_plane.residency import ResidencyError
from kefu.control_plane.rollouts import RolloutOps
from kefu.control_plane.state import (
    AUDIT_NOTE,
    MAX_AUDIT_LIMIT,
    MAX_CONFIG_TEXT,
    NotFoundError,
    ensure_layout,
)
from kefu.errors import PermanentError
from kefu.model_ref import MODEL_SLOTS, VersionRef
from kefu.rotation import DEFAULT_OVERLAP_S, check_duration, expiry_after, usable
from kefu.wire import (
    BUCKET_ASSIGNMENTS,
    BUCKET_LEADER,
    BUCKET_NODES,
    BUCKET_REGISTRY,
    LEASE_KEY,
    STREAM_AUDIT,
    ApiKeyEntry,
    Assignment,
    AuditEvent,
    Lease,
    NodeStatus,
    RegionRecord,
    TenantRecord,
    assignment_key,
    check_id,
    decode,
    desired_bucket,
    encode,
)

__all__ = ["AUDIT_NOTE", "MAX_AUDIT_LIMIT", "MAX_CONFIG_TEXT", "ControlPlane", "NotFoundError"]
__all__ += ["ensure_layout"]

#: The longest lifetime an API key may be issued with (`kefu cp keys issue --ttl`).
MAX_KEY_TTL_S = 5 * 365 * 86400.0


class ControlPlane(RegionOps, RolloutOps):
    """Every operation of the central team: tenants, regions, configs, models, assignments,
    rollouts."""

    # ------------------------------------------------------------------ tenants

    async def create_tenant(self, tenant: str, *, name: str = "", actor: str) -> TenantRecord:
        check_id(tenant, "tenant")
        rec = TenantRecord(id=tenant, name=name or tenant)
        try:
            await self.bus.kv_create(BUCKET_REGISTRY, f"tenant.{tenant}", encode(rec))
        except Conflict as exc:
            raise Conflict(f"tenant {tenant!r} already exists / 租户 {tenant!r} 已存在") from exc
        await self._audit(actor, "tenant.create", f"tenant/{tenant}", tenant=tenant, after=rec)
        return rec

    async def set_tenant_enabled(self, tenant: str, enabled: bool, *, actor: str) -> TenantRecord:
        await self._tenant(tenant)

        def change(old: TenantRecord | None) -> TenantRecord:
            assert old is not None
            return old.model_copy(update={"enabled": enabled})

        old, new = await self._mutate(TenantRecord, BUCKET_REGISTRY, f"tenant.{tenant}", change)
        action = "tenant.enable" if enabled else "tenant.disable"
        await self._audit(actor, action, f"tenant/{tenant}", tenant=tenant, before=old, after=new)
        self.on_change()
        return new

    async def list_tenants(self) -> list[TenantRecord]:
        entries = await snapshot(self.bus, BUCKET_REGISTRY, "tenant.*")
        return [decode(TenantRecord, e.value) for _, e in sorted(entries.items())]

    async def get_tenant(self, tenant: str) -> TenantRecord:
        return await self._tenant(tenant)

    async def issue_key(self, tenant: str, *, actor: str, ttl_s: float = 0.0) -> tuple[str, str]:
        """A new API key: (key id, key). The key is shown once; only its hash is stored.
        ``ttl_s`` > 0 gives it an expiry; nodes refuse it afterwards."""
        await self._tenant(tenant)
        check_duration(ttl_s, what="ttl", maximum=MAX_KEY_TTL_S)
        key = generate_api_key()
        key_id = "k" + secrets.token_hex(4)
        now = self.clock()
        expires = expiry_after(now, ttl_s) if ttl_s > 0 else 0.0

        def change(old: TenantRecord | None) -> TenantRecord:
            assert old is not None
            entry = ApiKeyEntry(
                id=key_id, sha256=hash_api_key(key), created_at=now, expires_at=expires
            )
            return old.model_copy(update={"api_keys": [*old.api_keys, entry]})

        old, new = await self._mutate(TenantRecord, BUCKET_REGISTRY, f"tenant.{tenant}", change)
        await self._audit(
            actor,
            "apikey.issue",
            f"tenant/{tenant}/keys/{key_id}",
            tenant=tenant,
            before=old,
            after=new,
        )
        self.on_change()
        return key_id, key

    async def rotate_key(
        self, tenant: str, key_id: str, *, overlap_s: float = DEFAULT_OVERLAP_S, actor: str
    ) -> tuple[str, str, float]:
        """Issue a successor of ``key_id`` and let the old key work for ``overlap_s`` more
        seconds: (new key id, new key, old key's expiry). The successor inherits nothing but
        the tenant; both reach the nodes through the region's desired state."""
        check_duration(overlap_s)
        rec = await self._tenant(tenant)
        old_entry = next((k for k in rec.api_keys if k.id == key_id), None)
        if old_entry is None:
            raise NotFoundError(f"tenant {tenant!r} has no key {key_id!r} / 无此密钥")
        now = self.clock()
        if old_entry.revoked or not usable(old_entry.expires_at, now):
            raise PermanentError(
                f"key {key_id!r} is revoked or expired: issue a new key instead / "
                f"密钥 {key_id!r} 已吊销或已过期：请签发新密钥"
            )
        if old_entry.successor:
            raise Conflict(
                f"key {key_id!r} was already rotated to {old_entry.successor!r} / "
                f"密钥 {key_id!r} 已轮换为 {old_entry.successor!r}"
            )
        key = generate_api_key()
        new_id = "k" + secrets.token_hex(4)
        expires = expiry_after(now, overlap_s)
        if old_entry.expires_at:
            expires = min(expires, old_entry.expires_at)  # never extends a key's life

        def change(old: TenantRecord | None) -> TenantRecord:
            assert old is not None
            if any(k.id == key_id and k.successor for k in old.api_keys):
                raise Conflict(f"key {key_id!r} was rotated concurrently / 密钥已被并发轮换")
            keys = [
                k.model_copy(update={"expires_at": expires, "successor": new_id})
                if k.id == key_id
                else k
                for k in old.api_keys
            ]
            entry = ApiKeyEntry(id=new_id, sha256=hash_api_key(key), created_at=now)
            return old.model_copy(update={"api_keys": [*keys, entry]})

        old, new = await self._mutate(TenantRecord, BUCKET_REGISTRY, f"tenant.{tenant}", change)
        await self._audit(
            actor,
            "apikey.rotate",
            f"tenant/{tenant}/keys/{key_id}",
            tenant=tenant,
            before=old,
            after=new,
        )
        self.on_change()
        return new_id, key, expires

    async def revoke_key(self, tenant: str, key_id: str, *, actor: str) -> TenantRecord:
        rec = await self._tenant(tenant)
        if not any(k.id == key_id for k in rec.api_keys):
            raise NotFoundError(f"tenant {tenant!r} has no key {key_id!r} / 无此密钥")

        def change(old: TenantRecord | None) -> TenantRecord:
            assert old is not None
            keys = [
                k.model_copy(update={"revoked": k.revoked or k.id == key_id}) for k in old.api_keys
            ]
            return old.model_copy(update={"api_keys": keys})

        old, new = await self._mutate(TenantRecord, BUCKET_REGISTRY, f"tenant.{tenant}", change)
        await self._audit(
            actor,
            "apikey.revoke",
            f"tenant/{tenant}/keys/{key_id}",
            tenant=tenant,
            before=old,
            after=new,
        )
        self.on_change()
        return new

    # ------------------------------------------------------------------ regions

    async def create_region(
        self, region: str, *, description: str = "", actor: str
    ) -> RegionRecord:
        check_id(region, "region")
        rec = RegionRecord(id=region, description=description)
        await self.bus.ensure_kv(desired_bucket(region), history=16)
        try:
            await self.bus.kv_create(BUCKET_REGISTRY, f"region.{region}", encode(rec))
        except Conflict:
            existing, _ = await self._get(RegionRecord, BUCKET_REGISTRY, f"region.{region}")
            assert existing is not None
            return existing  # idempotent: `kefu up` runs it on every start
        await self._audit(actor, "region.create", f"region/{region}", after=rec)
        return rec

    async def list_regions(self) -> list[RegionRecord]:
        entries = await snapshot(self.bus, BUCKET_REGISTRY, "region.*")
        return [decode(RegionRecord, e.value) for _, e in sorted(entries.items())]

    # ------------------------------------------------------------------ assignments

    async def assign(
        self,
        tenant: str,
        region: str,
        *,
        models: dict[str, str] | None = None,
        scenario_models: dict[str, dict[str, str]] | None = None,
        config_version: int | None = None,
        remove: list[str] | None = None,
        actor: str,
    ) -> Assignment:
        """Set what a tenant runs in a region; unnamed slots keep their current assignment.
        ``name`` without ``@version`` means that model's newest published version. ``remove``
        names what to take away first: a model slot, a scenario (all its pins) or
        ``scenario:slot`` (one pin); naming something not assigned is an error."""
        pinned = [r for pins in (scenario_models or {}).values() for r in pins.values()]
        for ref in [*(models or {}).values(), *pinned]:
            VersionRef.parse(ref)  # a bad name is the caller's mistake, before any lookup
        rec = await self._tenant(tenant)
        await self._region(region)
        if rec.residency is not None and region not in rec.residency.allowed:
            raise ResidencyError(
                f"tenant {tenant!r} may not run in {region!r}: its residency allows only "
                f"{', '.join(rec.residency.allowed)} / 租户的数据驻留设置不允许区域 {region!r}"
            )
        resolved: dict[str, str] = {}
        for slot, ref in (models or {}).items():
            if slot not in MODEL_SLOTS:
                raise PermanentError(f"unknown model slot {slot!r} (use {', '.join(MODEL_SLOTS)})")
            mv = await self.get_model(ref)
            resolved[slot] = VersionRef(mv.name, mv.version).ref
        pins: dict[str, dict[str, str]] = {}
        for scenario, slots in (scenario_models or {}).items():
            pins[scenario] = {}
            for slot, ref in slots.items():
                mv = await self.get_model(ref)
                pins[scenario][slot] = VersionRef(mv.name, mv.version).ref
        if config_version:
            await self.get_config(tenant, config_version)
        elif not rec.current_config:
            raise NotFoundError(
                f"tenant {tenant!r} has no config yet: put one first / 租户尚无配置，请先上传"
            )

        def change(old: Assignment | None) -> Assignment:
            base = (old or Assignment(tenant=tenant, region=region)).without(remove or [])
            return base.model_copy(
                update={
                    "models": {**base.models, **resolved},
                    "scenario_models": {**base.scenario_models, **pins},
                    "config_version": base.config_version
                    if config_version is None
                    else config_version,
                    "updated_at": time.time(),
                    "updated_by": actor,
                }
            )

        old, new = await self._mutate(
            Assignment, BUCKET_ASSIGNMENTS, assignment_key(tenant, region), change
        )
        await self._audit(
            actor,
            "assign",
            f"tenant/{tenant}/regions/{region}",
            tenant=tenant,
            before=old,
            after=new,
            detail=", ".join(f"{k}={v}" for k, v in sorted(new.models.items())),
        )
        self.on_change()
        return new

    async def unassign(self, tenant: str, region: str, *, actor: str) -> None:
        key = assignment_key(check_id(tenant, "tenant"), check_id(region, "region"))
        old, _ = await self._get(Assignment, BUCKET_ASSIGNMENTS, key)
        if old is None:
            raise NotFoundError(f"{tenant!r} is not assigned to {region!r} / 无此分配")
        await self.bus.kv_delete(BUCKET_ASSIGNMENTS, key)
        await self._audit(
            actor, "unassign", f"tenant/{tenant}/regions/{region}", tenant=tenant, before=old
        )
        self.on_change()

    async def list_assignments(self, tenant: str = "") -> list[Assignment]:
        pattern = f"{check_id(tenant, 'tenant')}.*" if tenant else ">"
        entries = await snapshot(self.bus, BUCKET_ASSIGNMENTS, pattern)
        return [decode(Assignment, e.value) for _, e in sorted(entries.items())]

    # ------------------------------------------------------------------ observed

    async def list_nodes(self, region: str = "") -> list[NodeStatus]:
        entries = await snapshot(self.bus, BUCKET_NODES)
        nodes = [decode(NodeStatus, e.value) for e in entries.values()]
        drains = await snapshot(self.bus, BUCKET_GUARD, "drain.>")
        for n in nodes:
            mark = drains.get(f"drain.{n.node_id}")
            if mark is not None:
                n.drained = json.loads(mark.value).get("because", "drained") or "drained"
        return sorted(
            (n for n in nodes if not region or n.region == region), key=lambda n: n.node_id
        )

    async def audit_log(self, *, tenant: str = "", limit: int = 100) -> list[AuditEvent]:
        if not 1 <= limit <= MAX_AUDIT_LIMIT:
            raise PermanentError(f"limit must be 1-{MAX_AUDIT_LIMIT} / limit 超出范围")
        subject = f"kefu.audit.{check_id(tenant, 'tenant')}" if tenant else "kefu.audit.>"
        msgs = await self.bus.stream_read(STREAM_AUDIT, subject, limit=limit)
        out = []
        for m in msgs:
            ev = decode(AuditEvent, m.data, what="audit event")
            ev.seq = m.seq
            out.append(ev)
        return out

    async def leader(self) -> str:
        e = await self.bus.kv_get(BUCKET_LEADER, LEASE_KEY)
        if e is None:
            return ""
        lease = decode(Lease, e.value)
        return lease.holder if lease.expires_at > time.time() else ""
