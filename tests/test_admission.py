"""Token buckets, the per-(tenant, channel) rate limiter, and overload admission control."""

from __future__ import annotations

import asyncio
import time

import pytest

from kefu.errors import TemporaryError
from kefu.node.serving.admission import (
    AdmissionController,
    LoopLag,
    ManualClock,
    Overloaded,
    Permit,
    RateLimit,
    RateLimiter,
    TokenBucket,
)

# --------------------------------------------------------------------------- token bucket


def test_bucket_burst_then_refill_with_exact_retry_after() -> None:
    clock = ManualClock()
    b = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [b.try_acquire()[0] for _ in range(3)] == [True, True, True]
    ok, retry = b.try_acquire()
    assert not ok and retry == pytest.approx(0.5)  # one token every 1/rate s
    clock.advance(0.3)
    ok, retry = b.try_acquire()
    assert not ok and retry == pytest.approx(0.2)  # 0.6 tokens banked, 0.4 to go
    clock.advance(0.2)
    assert b.try_acquire() == (True, 0.0)
    assert b.try_acquire()[0] is False


def test_bucket_refill_caps_at_burst_and_costs() -> None:
    clock = ManualClock()
    b = TokenBucket(rate=10.0, burst=5, clock=clock)
    clock.advance(3600)
    assert b.tokens == pytest.approx(5)  # an hour idle still banks only `burst`
    assert b.try_acquire(cost=4) == (True, 0.0)
    ok, retry = b.try_acquire(cost=3)
    assert not ok and retry == pytest.approx(0.2)  # needs 2 more tokens at 10/s
    assert b.tokens == pytest.approx(1)  # a refused request takes nothing
    with pytest.raises(ValueError, match="exceeds the bucket's burst"):
        b.try_acquire(cost=6)


def test_bucket_ignores_a_clock_stepping_back() -> None:
    clock = ManualClock()
    b = TokenBucket(rate=1.0, burst=1, clock=clock)
    assert b.try_acquire()[0]
    clock.advance(-100)
    assert b.try_acquire()[0] is False
    clock.advance(100.5)  # back to +0.5 s after the acquire: still half a token short
    ok, retry = b.try_acquire()
    assert not ok and retry == pytest.approx(0.5)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0), (float("inf"), 1)])
def test_bucket_rejects_nonsense_limits(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


# --------------------------------------------------------------------------- rate limiter


def test_limiter_isolates_tenants_and_channels_with_overrides() -> None:
    clock = ManualClock()
    rl = RateLimiter(
        RateLimit(rate=1, burst=2),
        per_tenant={"vip": RateLimit(rate=10, burst=5)},
        per_channel={("shop", "web"): RateLimit(rate=1, burst=1)},
        clock=clock,
    )
    assert [rl.try_acquire("shop", "app")[0] for _ in range(3)] == [True, True, False]
    assert rl.try_acquire("shop", "web")[0] is True  # its own bucket…
    ok, retry = rl.try_acquire("shop", "web")
    assert not ok and retry == pytest.approx(1.0)  # …with its own, smaller limit
    assert sum(rl.try_acquire("vip", "app")[0] for _ in range(10)) == 5
    assert rl.try_acquire("other", "app")[0] is True  # default limit, untouched by the rest
    s = rl.stats()
    assert (s.buckets, s.allowed_total, s.limited_total) == (4, 9, 7)


def test_limiter_memory_is_bounded_by_lru_eviction() -> None:
    clock = ManualClock()
    rl = RateLimiter(RateLimit(rate=1, burst=1), max_buckets=2, clock=clock)
    assert rl.try_acquire("a", "web")[0]
    assert rl.try_acquire("b", "web")[0]
    assert not rl.try_acquire("a", "web")[0]  # touches a: b is now least recently used
    assert rl.try_acquire("c", "web")[0]  # evicts b
    assert rl.stats().buckets == 2 and rl.stats().evicted_total == 1
    assert not rl.try_acquire("a", "web")[0]  # a survived with its empty bucket
    for i in range(1000):
        rl.try_acquire(f"t{i}", "web")
    assert rl.stats().buckets == 2


def test_limiter_sweep_and_hot_reload() -> None:
    clock = ManualClock()
    rl = RateLimiter(RateLimit(rate=1, burst=1), clock=clock)
    rl.try_acquire("a", "web")
    rl.try_acquire("b", "web")
    clock.advance(0.5)
    assert rl.sweep() == 0  # both half empty: forgetting them would hand out free tokens
    clock.advance(0.5)
    assert rl.sweep() == 2 and rl.stats().buckets == 0
    rl.try_acquire("a", "web")
    rl.update_limits(per_tenant={"a": RateLimit(rate=4, burst=4)})
    ok, retry = rl.try_acquire("a", "web")
    assert not ok and retry == pytest.approx(0.25)  # new rate, current (empty) fill kept
    assert rl.limit_for("a", "app") == RateLimit(rate=4, burst=4)


# --------------------------------------------------------------------------- admission control


async def hold(ac: AdmissionController, n: int) -> list[Permit]:
    return [await ac.acquire() for _ in range(n)]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_never_more_than_max_in_flight() -> None:
    ac = AdmissionController(max_in_flight=3, max_queue=100, queue_timeout=5.0)
    running = peak = 0

    async def work() -> None:
        nonlocal running, peak
        async with ac.admit():
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.002)
            running -= 1

    await asyncio.gather(*(work() for _ in range(40)))
    assert peak == 3
    s = ac.stats()
    assert (s.in_flight, s.queued, s.admitted_total, s.shed_total) == (0, 0, 40, 0)
    assert s.avg_service_seconds is not None and s.avg_service_seconds > 0


async def test_excess_is_shed_quickly_newest_first() -> None:
    ac = AdmissionController(max_in_flight=2, max_queue=2, queue_timeout=10.0)
    permits = await hold(ac, 2)
    waiters = [asyncio.create_task(ac.acquire()) for _ in range(2)]
    await settle()
    assert (ac.in_flight, ac.queued) == (2, 2)

    t0 = time.perf_counter()
    for _ in range(20):
        with pytest.raises(Overloaded) as info:
            await ac.acquire()
        assert info.value.reason == "queue_full" and info.value.retry_after > 0
    assert time.perf_counter() - t0 < 0.5  # refused at once, never parked
    assert isinstance(info.value, TemporaryError)
    assert "系统繁忙" in str(info.value) and "overloaded" in str(info.value)
    assert ac.stats().shed_total == ac.shed_total == 20
    assert ac.admitted_total == 2

    for p in permits:  # the queued (older) requests were kept and are served
        p.release()
    got = await asyncio.gather(*waiters)
    assert ac.in_flight == 2
    for p in got:
        p.release()
    assert ac.in_flight == 0


async def test_waiters_are_admitted_in_fifo_order() -> None:
    ac = AdmissionController(max_in_flight=1, max_queue=10, queue_timeout=10.0)
    (first,) = await hold(ac, 1)
    order: list[int] = []

    async def waiter(i: int) -> None:
        async with ac.admit():
            order.append(i)
            await asyncio.sleep(0)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(waiter(i)))
        await settle()  # queued strictly one after another
    assert ac.queued == 6
    # A newcomer arriving while others wait must queue behind them, not barge in.
    late = asyncio.create_task(waiter(99))
    await settle()
    first.release()
    await asyncio.gather(*tasks, late)
    assert order == [0, 1, 2, 3, 4, 5, 99]


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    ac = AdmissionController(max_in_flight=1, max_queue=5, queue_timeout=10.0)
    (holder,) = await hold(ac, 1)
    a = asyncio.create_task(ac.acquire())
    await settle()
    assert ac.queued == 1
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    assert ac.queued == 0
    holder.release()
    assert ac.in_flight == 0
    p = await asyncio.wait_for(ac.acquire(), 0.1)  # the slot is free again
    p.release()
    p.release()  # releasing twice is harmless
    assert ac.in_flight == 0


async def test_waiter_cancelled_after_being_handed_a_slot_passes_it_on() -> None:
    ac = AdmissionController(max_in_flight=1, max_queue=5, queue_timeout=10.0)
    (holder,) = await hold(ac, 1)
    a = asyncio.create_task(ac.acquire())
    b = asyncio.create_task(ac.acquire())
    await settle()
    holder.release()  # hands the slot to a…
    a.cancel()  # …which is cancelled before it gets to run
    with pytest.raises(asyncio.CancelledError):
        await a
    pb = await asyncio.wait_for(b, 0.5)  # b gets the slot instead
    assert ac.in_flight == 1
    pb.release()
    assert (ac.in_flight, ac.queued) == (0, 0)


async def test_queue_timeout_sheds_the_waiter() -> None:
    ac = AdmissionController(max_in_flight=1, max_queue=5, queue_timeout=0.05)
    (holder,) = await hold(ac, 1)
    t0 = time.perf_counter()
    with pytest.raises(Overloaded) as info:
        await ac.acquire()
    waited = time.perf_counter() - t0
    assert info.value.reason == "queue_timeout"
    assert 0.04 <= waited < 1.0
    s = ac.stats()
    assert (s.queued, s.timed_out_total, s.shed_total, s.in_flight) == (0, 1, 1, 1)
    holder.release()
    assert ac.in_flight == 0


async def test_estimated_wait_beyond_timeout_is_shed_at_once() -> None:
    clock = ManualClock()
    ac = AdmissionController(max_in_flight=2, max_queue=10, queue_timeout=1.0, clock=clock)
    assert ac.estimated_wait(1) is None  # no history yet: never shed on a guess
    p = await ac.acquire()
    clock.advance(1.5)
    p.release()  # average service time is now 1.5 s
    permits = await hold(ac, 2)
    waiter = asyncio.create_task(ac.acquire())  # position 1: 1/2 × 1.5 = 0.75 s fits
    await settle()
    assert ac.queued == 1
    with pytest.raises(Overloaded) as info:  # position 2: 2/2 × 1.5 = 1.5 s > 1 s
        await ac.acquire()
    assert info.value.reason == "estimated_wait"
    assert info.value.retry_after == pytest.approx(1.5)
    permits[0].release()
    (await waiter).release()
    permits[1].release()
    assert ac.in_flight == 0


async def test_context_manager_releases_on_error() -> None:
    ac = AdmissionController(max_in_flight=1, max_queue=0, queue_timeout=1.0)
    with pytest.raises(RuntimeError):
        async with ac:
            assert ac.in_flight == 1
            with pytest.raises(Overloaded):  # max_queue=0: no waiting at all
                await ac.acquire()
            raise RuntimeError("handler failed")
    assert ac.in_flight == 0
    with pytest.raises(KeyError):
        async with ac.admit() as permit:
            assert not permit.released
            raise KeyError("x")
    assert permit.released and ac.in_flight == 0


async def test_resize_grows_into_waiters_and_shrinks_gradually() -> None:
    ac = AdmissionController(max_in_flight=1, max_queue=10, queue_timeout=10.0)
    (p0,) = await hold(ac, 1)
    waiters = [asyncio.create_task(ac.acquire()) for _ in range(3)]
    await settle()
    ac.resize(3)
    await settle()
    assert (ac.in_flight, ac.queued) == (3, 1)
    ac.resize(1)
    got = [w.result() for w in waiters if w.done()]
    p0.release()
    got[0].release()
    await settle()
    assert (ac.in_flight, ac.queued) == (1, 1)  # over the new limit: slots retired, not passed
    got[1].release()
    last = await asyncio.wait_for(waiters[2], 0.5)
    assert ac.in_flight == 1
    last.release()
    assert ac.in_flight == 0


async def test_loop_lag_sheds_new_work_even_with_free_slots() -> None:
    lag = {"now": 0.0}
    ac = AdmissionController(
        max_in_flight=8, max_queue=8, queue_timeout=1.0, loop_lag=lambda: lag["now"],
        max_loop_lag=0.025,
    )  # fmt: skip
    (permit,) = await hold(ac, 1)
    lag["now"] = 0.2  # the loop runs its timers 200 ms late: the process is out of CPU
    with pytest.raises(Overloaded) as info:
        await ac.acquire()
    assert info.value.reason == "loop_lag" and ac.in_flight == 1
    lag["now"] = 0.001
    (second,) = await hold(ac, 1)
    permit.release()
    second.release()
    assert ac.stats().shed_total == 1


def test_loop_lag_ignores_a_lone_spike_but_not_a_backlog() -> None:
    lag = LoopLag(window=3)
    for sample in (0.001, 0.2, 0.001):
        lag.record(sample)
    assert lag() == 0.001 and lag.max_seen == 0.2  # one late timer: not overload
    for sample in (0.05, 0.06, 0.07):
        lag.record(sample)
    assert lag() == 0.05  # late for the whole window: the loop is backed up


async def test_loop_lag_sampler_sees_a_blocked_loop() -> None:
    sampler = LoopLag(interval=0.005, window=1)
    task = asyncio.create_task(sampler.run())
    await asyncio.sleep(0.02)
    time.sleep(0.15)  # block the loop, as a CPU-starved server would be
    await asyncio.sleep(0.01)
    assert sampler.max_seen >= 0.12
    await asyncio.sleep(0.05)
    assert sampler() < 0.1  # and it recovers once the loop runs freely again
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
