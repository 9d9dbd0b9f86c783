"""The node audit log's hash chain (pure: no SQLite, no clock, no I/O).

Every admin and agent action on a node becomes one :class:`AuditRecord`: who (the key's
fingerprint and roles, or the local operator), what (the action and the ids it touched, never
conversation text), when, and how it ended. Records are numbered 1, 2, 3, ... and each carries
``hash = SHA-256(prev_hash || canonical fields)``, where ``prev_hash`` is the previous record's
hash (:data:`GENESIS` for the first). :func:`verify` walks the records and names the first
entry whose content no longer matches its hash (edited), whose link to the previous one is
broken (a record before it was edited or removed), or whose number skips (deleted entries).

Removing entries from the *end* leaves a valid shorter chain; that is caught against the copy
shipped to the control plane, which holds every entry's number and hash (:func:`redacted`).

Details are small and structured (ids, counts, status codes): :func:`check_detail` refuses
anything else, so no free text (a customer's message, an agent's reply) can enter the log or
leave the node through it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from kefu.errors import PermanentError

__all__ = [
    "ACTIONS",
    "GENESIS",
    "RPC_ACTIONS",
    "AuditEntry",
    "AuditRecord",
    "ChainBreak",
    "check_detail",
    "key_fingerprint",
    "redacted",
    "safe_id",
    "seal",
    "verify",
]

GENESIS = "0" * 64

#: The node RPCs recorded: every one an admin or agent key calls to read or act on
#: conversations (channel turns are counted in telemetry instead).
RPC_ACTIONS = frozenset(
    {
        "ListSessions",
        "GetSession",
        "EndSession",
        "ListHandoffs",
        "ClaimHandoff",
        "AgentReply",
        "CloseHandoff",
    }
)
#: Everything a node records: those RPCs and the node's own operations.
ACTIONS = RPC_ACTIONS | {
    "config.applied",
    "config.removed",
    "model.swapped",
    "model.loaded",
    "data.purged",
    "key.rekey",
    "key.shred",
}

#: Detail values: ids, enum names, counts, flags. No spaces in strings, so no prose.
_DETAIL_STR = re.compile(r"^[A-Za-z0-9_.,:@/+=-]{0,128}$")
_MAX_DETAIL_ITEMS = 16


class AuditError(PermanentError):
    """An audit entry that may not be recorded (free text, unknown action)."""


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    """What happened (before it is numbered and chained)."""

    ts: float
    #: Who: ``key:<fingerprint>`` for an API key, ``agent:<id>`` when an agent id is given,
    #: ``control-plane`` for desired state applied, ``local:<user>`` for a command run on
    #: the node.
    actor: str
    #: The roles of the key used (``admin``, ``agent``, ``channel``), comma-separated.
    role: str = ""
    action: str
    tenant: str = ""
    #: The id acted on (session, hand-off, model version, config version).
    target: str = ""
    #: ``ok`` or the gRPC status / error class name.
    outcome: str = "ok"
    detail: Mapping[str, str | int | float | bool] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class AuditRecord:
    seq: int
    ts: float
    actor: str
    role: str
    action: str
    tenant: str
    target: str
    outcome: str
    #: Canonical JSON of the detail mapping.
    detail: str
    prev: str
    hash: str


@dataclass(frozen=True, kw_only=True)
class ChainBreak:
    seq: int
    reason: str

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.reason}"


def key_fingerprint(key_sha256: str) -> str:
    """How a key appears in the log: the first 12 hex digits of its SHA-256 (not the key)."""
    return f"key:{key_sha256[:12]}"


def check_detail(detail: Mapping[str, object]) -> str:
    """The detail as canonical JSON, refusing free text (so no conversation text)."""
    if len(detail) > _MAX_DETAIL_ITEMS:
        raise AuditError(f"audit detail has {len(detail)} items (max {_MAX_DETAIL_ITEMS})")
    for k, v in detail.items():
        if not _DETAIL_STR.match(k):
            raise AuditError(f"audit detail key {k!r} is not an identifier")
        if isinstance(v, str) and not _DETAIL_STR.match(v):
            raise AuditError(f"audit detail {k}={v!r}: ids and counts only, no free text")
        if not isinstance(v, str | int | float | bool):
            raise AuditError(f"audit detail {k}: {type(v).__name__} is not allowed")
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"))


def safe_id(value: str) -> str:
    """``value`` made fit for an id field: other characters become ``_``, at most 128."""
    return re.sub(r"[^A-Za-z0-9_.:@/+=-]", "_", value)[:128]


def _check_field(name: str, value: str) -> None:
    if not _DETAIL_STR.match(value):
        raise AuditError(f"audit {name} {value!r}: ids only, no free text")


def _canonical(
    seq: int,
    ts: float,
    actor: str,
    role: str,
    action: str,
    tenant: str,
    target: str,
    outcome: str,
    detail: str,
) -> bytes:
    # repr(float) round-trips exactly, and SQLite REAL stores the same double.
    fields = [seq, repr(float(ts)), actor, role, action, tenant, target, outcome, detail]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _hash(prev: str, body: bytes) -> str:
    return hashlib.sha256(prev.encode("ascii") + b"\n" + body).hexdigest()


def seal(entry: AuditEntry, *, seq: int, prev: str) -> AuditRecord:
    """Number ``entry`` and chain it to ``prev`` (the last record's hash, or GENESIS)."""
    if entry.action not in ACTIONS:
        raise AuditError(f"unknown audit action {entry.action!r}")
    for name in ("actor", "role", "tenant", "target", "outcome"):
        _check_field(name, getattr(entry, name))
    detail = check_detail(entry.detail)
    body = _canonical(
        seq,
        entry.ts,
        entry.actor,
        entry.role,
        entry.action,
        entry.tenant,
        entry.target,
        entry.outcome,
        detail,
    )
    return AuditRecord(
        seq=seq,
        ts=float(entry.ts),
        actor=entry.actor,
        role=entry.role,
        action=entry.action,
        tenant=entry.tenant,
        target=entry.target,
        outcome=entry.outcome,
        detail=detail,
        prev=prev,
        hash=_hash(prev, body),
    )


def recompute(r: AuditRecord) -> str:
    """The hash ``r`` should carry given its content and its ``prev``."""
    body = _canonical(
        r.seq, r.ts, r.actor, r.role, r.action, r.tenant, r.target, r.outcome, r.detail
    )
    return _hash(r.prev, body)


def verify(records: Iterable[AuditRecord]) -> list[ChainBreak]:
    """Every break in ``records`` (in ``seq`` order), empty when the chain is intact."""
    breaks: list[ChainBreak] = []
    expected_seq, expected_prev = 1, GENESIS
    for r in records:
        if r.seq != expected_seq:
            missing = (
                f"entries {expected_seq}-{r.seq - 1}"
                if r.seq - 1 > expected_seq
                else f"entry {expected_seq}"
            )
            breaks.append(
                ChainBreak(
                    seq=r.seq, reason=f"{missing} missing (deleted) / 条目 {missing} 缺失（被删除）"
                )
            )
        elif r.prev != expected_prev:
            breaks.append(
                ChainBreak(
                    seq=r.seq,
                    reason="link to the previous entry broken (it was edited or removed) / "
                    "与前一条目的链接断裂（前一条目被修改或删除）",
                )
            )
        if recompute(r) != r.hash:
            breaks.append(
                ChainBreak(
                    seq=r.seq,
                    reason=f"content does not match its hash ({r.action}, edited) / "
                    "内容与哈希不符（被修改）",
                )
            )
        expected_seq, expected_prev = r.seq + 1, r.hash
    return breaks


def redacted(r: AuditRecord, *, node_id: str) -> dict[str, object]:
    """What leaves the node for the control plane: the record as is (it holds no text by
    construction, :func:`check_detail`) plus the node id."""
    out: dict[str, object] = asdict(r)
    out["node_id"] = node_id
    return out
