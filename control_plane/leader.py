"""Leader election: one lease in a key-value bucket, taken and renewed by compare-and-set.

Every replica runs :class:`LeaderLease`. Each step reads the lease; the pure
:func:`~kefu.control_plane.lease.decide_lease` says what to write: create it (none yet), renew
it (ours), take it over (expired), or nothing (someone else's, still valid). Writes are
``kv_update(last=revision)``, so of two replicas racing for an expired lease exactly one wins;
the loser sees :class:`~kefu.bus.Conflict` and stays a follower. A leader that cannot renew
before its own expiry steps down on its own (no split brain while partitioned). Expiry uses wall
clocks (``clock``, default ``time.time``), so replicas' clocks must agree to well within the TTL
(NTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from kefu.bus import Bus, BusUnavailable, Conflict, NotFound, cancel_and_wait
from kefu.control_plane.lease import decide_lease
from kefu.errors import KefuError, PermanentError
from kefu.wire import BUCKET_LEADER, LEASE_KEY, Lease, WireError, decode, encode

__all__ = ["LeaderLease", "StaleLeader", "decide_lease", "kick_on_change", "run_on_kick"]

log = logging.getLogger("kefu.control_plane.leader")


class StaleLeader(PermanentError):
    """This replica is no longer the leader of the term it acts for: it must not write."""


class LeaderLease:
    def __init__(
        self,
        bus: Bus,
        me: str,
        *,
        ttl_s: float = 6.0,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.bus = bus
        self.me = me
        self.ttl_s = ttl_s
        self.renew_s = ttl_s / 3
        self.on_change = on_change
        self.clock = clock
        self.holder = ""
        self.term = 0
        self._valid_until = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        # Our own expiry, not the last write's success: a partitioned leader steps down in time.
        return self.holder == self.me and self.clock() < self._valid_until

    async def step(self) -> bool:
        was = self.is_leader
        try:
            entry = await self.bus.kv_get(BUCKET_LEADER, LEASE_KEY)
            current = None
            if entry is not None:
                try:
                    current = decode(Lease, entry.value, what="leader lease")
                except WireError:
                    current = None  # garbage: overwrite it via CAS on its revision
            now = self.clock()
            want = decide_lease(current, self.me, now, self.ttl_s)
            if want is None:
                assert current is not None
                self.holder, self.term = current.holder, current.term
            else:
                if entry is None:
                    await self.bus.kv_create(BUCKET_LEADER, LEASE_KEY, encode(want))
                else:
                    await self.bus.kv_update(
                        BUCKET_LEADER, LEASE_KEY, encode(want), last=entry.revision
                    )
                self.holder, self.term = want.holder, want.term
                self._valid_until = now + self.ttl_s - self.renew_s / 2
        except Conflict:
            pass  # another replica wrote first; next step reads who
        except (BusUnavailable, NotFound) as exc:
            log.warning("leader lease: %s", exc)
        now_leader = self.is_leader
        if now_leader != was:
            log.info(
                "%s is %s (term %d)", self.me, "leader" if now_leader else "follower", self.term
            )
            if self.on_change is not None:
                self.on_change(now_leader)
        return now_leader

    async def confirm(self) -> None:
        """Raise :class:`StaleLeader` unless the lease in the bus is
        still ours, of our term and unexpired: checked right before every leader-only write, so
        a replica that lost the lease (paused, partitioned) writes nothing."""
        entry = await self.bus.kv_get(BUCKET_LEADER, LEASE_KEY)
        lease = decode(Lease, entry.value, what="leader lease") if entry is not None else None
        if (
            lease is None
            or lease.holder != self.me
            or lease.term != self.term
            or lease.expires_at <= self.clock()
            or not self.is_leader
        ):
            shown = f"{lease.holder} (term {lease.term})" if lease is not None else "nobody"
            raise StaleLeader(
                f"{self.me} acts for term {self.term} but the lease is held by {shown} / "
                "本副本已不是主节点"
            )

    async def run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self.renew_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"kefu-lease-{self.me}")

    async def stop(self, *, release: bool = True) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if release and self.is_leader:
            # Hand over quickly: expire our lease instead of making followers wait the TTL.
            with contextlib.suppress(BusUnavailable, Conflict, NotFound):
                entry = await self.bus.kv_get(BUCKET_LEADER, LEASE_KEY)
                if entry is not None:
                    gone = Lease(holder=self.me, expires_at=0.0, term=self.term)
                    await self.bus.kv_update(
                        BUCKET_LEADER, LEASE_KEY, encode(gone), last=entry.revision
                    )
        self.holder = ""
        self._valid_until = 0.0


# ---------------------------------------------------------------------------- leader-only loops


async def run_on_kick(
    kick: asyncio.Event, period_s: float, run_once: Callable[[], Awaitable[object]], *, what: str
) -> None:
    """The loop of a leader-only job (the reconciler, the rollout controller): run it on every
    kick and at least every ``period_s``. A :class:`StaleLeader` stands down for a period; a
    :class:`~kefu.bus.Conflict` (someone else wrote first) plans again at once; other bus
    errors retry with a capped backoff."""
    backoff = 0.5
    while True:
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
        # races with the kick, and stop() would then wait forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(period_s):
                await kick.wait()
        kick.clear()
        try:
            await run_once()
            backoff = 0.5
        except StaleLeader as exc:
            log.warning("%s stands down: %s", what, exc)
            await asyncio.sleep(period_s)
        except Conflict:
            kick.set()
        except (BusUnavailable, KefuError) as exc:
            log.warning("%s failed, retrying in %.1fs: %s", what, backoff, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            kick.set()


async def kick_on_change(bus: Bus, bucket: str, kick: asyncio.Event) -> None:
    """Set ``kick`` on every change of ``bucket``; re-create the watcher with backoff."""
    backoff = 0.5
    while True:
        try:
            async for _ in bus.kv_watch(bucket):
                kick.set()
                backoff = 0.5
        except (BusUnavailable, NotFound) as exc:
            log.info("watch %s ended (%s); re-creating in %.1fs", bucket, exc, backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 10.0)
