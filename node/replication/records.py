"""Replicated sessions, the pure core: subject and stream names, the sealed change payload,
the zone replication key, and the plan of a region's streams. No NATS, no SQLite, no files.

* A **change** is what one committed write did to a session (the session row after it, the
  turns it appended, the slots it set), as the SQLite rows a store would insert. The outbox
  holds it sealed with the **zone key** (AES-256-GCM via :mod:`kefu.node.sessions.sealing`),
  so the outbox, the streams' storage and everything on the wire carry no clear text.
* **Subjects**: ``kefu.turns.<origin region>.<tenant>.<session id>``; a region's own stream is
  ``KEFU_TURNS_<region>`` over ``kefu.turns.<region>.>``; the replica of another region's
  turns for one tenant is ``KEFU_REPLICA_<origin>_<tenant>`` (sourced across JetStream domains
  and filtered to that tenant, so a tenant not allowed here is never sourced, and its
  ``max_age`` is the tenant's retention).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kefu.errors import PermanentError
from kefu.node.sessions.sealing import FieldCipher, KeyUnavailable, parse_master_key
from kefu.wire import TenantResidency

__all__ = [
    "FORMAT",
    "OutboxWriter",
    "ReplicaPlan",
    "ReplicationError",
    "StreamSpec",
    "ZoneKey",
    "change_payload",
    "open_change",
    "plan_streams",
    "replica_stream",
    "session_subject",
    "tenant_filter",
    "turns_stream",
]

FORMAT = 1
#: A day in seconds (retention is configured in days).
DAY_S = 86400.0


class ReplicationError(PermanentError):
    """A replicated change that cannot be opened or applied (wrong key, damaged payload)."""


def turns_stream(region: str) -> str:
    return f"KEFU_TURNS_{region}"


def replica_stream(origin: str, tenant: str) -> str:
    return f"KEFU_REPLICA_{origin}_{tenant}"


def session_subject(region: str, tenant: str, session_id: str) -> str:
    return f"kefu.turns.{region}.{tenant}.{session_id}"


def tenant_filter(region: str, tenant: str) -> str:
    return f"kefu.turns.{region}.{tenant}.>"


@dataclass(frozen=True, slots=True)
class ZoneKey:
    """The zone's replication key: every region of the zone has the same file (provided by
    the deployment); regions of other zones have another. Its id is derived from the key, so
    a region holding a different key refuses the payload instead of mis-reading it."""

    zone: str
    key: bytes

    @classmethod
    def parse(cls, zone: str, text: str | bytes) -> ZoneKey:
        try:
            return cls(zone=zone, key=parse_master_key(text))
        except KeyUnavailable as exc:
            raise ReplicationError(
                "the zone replication key must be 32 bytes in base64 (`head -c 32 /dev/urandom "
                "| base64`) / 区域复制密钥须为 base64 编码的 32 字节"
            ) from exc

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"kefu-zone|" + self.key).hexdigest()[:8]

    def cipher(self) -> FieldCipher:
        return FieldCipher(
            tenant=f"zone:{self.zone}", keys={self.key_id: self.key}, current=self.key_id
        )


def change_payload(
    cipher: FieldCipher,
    *,
    tenant: str,
    session: Mapping[str, Any],
    turns: Iterable[Mapping[str, Any]] = (),
    slots: Iterable[Mapping[str, Any]] = (),
) -> str:
    """One change, sealed: the session row after it, the turn and slot rows it wrote (the
    rows as the SQLite store encodes them, before its own at-rest sealing)."""
    doc = {
        "v": FORMAT,
        "tenant": tenant,
        "session": dict(session),
        "turns": [dict(t) for t in turns],
        "slots": [dict(s) for s in slots],
    }
    return cipher.seal(tenant, json.dumps(doc, ensure_ascii=False, separators=(",", ":")))


def open_change(cipher: FieldCipher, tenant: str, payload: str | bytes) -> dict[str, Any]:
    """The change a payload carries; :class:`ReplicationError` when it does not open with the
    zone key, belongs to another tenant or is damaged."""
    text = payload.decode() if isinstance(payload, bytes) else payload
    try:
        doc = json.loads(cipher.open(tenant, text))
    except (KeyUnavailable, ValueError) as exc:
        raise ReplicationError(
            f"a replicated change of tenant {tenant} does not open with this zone's key / "
            f"复制的会话变更无法用本区域密钥解开"
        ) from exc
    if not isinstance(doc, dict) or doc.get("v") != FORMAT or doc.get("tenant") != tenant:
        raise ReplicationError(f"a replicated change is not a v{FORMAT} change of {tenant}")
    if not isinstance(doc.get("session"), dict) or "id" not in doc["session"]:
        raise ReplicationError("a replicated change has no session / 复制的变更缺少会话")
    return doc


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A stream the region should have (in its ZONE account's JetStream)."""

    name: str
    max_age_s: float
    #: The region's own stream: its subjects. Empty for a replica.
    subjects: tuple[str, ...] = ()
    #: A replica: the origin region (its JetStream domain) and the subject filter.
    origin: str = ""
    filter_subject: str = ""
    tenant: str = ""


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    streams: tuple[StreamSpec, ...] = ()
    #: Tenants whose committed changes this region ships (its outbox is on for them).
    ship: frozenset[str] = frozenset()
    #: Replica streams per tenant, where a session of that tenant is looked up on import.
    replicas_by_tenant: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def wanted(self) -> dict[str, StreamSpec]:
        return {s.name: s for s in self.streams}


def plan_streams(
    region: str,
    residency: Mapping[str, TenantResidency | None],
    retention_days: Mapping[str, int],
    *,
    default_retention_days: int = 30,
    day_s: float = DAY_S,
) -> ReplicaPlan:
    """The streams of ``region`` for the tenants it serves (tenant → residency, from its
    desired state): its own turns stream (``max_age`` = the longest retention of the tenants
    it ships), and for each tenant that allows this region and replication, one replica per
    other allowed region. A tenant without a residency, without ``replicate``, or not allowing
    this region is neither shipped nor sourced."""
    ship: set[str] = set()
    replicas: list[StreamSpec] = []
    by_tenant: dict[str, tuple[str, ...]] = {}
    ages: list[float] = []
    for tenant in sorted(residency):
        r = residency[tenant]
        if r is None or not r.replicate or region not in r.allowed:
            continue
        others = sorted(set(r.allowed) - {region})
        if not others:
            continue  # nowhere to replicate to
        age = day_s * retention_days.get(tenant, default_retention_days)
        ship.add(tenant)
        ages.append(age)
        names = []
        for origin in others:
            spec = StreamSpec(
                name=replica_stream(origin, tenant),
                max_age_s=age,
                origin=origin,
                filter_subject=tenant_filter(origin, tenant),
                tenant=tenant,
            )
            replicas.append(spec)
            names.append(spec.name)
        by_tenant[tenant] = tuple(names)
    own = StreamSpec(
        name=turns_stream(region),
        max_age_s=max(ages, default=day_s * default_retention_days),
        subjects=(f"kefu.turns.{region}.>",),
    )
    return ReplicaPlan(streams=(own, *replicas), ship=frozenset(ship), replicas_by_tenant=by_tenant)


@dataclass(slots=True)
class OutboxWriter:
    """What a tenant's store needs to put a change into its outbox (see
    :class:`~kefu.node.sessions.sqlite_store.OutboxSink`): the region, the zone cipher, a clock,
    and ``notify`` to wake the shipper after the commit."""

    region: str
    cipher: FieldCipher
    notify: Callable[[], None] = lambda: None
    clock: Callable[[], float] = time.time

    def entry(
        self,
        tenant: str,
        session: Mapping[str, Any],
        turns: Iterable[Mapping[str, Any]] = (),
        slots: Iterable[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """The outbox row of one change: a fresh message id (JetStream dedupes a re-sent one),
        the session's subject, the sealed payload and the commit time (for the lag)."""
        return {
            "msg_id": f"{self.region}.{secrets.token_urlsafe(12)}",
            "subject": session_subject(self.region, tenant, str(session["id"])),
            "payload": change_payload(
                self.cipher, tenant=tenant, session=session, turns=turns, slots=slots
            ),
            "created_at": self.clock(),
        }
