"""The control plane's operations over its state in the bus (JetStream in production).

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

import asyncio
import contextlib
import difflib
import hashlib
import json
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from kefu.bundle import SIGNATURE, unpack, validate_name, validate_ref, verify_bundle
from kefu.bus import Bus, Conflict, snapshot
from kefu.config import parse_tenant_config
from kefu.config.tenant import generate_api_key, hash_api_key
from kefu.errors import ConfigError, PermanentError
from kefu.keys import TrustStore
from kefu.model_ref import MODEL_SLOTS
from kefu.wire import (
    BUCKET_ASSIGNMENTS,
    BUCKET_CONFIGS,
    BUCKET_LEADER,
    BUCKET_MODELS,
    BUCKET_NODES,
    BUCKET_OPERATORS,
    BUCKET_REGISTRY,
    LEASE_KEY,
    OBJECT_BUNDLES,
    STREAM_AUDIT,
    STREAM_TELEMETRY,
    ApiKeyEntry,
    Assignment,
    AuditEvent,
    ConfigVersion,
    Lease,
    ModelVersion,
    NodeStatus,
    RegionRecord,
    TenantRecord,
    assignment_key,
    audit_subject,
    bundle_object,
    check_id,
    config_key,
    decode,
    desired_bucket,
    digest,
    encode,
    model_key,
)

__all__ = ["AUDIT_NOTE", "MAX_AUDIT_LIMIT", "MAX_CONFIG_TEXT", "ControlPlane", "NotFoundError"]
__all__ += ["ensure_layout"]

#: Request-scoped note recorded with each audit event (the API sets it from `x-kefu-actor`);
#: the event's actor is always the authenticated token's name.
AUDIT_NOTE: ContextVar[str] = ContextVar("kefu_audit_note", default="")

_M = TypeVar("_M", bound=BaseModel)
_SLOTS = MODEL_SLOTS
_CAS_RETRIES = 8
#: Largest tenant config accepted (UTF-8 bytes); the demo config is ~110 KB.
MAX_CONFIG_TEXT = 1024 * 1024
#: Longest a config's validation may take (it runs in a thread).
VALIDATE_TIMEOUT_S = 30.0
#: Most audit events one query returns.
MAX_AUDIT_LIMIT = 10_000


class NotFoundError(PermanentError):
    """The named tenant, region, config version or model does not exist."""

    exit_code = 66


async def ensure_layout(bus: Bus, regions: list[str] = ()) -> None:  # type: ignore[assignment]
    """Create every bucket and stream (idempotent); one desired bucket per region."""
    await bus.ensure_kv(BUCKET_REGISTRY, history=16)
    await bus.ensure_kv(BUCKET_CONFIGS, history=1)
    await bus.ensure_kv(BUCKET_MODELS, history=1)
    await bus.ensure_kv(BUCKET_ASSIGNMENTS, history=32)
    await bus.ensure_kv(BUCKET_NODES, history=1)
    await bus.ensure_kv(BUCKET_LEADER, history=1)
    await bus.ensure_kv(BUCKET_OPERATORS, history=8)
    await bus.ensure_objects(OBJECT_BUNDLES)
    await bus.ensure_stream(STREAM_AUDIT, ["kefu.audit.>"])
    await bus.ensure_stream(
        STREAM_TELEMETRY, ["kefu.telemetry.>"], max_age_s=7 * 86400, max_msgs=5_000_000
    )
    for region in regions:
        await bus.ensure_kv(desired_bucket(region), history=16)


class ControlPlane:
    def __init__(self, bus: Bus, *, trust: TrustStore, replica: str = "cp-1"):
        self.bus = bus
        self.trust = trust
        self.replica = replica
        #: Called after a write the reconciler should see quickly (the leader's kick).
        self.on_change: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ plumbing

    async def _get(self, cls: type[_M], bucket: str, key: str) -> tuple[_M | None, int]:
        e = await self.bus.kv_get(bucket, key)
        if e is None:
            return None, 0
        return decode(cls, e.value, what=f"{bucket}/{key}"), e.revision

    async def _mutate(
        self,
        cls: type[_M],
        bucket: str,
        key: str,
        change: Callable[[_M | None], Awaitable[_M] | _M],
    ) -> tuple[_M | None, _M]:
        """Read-modify-write with compare-and-set, retried when another writer got in first."""
        for _ in range(_CAS_RETRIES):
            old, rev = await self._get(cls, bucket, key)
            new = change(old)
            if isinstance(new, Awaitable):
                new = await new
            try:
                if rev:
                    await self.bus.kv_update(bucket, key, encode(new), last=rev)
                else:
                    await self.bus.kv_create(bucket, key, encode(new))
                return old, new
            except Conflict:
                continue
        raise Conflict(f"{bucket}/{key}: too many concurrent writers / 并发写入过多，请重试")

    async def _audit(
        self,
        actor: str,
        action: str,
        resource: str,
        *,
        tenant: str = "",
        before: BaseModel | str | None = None,
        after: BaseModel | str | None = None,
        detail: str = "",
    ) -> None:
        ev = AuditEvent(
            actor=actor or "unknown",
            action=action,
            resource=resource,
            tenant=tenant,
            before=digest(before),
            after=digest(after),
            detail=detail,
            actor_note=AUDIT_NOTE.get(),
        )
        await self.bus.publish(audit_subject(tenant or None), encode(ev))

    async def audit_denied(self, actor: str, method: str) -> None:
        """Record a refused call (an authenticated token without the role for ``method``)."""
        await self._audit(actor, "denied", f"rpc/{method}", detail="permission denied")

    async def _tenant(self, tenant: str) -> TenantRecord:
        rec, _ = await self._get(
            TenantRecord, BUCKET_REGISTRY, f"tenant.{check_id(tenant, 'tenant')}"
        )
        if rec is None:
            raise NotFoundError(f"no tenant {tenant!r} / 租户 {tenant!r} 不存在")
        return rec

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

    async def issue_key(self, tenant: str, *, actor: str) -> tuple[str, str]:
        """A new API key: (key id, key). The key is shown once; only its hash is stored."""
        await self._tenant(tenant)
        key = generate_api_key()
        key_id = "k" + secrets.token_hex(4)

        def change(old: TenantRecord | None) -> TenantRecord:
            assert old is not None
            entry = ApiKeyEntry(id=key_id, sha256=hash_api_key(key), created_at=time.time())
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

    async def _region(self, region: str) -> RegionRecord:
        rec, _ = await self._get(
            RegionRecord, BUCKET_REGISTRY, f"region.{check_id(region, 'region')}"
        )
        if rec is None:
            raise NotFoundError(f"no region {region!r} / 区域 {region!r} 不存在")
        return rec

    # ------------------------------------------------------------------ configs

    def validate_config(self, tenant: str, text: str, *, source: str) -> None:
        """Server-side validation, the same the node does: raises ConfigError (file:line).
        Blocking (YAML and pydantic): :meth:`put_config` runs it in a thread."""
        size = len(text.encode("utf-8"))
        if size > MAX_CONFIG_TEXT:
            big = f"config is {size} bytes, the limit is {MAX_CONFIG_TEXT} / 配置过大"
            raise ConfigError(big, path=source)
        cfg = parse_tenant_config(text, source=source)
        if cfg.tenant.id != tenant:
            raise ConfigError(
                f"config is for tenant {cfg.tenant.id!r}, not {tenant!r} / "
                f"配置属于租户 {cfg.tenant.id!r}，不是 {tenant!r}",
                path=source,
                field="tenant.id",
            )

    async def put_config(
        self, tenant: str, text: str, *, actor: str, comment: str = "", rollback_of: int = 0
    ) -> ConfigVersion:
        rec = await self._tenant(tenant)
        if len(text) > MAX_CONFIG_TEXT:  # characters ≤ bytes: refused before any parsing
            self.validate_config(tenant, text, source=f"{tenant}.yaml")
        # Parsing a big config takes seconds of CPU: never on the event loop (other RPCs, the
        # leader lease and the reconciler keep running), and never without a deadline.
        work = asyncio.to_thread(self.validate_config, tenant, text, source=f"{tenant}.yaml")
        try:
            await asyncio.wait_for(work, VALIDATE_TIMEOUT_S)
        except TimeoutError as exc:
            too_long = f"not validated within {VALIDATE_TIMEOUT_S:.0f} s / 配置校验超时"
            raise ConfigError(too_long, path=f"{tenant}.yaml") from exc
        versions = await self.list_configs(tenant)
        if versions and versions[-1].digest == digest(text) and not rollback_of:
            return versions[-1]  # same text as the newest: idempotent, no new version
        n = (versions[-1].version if versions else 0) + 1
        while True:
            cv = ConfigVersion(
                tenant=tenant,
                version=n,
                yaml=text,
                digest=digest(text),
                author=actor,
                comment=comment,
                rollback_of=rollback_of,
            )
            try:
                await self.bus.kv_create(BUCKET_CONFIGS, config_key(tenant, n), encode(cv))
                break
            except Conflict:
                n += 1  # another writer took this number
        before = rec.current_config

        def change(old: TenantRecord | None) -> TenantRecord:
            assert old is not None
            return old.model_copy(update={"current_config": max(old.current_config, cv.version)})

        await self._mutate(TenantRecord, BUCKET_REGISTRY, f"tenant.{tenant}", change)
        prev = await self._config_text(tenant, before) if before else None
        await self._audit(
            actor,
            "config.rollback" if rollback_of else "config.put",
            f"tenant/{tenant}/configs/{cv.version}",
            tenant=tenant,
            before=prev,
            after=text,
            detail=comment or (f"rollback to version {rollback_of}" if rollback_of else ""),
        )
        self.on_change()
        return cv

    async def _config_text(self, tenant: str, version: int) -> str | None:
        cv, _ = await self._get(ConfigVersion, BUCKET_CONFIGS, config_key(tenant, version))
        return cv.yaml if cv else None

    async def list_configs(self, tenant: str) -> list[ConfigVersion]:
        check_id(tenant, "tenant")
        entries = await snapshot(self.bus, BUCKET_CONFIGS, f"{tenant}.*")
        out = [decode(ConfigVersion, e.value) for e in entries.values()]
        return sorted(out, key=lambda c: c.version)

    async def get_config(self, tenant: str, version: int = 0) -> ConfigVersion:
        rec = await self._tenant(tenant)
        version = version or rec.current_config
        cv, _ = await self._get(ConfigVersion, BUCKET_CONFIGS, config_key(tenant, version))
        if cv is None:
            raise NotFoundError(
                f"tenant {tenant!r} has no config version {version} / 无配置版本 {version}"
            )
        return cv

    async def diff_config(self, tenant: str, a: int, b: int = 0) -> str:
        old, new = await self.get_config(tenant, a), await self.get_config(tenant, b)
        a_lines, b_lines = old.yaml.splitlines(keepends=True), new.yaml.splitlines(keepends=True)
        names = f"{tenant}@{old.version}", f"{tenant}@{new.version}"
        # Diffing two big configs is CPU work: off the event loop, like their validation.
        diff = difflib.unified_diff
        return await asyncio.to_thread(lambda: "".join(diff(a_lines, b_lines, *names)))

    async def rollback_config(self, tenant: str, version: int, *, actor: str) -> ConfigVersion:
        """Make ``version``'s content current again, as a new version (history stays linear)."""
        old = await self.get_config(tenant, version)
        return await self.put_config(
            tenant, old.yaml, actor=actor, comment=f"rollback to {version}", rollback_of=version
        )

    # ------------------------------------------------------------------ models

    async def publish_model(self, packed: bytes, *, actor: str) -> ModelVersion:
        """Verify a packed, signed bundle (signature and every file hash), then store it."""
        with tempfile.TemporaryDirectory(prefix="kefu-publish-") as tmp:
            bundle_dir = unpack(packed, Path(tmp) / "bundle")
            manifest = verify_bundle(bundle_dir, self.trust)
            sig_key = _signer(bundle_dir)
        sha = hashlib.sha256(packed).hexdigest()
        content = manifest.content_digest()
        mv = ModelVersion(
            name=manifest.name,
            version=manifest.version,
            task=manifest.task,
            family=manifest.family,
            labels=list(manifest.labels),
            size=len(packed),
            sha256=sha,
            content_sha256=content,
            signer=sig_key,
            created_at=manifest.created_at,
            metrics=_summary_metrics(manifest.metrics),
            published_by=actor,
        )
        key = model_key(manifest.name, manifest.version)
        existing, _ = await self._get(ModelVersion, BUCKET_MODELS, key)
        if existing is not None:
            # Same verified content (whatever tar carried it): idempotent. The stored object
            # and its transport hash stay those of the first publish.
            if existing.sha256 == sha or (
                existing.content_sha256 and existing.content_sha256 == content
            ):
                return existing
            raise Conflict(
                f"model {manifest.ref} is already published with different content (versions "
                f"are immutable) / 模型 {manifest.ref} 已发布且内容不同（版本不可变）"
            )
        # Object first, record second: a record never points at a missing bundle.
        await self.bus.obj_put(OBJECT_BUNDLES, bundle_object(mv.name, mv.version), packed)
        # A concurrent publish of the same version may have won; its record stands.
        with contextlib.suppress(Conflict):
            await self.bus.kv_create(BUCKET_MODELS, key, encode(mv))
        await self._audit(actor, "model.publish", f"models/{manifest.ref}", after=sha)
        return mv

    async def list_models(self, name: str = "") -> list[ModelVersion]:
        if name:
            validate_name(name)
        entries = await snapshot(self.bus, BUCKET_MODELS, f"{name}.>" if name else ">")
        out = [decode(ModelVersion, e.value) for e in entries.values()]
        return sorted(out, key=lambda m: (m.name, m.published_at))

    async def get_model(self, ref: str) -> ModelVersion:
        name, version = validate_ref(ref)
        if not version:
            versions = await self.list_models(name)
            if not versions:
                raise NotFoundError(f"no model {name!r} / 模型 {name!r} 不存在")
            return versions[-1]
        mv, _ = await self._get(ModelVersion, BUCKET_MODELS, model_key(name, version))
        if mv is None:
            raise NotFoundError(f"no model {ref!r} / 模型 {ref!r} 不存在")
        return mv

    # ------------------------------------------------------------------ assignments

    async def assign(
        self,
        tenant: str,
        region: str,
        *,
        models: dict[str, str] | None = None,
        scenario_models: dict[str, dict[str, str]] | None = None,
        config_version: int | None = None,
        actor: str,
    ) -> Assignment:
        """Set what a tenant runs in a region; unnamed slots keep their current assignment.
        ``name`` without ``@version`` means that model's newest published version."""
        pinned = [r for pins in (scenario_models or {}).values() for r in pins.values()]
        for ref in [*(models or {}).values(), *pinned]:
            validate_ref(ref)  # a bad name is the caller's mistake, before any lookup
        rec = await self._tenant(tenant)
        await self._region(region)
        resolved: dict[str, str] = {}
        for slot, ref in (models or {}).items():
            if slot not in _SLOTS:
                raise PermanentError(f"unknown model slot {slot!r} (use {', '.join(_SLOTS)})")
            mv = await self.get_model(ref)
            resolved[slot] = f"{mv.name}@{mv.version}"
        pins: dict[str, dict[str, str]] = {}
        for scenario, slots in (scenario_models or {}).items():
            pins[scenario] = {}
            for slot, ref in slots.items():
                mv = await self.get_model(ref)
                pins[scenario][slot] = f"{mv.name}@{mv.version}"
        if config_version:
            await self.get_config(tenant, config_version)
        elif not rec.current_config:
            raise NotFoundError(
                f"tenant {tenant!r} has no config yet: put one first / 租户尚无配置，请先上传"
            )

        def change(old: Assignment | None) -> Assignment:
            base = old or Assignment(tenant=tenant, region=region)
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


def _signer(bundle_dir: Path) -> str:
    try:
        return str(json.loads((bundle_dir / SIGNATURE).read_text(encoding="utf-8"))["key_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _summary_metrics(metrics: dict[str, object]) -> dict[str, object]:
    dev = metrics.get("dev") if isinstance(metrics.get("dev"), dict) else {}
    assert isinstance(dev, dict)
    return {k: dev.get(k) for k in ("accuracy", "macro_f1", "ece") if dev.get(k) is not None} | {
        k: metrics[k] for k in ("quantization_accuracy_change", "size_bytes") if k in metrics
    }
