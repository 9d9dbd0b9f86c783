"""The control plane's state in the bus: layout, typed reads, compare-and-set writes, audit.

:func:`ensure_layout` creates every bucket and stream. :class:`StateStore` is the base the
control plane's operations build on (:mod:`.catalog`, :mod:`.service`): it holds no state of
its own that matters — every resource lives in a key-value bucket, every change is appended to
the audit stream (who, what, when, digests before and after).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TypeVar

from pydantic import BaseModel

from kefu.bus import Bus, Conflict
from kefu.control_plane.alerts import BUCKET_ALERTS, STREAM_ALERTS
from kefu.control_plane.canary_store import BUCKET_CANARY
from kefu.control_plane.guard import BUCKET_GUARD
from kefu.errors import PermanentError
from kefu.keys import TrustStore
from kefu.rollout import BUCKET_ROLLOUTS
from kefu.wire import (
    BUCKET_ASSIGNMENTS,
    BUCKET_CONFIGS,
    BUCKET_LEADER,
    BUCKET_MODELS,
    BUCKET_NODES,
    BUCKET_OPERATORS,
    BUCKET_REACH,
    BUCKET_REGION_HEALTH,
    BUCKET_REGISTRY,
    BUCKET_ROUTES,
    OBJECT_BUNDLES,
    STREAM_AUDIT,
    STREAM_TELEMETRY,
    AuditEvent,
    RegionRecord,
    TenantRecord,
    audit_subject,
    check_id,
    decode,
    desired_bucket,
    digest,
    encode,
)

__all__ = ["AUDIT_NOTE", "MAX_AUDIT_LIMIT", "MAX_CONFIG_TEXT", "NotFoundError", "StateStore"]
__all__ += ["ensure_layout"]

#: Request-scoped note recorded with each audit event (the API sets it from `x-kefu-actor`);
#: the event's actor is always the authenticated token's name.
AUDIT_NOTE: ContextVar[str] = ContextVar("kefu_audit_note", default="")

_M = TypeVar("_M", bound=BaseModel)
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
    await bus.ensure_kv(BUCKET_ROLLOUTS, history=64)
    await bus.ensure_kv(BUCKET_REGION_HEALTH, history=16)
    await bus.ensure_kv(BUCKET_ROUTES, history=16)
    await bus.ensure_kv(BUCKET_REACH, history=1)
    await bus.ensure_kv(BUCKET_CANARY, history=1)
    await bus.ensure_kv(BUCKET_ALERTS, history=1)
    await bus.ensure_kv(BUCKET_GUARD, history=1)
    await bus.ensure_stream(STREAM_ALERTS, ["kefu.alerts.>"], max_age_s=90 * 86400)
    await bus.ensure_objects(OBJECT_BUNDLES)
    await bus.ensure_stream(STREAM_AUDIT, ["kefu.audit.>"])
    await bus.ensure_stream(
        STREAM_TELEMETRY, ["kefu.telemetry.>"], max_age_s=7 * 86400, max_msgs=5_000_000
    )
    for region in regions:
        await bus.ensure_kv(desired_bucket(region), history=16)


class StateStore:
    def __init__(self, bus: Bus, *, trust: TrustStore, replica: str = "cp-1"):
        self.bus = bus
        self.trust = trust
        self.replica = replica
        #: Wall clock (Unix seconds) for expiries; tests inject a fake one.
        self.clock: Callable[[], float] = time.time
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
        msg_id: str = "",
    ) -> None:
        """Append one event to the audit stream. ``msg_id`` (``Nats-Msg-Id``) makes a repeated
        publish of the same decision one event (rollout transitions name their revision);
        without one, each call gets its own id, so a transport retry is still stored once."""
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
        msg_id = msg_id or f"audit:{secrets.token_hex(12)}"
        await self.bus.publish(audit_subject(tenant or None), encode(ev), msg_id=msg_id)

    audit = _audit

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

    async def _region(self, region: str) -> RegionRecord:
        rec, _ = await self._get(
            RegionRecord, BUCKET_REGISTRY, f"region.{check_id(region, 'region')}"
        )
        if rec is None:
            raise NotFoundError(f"no region {region!r} / 区域 {region!r} 不存在")
        return rec
