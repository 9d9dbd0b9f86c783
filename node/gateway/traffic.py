"""Traffic control before anything reaches a node: token buckets per tenant × channel and a
bounded backlog of requests in flight. Pure (the clock is passed in).

**Overload policy: shed-newest.** At most ``max_in_flight`` requests are forwarded at once;
up to ``max_waiting`` more wait (FIFO) for a slot, each at most ``max_wait_s``; a request
arriving when the waiting line is full, or whose wait runs out, is answered 503 ``overloaded``
with ``Retry-After`` at once — the requests already waiting keep their place. Nothing waits
unboundedly and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from kefu.node.gateway.answers import ApiError

__all__ = ["Backlog", "BucketSettings", "RateLimiter"]


@dataclass(frozen=True, kw_only=True)
class BucketSettings:
    #: Sustained messages per second per tenant × channel.
    rate: float = 20.0
    #: Burst allowance.
    burst: float = 40.0


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass(kw_only=True)
class RateLimiter:
    """One token bucket per key (tenant, channel); the least recently used buckets beyond
    ``max_keys`` are forgotten (a forgotten bucket starts full again, which only errs towards
    letting a message through)."""

    settings: BucketSettings = field(default_factory=BucketSettings)
    max_keys: int = 10_000
    _buckets: OrderedDict[tuple[str, str], _Bucket] = field(default_factory=OrderedDict)

    def take(
        self, key: tuple[str, str], now: float, settings: BucketSettings | None = None
    ) -> None:
        """Spend one token or raise ``rate_limited`` with the wait until one is there."""
        s = settings or self.settings
        b = self._buckets.get(key)
        if b is None:
            b = _Bucket(tokens=s.burst, at=now)
            self._buckets[key] = b
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        b.tokens = min(s.burst, b.tokens + (now - b.at) * s.rate)
        b.at = now
        if b.tokens < 1.0:
            wait = (1.0 - b.tokens) / s.rate if s.rate > 0 else 60.0
            raise ApiError.of("rate_limited", retry_after_s=wait)
        b.tokens -= 1.0


@dataclass(kw_only=True)
class Backlog:
    """Bounded in-flight requests plus a bounded FIFO waiting line (policy: shed-newest)."""

    max_in_flight: int = 256
    max_waiting: int = 512
    max_wait_s: float = 2.0
    in_flight: int = 0
    shed: int = 0
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.in_flight >= self.max_in_flight:
            if len(self._waiters) >= self.max_waiting:
                self.shed += 1
                raise ApiError.of("overloaded", retry_after_s=1.0)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(asyncio.shield(fut), self.max_wait_s)
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                if self._give_up(fut):
                    self._release()  # handed a slot we will not use: pass it on
                raise
            if not self._give_up(fut):
                self.shed += 1
                raise ApiError.of("overloaded", retry_after_s=1.0)
            # the releaser handed its slot over: in_flight already counts us
        else:
            self.in_flight += 1
        try:
            yield
        finally:
            self._release()

    def _give_up(self, fut: asyncio.Future[None]) -> bool:
        """Leave the line; True when a slot was handed over meanwhile (it is then ours)."""
        if fut.done() and not fut.cancelled():
            return True
        if fut in self._waiters:
            self._waiters.remove(fut)
        fut.cancel()
        return False

    def _release(self) -> None:
        while self._waiters:
            fut = self._waiters.pop(0)
            if not fut.done():
                fut.set_result(None)  # hand the slot over without freeing it
                return
        self.in_flight -= 1
