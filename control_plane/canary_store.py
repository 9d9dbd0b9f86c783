"""Durable per-rollout canary statistics: the telemetry stream folded into a key-value bucket.

:class:`CanaryFolder` (leader only) reads the ``KEFU_TELEMETRY`` stream from its cursor and adds
every batch's per-arm counts (:class:`~kefu.canary_stats.ArmCounts`) into one
:class:`CanaryTotals` document per rollout (bucket ``kefu_canary``, key ``s.<rollout id>``),
keyed by arm × region × node. Each document remembers the last stream sequence folded into it
(``folded_seq``), and the cursor (key ``cursor``) is written after the documents: a leader that
dies in between re-reads a few messages and skips what each document already holds, so every
batch counts once; a new leader resumes from the cursor, never replaying hours of telemetry.

The latest verdict of each rollout is stored next to it (``v.<rollout id>``) for
``kefu cp rollout analysis`` and the console.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kefu.bus import Bus, Conflict
from kefu.canary_stats import ArmCounts
from kefu.control_plane.canary import DEFAULT_POLICIES, CanaryPolicy
from kefu.errors import KefuError, PermanentError
from kefu.wire import STREAM_TELEMETRY, TelemetryBatch, decode, encode

__all__ = [
    "BUCKET_CANARY",
    "CanaryFolder",
    "CanaryTotals",
    "StoredVerdict",
    "UnknownPolicy",
    "list_policies",
    "list_stored_policy_names",
    "load_policy",
    "load_totals",
    "load_verdict",
    "save_policy",
    "save_verdict",
]

log = logging.getLogger("kefu.control_plane.canary_store")

BUCKET_CANARY = "kefu_canary"
CURSOR_KEY = "cursor"
#: Stream messages one fold pass reads at most (the rest on the next pass).
FOLD_CHUNK = 2000


class CanaryTotals(BaseModel):
    model_config = ConfigDict(extra="ignore")

    rollout_id: str
    tenant: str = ""
    #: "arm/region/node" → counts
    rows: dict[str, ArmCounts] = Field(default_factory=dict)
    folded_seq: int = 0
    batches: int = 0
    updated_at: float = 0.0

    def add(self, c: ArmCounts) -> None:
        key = f"{c.arm}/{c.region}/{c.node_id}"
        row = self.rows.get(key)
        if row is None:
            self.rows[key] = c.model_copy(deep=True)
        else:
            row.merge(c)
        self.tenant = self.tenant or c.tenant


class StoredVerdict(BaseModel):
    model_config = ConfigDict(extra="ignore")

    rollout_id: str
    at: float
    policy: str
    action: str
    reasons: list[str] = Field(default_factory=list)
    #: :meth:`kefu.control_plane.canary.Verdict.to_json`
    evidence: dict[str, Any] = Field(default_factory=dict)


def _key(rollout_id: str) -> str:
    return f"s.{rollout_id}"


async def load_totals(bus: Bus, rollout_id: str) -> CanaryTotals:
    e = await bus.kv_get(BUCKET_CANARY, _key(rollout_id))
    if e is None:
        return CanaryTotals(rollout_id=rollout_id)
    return decode(CanaryTotals, e.value, what=f"canary totals {rollout_id}")


async def save_verdict(bus: Bus, v: StoredVerdict) -> None:
    await bus.kv_put(BUCKET_CANARY, f"v.{v.rollout_id}", encode(v))


async def load_verdict(bus: Bus, rollout_id: str) -> StoredVerdict | None:
    e = await bus.kv_get(BUCKET_CANARY, f"v.{rollout_id}")
    return None if e is None else decode(StoredVerdict, e.value, what=f"verdict {rollout_id}")


class UnknownPolicy(PermanentError):
    exit_code = 66


async def load_policy(bus: Bus, name: str) -> CanaryPolicy:
    """A stored policy (``p.<name>``), else a built-in default of that name."""
    e = await bus.kv_get(BUCKET_CANARY, f"p.{name}")
    if e is not None:
        return decode(CanaryPolicy, e.value, what=f"canary policy {name}")
    if name in DEFAULT_POLICIES:
        return DEFAULT_POLICIES[name]
    raise UnknownPolicy(
        f"no canary policy {name!r} (built in: {', '.join(DEFAULT_POLICIES)}) / 无此金丝雀策略"
    )


async def save_policy(bus: Bus, policy: CanaryPolicy) -> None:
    await bus.kv_put(BUCKET_CANARY, f"p.{policy.name}", encode(policy))


async def list_stored_policy_names(bus: Bus) -> set[str]:
    """The names set by an operator (``policy set``), built-in names they replaced included."""
    return {key[2:] for key in await bus.kv_keys(BUCKET_CANARY, "p.*")}


async def list_policies(bus: Bus) -> list[CanaryPolicy]:
    """Built-in defaults, overridden or extended by the stored ones."""
    out = dict(DEFAULT_POLICIES)
    for key in await bus.kv_keys(BUCKET_CANARY, "p.*"):
        name = key[2:]
        out[name] = await load_policy(bus, name)
    return [out[k] for k in sorted(out)]


class CanaryFolder:
    """Follows the telemetry stream from the stored cursor into per-rollout totals."""

    def __init__(self, bus: Bus):
        self.bus = bus
        self.folded = 0

    async def _cursor(self) -> int:
        e = await self.bus.kv_get(BUCKET_CANARY, CURSOR_KEY)
        return int(json.loads(e.value)) if e is not None else 0

    async def poll_once(self) -> int:
        """Fold what arrived since the cursor; returns the batches with rollout counts."""
        cursor = await self._cursor()
        msgs = await self.bus.stream_read(STREAM_TELEMETRY, since_seq=cursor + 1, limit=FOLD_CHUNK)
        by_rollout: dict[str, list[tuple[int, ArmCounts]]] = defaultdict(list)
        last = cursor
        n = 0
        for m in msgs:
            last = max(last, m.seq)
            try:
                batch = decode(TelemetryBatch, m.data, what="telemetry batch")
            except KefuError as exc:
                log.warning("canary fold: skipping telemetry message %d: %s", m.seq, exc)
                continue
            n += bool(batch.arms)
            for c in batch.arms:
                by_rollout[c.rollout_id].append((m.seq, c))
        for rollout_id, items in by_rollout.items():
            await self._fold(rollout_id, items)
        if last > cursor:
            await self.bus.kv_put(BUCKET_CANARY, CURSOR_KEY, json.dumps(last).encode())
        self.folded += n
        return n

    async def _fold(self, rollout_id: str, items: list[tuple[int, ArmCounts]]) -> None:
        for _ in range(8):
            e = await self.bus.kv_get(BUCKET_CANARY, _key(rollout_id))
            doc = (
                CanaryTotals(rollout_id=rollout_id)
                if e is None
                else decode(CanaryTotals, e.value, what=f"canary totals {rollout_id}")
            )
            fresh = [(seq, c) for seq, c in items if seq > doc.folded_seq]
            if not fresh:
                return
            seqs = set()
            for seq, c in fresh:
                doc.add(c)
                seqs.add(seq)
            doc.batches += len(seqs)
            doc.folded_seq = max(seqs)
            doc.updated_at = time.time()
            try:
                if e is None:
                    await self.bus.kv_create(BUCKET_CANARY, _key(rollout_id), encode(doc))
                else:
                    await self.bus.kv_update(
                        BUCKET_CANARY, _key(rollout_id), encode(doc), last=e.revision
                    )
                return
            except Conflict:
                continue
        raise Conflict(f"canary totals {rollout_id}: too many concurrent writers / 并发写入过多")
