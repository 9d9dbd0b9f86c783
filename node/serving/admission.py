"""Traffic control for the node: per-tenant rate limits and overload admission control.

Two layers, applied in this order to every request:

1. **Rate limiting** (:class:`RateLimiter`) — a token bucket per (tenant, channel). It caps
   what one tenant or channel may send, so one noisy tenant cannot starve the others. A
   refused request gets ``retry_after`` seconds: exactly when the next token will exist.
2. **Admission control** (:class:`AdmissionController`) — caps the work the node runs at
   once (``max_in_flight``) with a small bounded FIFO wait queue in front. Its overload
   policy is **"shed newest beyond queue"**: when every slot is busy, a new request waits in
   the queue only if there is room *and* its estimated wait fits within ``queue_timeout``;
   otherwise it is refused at once with :class:`Overloaded` (never queued without bound,
   never after a long wait). Requests already waiting keep their place: they were promised
   service and are closest to getting it; a waiter that does reach its timeout is refused
   too. This keeps latency bounded and the node stable at any offered load — overload turns
   into fast, explicit refusals with a retry hint instead of a growing backlog.

3. **Event-loop lag** (:class:`LoopLag`) — in an asyncio server the loop itself is a queue
   that admission control cannot see: requests wait there, before any handler runs, when the
   process is out of CPU. A sampler measures how late the loop runs a timer; while that lag
   exceeds ``max_loop_lag``, new requests are refused at once (a refusal costs a fraction of
   a turn), which drains the backlog instead of letting every latency grow.

Estimated wait = (position in queue / max_in_flight) × average service time, where the
average is an exponentially weighted mean of how long admitted work held its slot (no
estimate until the first request finishes, so a cold node never sheds on a guess).

Everything takes an injectable ``clock`` (seconds, monotonic) so tests run on fake time. The
token buckets are thread-safe (a gRPC thread pool may call them); the admission controller
belongs to one asyncio event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from kefu.errors import TemporaryError

__all__ = [
    "AdmissionController",
    "AdmissionStats",
    "Clock",
    "LoopLag",
    "ManualClock",
    "Overloaded",
    "Permit",
    "RateLimit",
    "RateLimiter",
    "RateLimiterStats",
    "TokenBucket",
]

Clock = Callable[[], float]


class Overloaded(TemporaryError):
    """The node is at capacity and refused this request; try again after ``retry_after``."""

    def __init__(self, retry_after: float, *, reason: str = "overloaded"):
        self.retry_after = retry_after
        self.reason = reason
        super().__init__(
            f"node overloaded ({reason}), retry in {retry_after:.2f} s / "
            f"系统繁忙，请在 {retry_after:.2f} 秒后重试"
        )


class ManualClock:
    """A clock that only moves when told to: ``clock()`` reads it, ``advance(s)`` moves it."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --------------------------------------------------------------------------- rate limiting


class TokenBucket:
    """``burst`` tokens at most, refilled continuously at ``rate`` tokens per second.

    A full bucket admits a burst of ``burst`` requests at once, then one every ``1/rate`` s.
    """

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic):
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a positive number of tokens per second, got {rate}")
        if not burst >= 1 or not math.isfinite(burst):
            raise ValueError(f"burst must be at least 1 token, got {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        # A clock that steps backwards (it should not) must not mint tokens.
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._stamp = max(self._stamp, now)

    def try_acquire(self, cost: float = 1.0) -> tuple[bool, float]:
        """Take ``cost`` tokens if available: ``(True, 0.0)``; else ``(False, seconds until
        enough tokens will have accumulated)`` and nothing is taken."""
        if cost > self.burst:
            raise ValueError(f"cost {cost} exceeds the bucket's burst {self.burst}: never admitted")
        with self._lock:
            self._refill(self._clock())
            if self._tokens >= cost:
                self._tokens -= cost
                return True, 0.0
            return False, (cost - self._tokens) / self.rate

    @property
    def tokens(self) -> float:
        with self._lock:
            self._refill(self._clock())
            return self._tokens

    def idle_full(self) -> bool:
        """True when the bucket has refilled completely: forgetting it loses nothing."""
        return self.tokens >= self.burst

    def reconfigure(self, rate: float, burst: float) -> None:
        """New limits without losing the current fill (clamped to the new burst)."""
        with self._lock:
            self._refill(self._clock())
            self.rate, self.burst = float(rate), float(burst)
            self._tokens = min(self._tokens, self.burst)


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """Sustained ``rate`` requests per second with bursts of up to ``burst``."""

    rate: float
    burst: float


@dataclass(frozen=True, kw_only=True)
class RateLimiterStats:
    buckets: int
    allowed_total: int
    limited_total: int
    evicted_total: int


class RateLimiter:
    """One token bucket per (tenant, channel), created on first use.

    Limits come from ``per_channel[(tenant, channel)]``, else ``per_tenant[tenant]``, else
    ``default``. Memory is bounded by ``max_buckets``: the least recently used bucket is
    evicted first. A bucket idle long enough to refill is lossless to evict (a new one starts
    full too); size ``max_buckets`` well above the number of active keys so that is the only
    kind evicted.
    """

    def __init__(
        self,
        default: RateLimit,
        *,
        per_tenant: Mapping[str, RateLimit] | None = None,
        per_channel: Mapping[tuple[str, str], RateLimit] | None = None,
        max_buckets: int = 10_000,
        clock: Clock = time.monotonic,
    ):
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        self.max_buckets = max_buckets
        self._clock = clock
        self._default = default
        self._per_tenant = dict(per_tenant or {})
        self._per_channel = dict(per_channel or {})
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self._lock = threading.Lock()
        self._allowed = self._limited = self._evicted = 0

    def limit_for(self, tenant: str, channel: str) -> RateLimit:
        return self._per_channel.get((tenant, channel), self._per_tenant.get(tenant, self._default))

    def try_acquire(self, tenant: str, channel: str, cost: float = 1.0) -> tuple[bool, float]:
        """``(True, 0.0)`` when admitted, else ``(False, retry_after_seconds)``."""
        key = (tenant, channel)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                lim = self.limit_for(tenant, channel)
                bucket = TokenBucket(lim.rate, lim.burst, self._clock)
                self._buckets[key] = bucket
                while len(self._buckets) > self.max_buckets:
                    self._buckets.popitem(last=False)
                    self._evicted += 1
            else:
                self._buckets.move_to_end(key)
            ok, retry_after = bucket.try_acquire(cost)
            if ok:
                self._allowed += 1
            else:
                self._limited += 1
            return ok, retry_after

    def update_limits(
        self,
        *,
        default: RateLimit | None = None,
        per_tenant: Mapping[str, RateLimit] | None = None,
        per_channel: Mapping[tuple[str, str], RateLimit] | None = None,
    ) -> None:
        """Apply new limits (a config hot reload); live buckets keep their current fill."""
        with self._lock:
            if default is not None:
                self._default = default
            if per_tenant is not None:
                self._per_tenant = dict(per_tenant)
            if per_channel is not None:
                self._per_channel = dict(per_channel)
            for (tenant, channel), bucket in self._buckets.items():
                lim = self.limit_for(tenant, channel)
                bucket.reconfigure(lim.rate, lim.burst)

    def set_tenant(self, tenant: str, per_channel: Mapping[str, RateLimit]) -> None:
        """Replace ``tenant``'s per-channel limits (a tenant added or changed after start);
        its live buckets keep their fill, clamped to the new bursts."""
        with self._lock:
            for key in [k for k in self._per_channel if k[0] == tenant]:
                del self._per_channel[key]
            self._per_channel.update({(tenant, ch): lim for ch, lim in per_channel.items()})
            for (t, channel), bucket in self._buckets.items():
                if t == tenant:
                    lim = self.limit_for(t, channel)
                    bucket.reconfigure(lim.rate, lim.burst)

    def forget_tenant(self, tenant: str) -> None:
        """Drop every limit and bucket of a removed tenant."""
        with self._lock:
            self._per_tenant.pop(tenant, None)
            for key in [k for k in self._per_channel if k[0] == tenant]:
                del self._per_channel[key]
            for key in [k for k in self._buckets if k[0] == tenant]:
                del self._buckets[key]

    def tenants(self) -> frozenset[str]:
        """Tenants with a limit or a bucket here (what :meth:`forget_tenant` clears)."""
        with self._lock:
            keys = [*self._per_channel, *self._buckets]
            return frozenset({*self._per_tenant, *(k[0] for k in keys)})

    def sweep(self) -> int:
        """Forget every bucket that has refilled completely (lossless); returns how many."""
        with self._lock:
            idle = [k for k, b in self._buckets.items() if b.idle_full()]
            for k in idle:
                del self._buckets[k]
            return len(idle)

    def stats(self) -> RateLimiterStats:
        with self._lock:
            return RateLimiterStats(
                buckets=len(self._buckets),
                allowed_total=self._allowed,
                limited_total=self._limited,
                evicted_total=self._evicted,
            )


# --------------------------------------------------------------------------- admission control


@dataclass(frozen=True, kw_only=True)
class AdmissionStats:
    """Gauges (``in_flight``, ``queued``) and counters (``*_total``) for metrics."""

    in_flight: int
    queued: int
    max_in_flight: int
    max_queue: int
    admitted_total: int
    shed_total: int
    timed_out_total: int
    avg_service_seconds: float | None


class Permit:
    """One admitted unit of work. ``release()`` returns the slot; calling it twice is safe."""

    __slots__ = ("_controller", "_released", "started")

    def __init__(self, controller: AdmissionController, started: float):
        self._controller = controller
        self._released = False
        self.started = started

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._controller._release(self)


_current_permits: contextvars.ContextVar[tuple[Permit, ...]] = contextvars.ContextVar(
    "kefu_admission_permits", default=()
)


class LoopLag:
    """How late the event loop runs a timer, sampled every ``interval`` seconds.

    ``value`` is the *smallest* of the last ``window`` samples: a lone spike (a GC pause, the
    OS scheduling another process) sheds nothing, a backlog that persists for the whole
    window does. Run :meth:`run` as a task on the loop to watch.
    """

    def __init__(self, *, interval: float = 0.005, window: int = 4, clock: Clock = time.monotonic):
        self.interval = interval
        self.value = 0.0
        self.max_seen = 0.0
        self._samples: deque[float] = deque([0.0], maxlen=window)
        self._clock = clock

    def __call__(self) -> float:
        return self.value

    def record(self, lag: float) -> None:
        self._samples.append(max(0.0, lag))
        self.value = min(self._samples)
        self.max_seen = max(self.max_seen, lag)

    async def run(self) -> None:
        while True:
            start = self._clock()
            await asyncio.sleep(self.interval)
            self.record(self._clock() - start - self.interval)


class AdmissionController:
    """Bounded concurrency with a bounded FIFO queue; policy "shed newest beyond queue".

    Use ``async with controller.admit():`` (or ``async with controller:``), or
    ``permit = await controller.acquire()`` … ``permit.release()``. :meth:`acquire` raises
    :class:`Overloaded` immediately when the queue is full or the estimated wait exceeds
    ``queue_timeout``, and after ``queue_timeout`` seconds of waiting otherwise.
    """

    def __init__(
        self,
        max_in_flight: int,
        max_queue: int,
        queue_timeout: float,
        *,
        clock: Clock = time.monotonic,
        ewma_alpha: float = 0.2,
        min_retry_after: float = 0.05,
        loop_lag: Callable[[], float] | None = None,
        max_loop_lag: float = math.inf,
    ):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if max_queue < 0 or queue_timeout < 0:
            raise ValueError("max_queue and queue_timeout must not be negative")
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.queue_timeout = float(queue_timeout)
        self._clock = clock
        self._alpha = ewma_alpha
        self._min_retry = min_retry_after
        self._loop_lag = loop_lag
        self.max_loop_lag = max_loop_lag
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._avg_service: float | None = None
        self._admitted = self._shed = self._timed_out = 0

    # -- gauges

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    @property
    def admitted_total(self) -> int:
        return self._admitted

    @property
    def shed_total(self) -> int:
        return self._shed

    def stats(self) -> AdmissionStats:
        return AdmissionStats(
            in_flight=self._in_flight,
            queued=self.queued,
            max_in_flight=self.max_in_flight,
            max_queue=self.max_queue,
            admitted_total=self._admitted,
            shed_total=self._shed,
            timed_out_total=self._timed_out,
            avg_service_seconds=self._avg_service,
        )

    def estimated_wait(self, position: int) -> float | None:
        """Seconds until the ``position``-th waiter (1-based) gets a slot; None if unknown."""
        if self._avg_service is None:
            return None
        return position / self.max_in_flight * self._avg_service

    # -- acquire / release

    def _retry_after(self) -> float:
        est = self.estimated_wait(self.queued + 1)
        guess = self.queue_timeout if est is None else est
        return max(self._min_retry, guess)

    def _refuse(self, reason: str) -> Overloaded:
        self._shed += 1
        return Overloaded(self._retry_after(), reason=reason)

    def _grant(self) -> Permit:
        self._admitted += 1
        return Permit(self, self._clock())

    async def acquire(self) -> Permit:
        """Wait for a slot (FIFO) or raise :class:`Overloaded`; see the class docstring."""
        if self._loop_lag is not None and self._loop_lag() > self.max_loop_lag:
            raise self._refuse("loop_lag")
        if self._in_flight < self.max_in_flight and self.queued == 0:
            self._in_flight += 1
            return self._grant()
        position = self.queued + 1
        if position > self.max_queue or self.queue_timeout <= 0:
            raise self._refuse("queue_full")
        est = self.estimated_wait(position)
        if est is not None and est > self.queue_timeout:
            raise self._refuse("estimated_wait")

        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(self.queue_timeout):
                await fut
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                return self._grant()  # the slot arrived as the timer fired: keep it
            self._discard(fut)
            self._timed_out += 1
            raise self._refuse("queue_timeout") from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._pass_on()  # handed a slot but cancelled before running: give it back
            else:
                self._discard(fut)
            raise
        return self._grant()

    def _discard(self, fut: asyncio.Future[None]) -> None:
        with suppress(ValueError):
            self._waiters.remove(fut)

    def _pass_on(self) -> None:
        """A slot is free: hand it to the oldest live waiter, else return it to the pool.

        After a shrink (``resize``) ``in_flight`` may exceed the limit; then the slot is
        retired instead of handed on.
        """
        if self._in_flight <= self.max_in_flight:
            while self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_result(None)  # in_flight stays the same: the slot changes hands
                    return
        self._in_flight -= 1

    def _release(self, permit: Permit) -> None:
        held = max(0.0, self._clock() - permit.started)
        a = self._alpha
        self._avg_service = (
            held if self._avg_service is None else a * held + (1 - a) * (self._avg_service)
        )
        self._pass_on()

    def resize(self, max_in_flight: int) -> None:
        """Change the concurrency limit at run time (scaling); extra slots go to waiters."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        while self._in_flight < self.max_in_flight and any(not f.done() for f in self._waiters):
            self._in_flight += 1
            self._pass_on()
        # Shrinking needs nothing here: _pass_on retires slots while in_flight is over the limit.

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[Permit]:
        """``async with controller.admit() as permit:`` — released on exit, error or not."""
        permit = await self.acquire()
        try:
            yield permit
        finally:
            permit.release()

    async def __aenter__(self) -> Permit:
        permit = await self.acquire()
        _current_permits.set((*_current_permits.get(), permit))
        return permit

    async def __aexit__(self, *exc: object) -> None:
        stack = _current_permits.get()
        _current_permits.set(stack[:-1])
        stack[-1].release()
