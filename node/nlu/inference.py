"""The node's inference runtime: loaded model versions, micro-batching, a prediction cache and
hot swap.

Callers see one small seam, :class:`ModelRuntime`::

    results = await runtime.classify("demo-shop-intent", ["我的快递到哪了"])
    results = await runtime.classify("demo-shop-intent@2026.11.25-2", texts)  # pinned version

The first argument is a model *name* (served by its active version) or ``name@version`` (a
pinned version, e.g. the canary side of a split). The runtime knows model names, not roles:
the tenant config maps a role (intent, sentiment) to a name before calling. The answer is one
:class:`Classification` per text, in order. :class:`StaticModelRuntime` is an in-memory double
for unit tests of callers.

:class:`BatchingModelRuntime` is the real one:

* **Micro-batching per model version.** Every text waits in its version's FIFO queue. A
  dispatcher task coalesces queued texts into one ``predict_proba`` call of up to
  ``max_batch`` texts, waiting at most ``max_wait_us`` after the oldest text arrived for the
  batch to fill. While all of a version's worker threads are busy, the queue keeps growing,
  so batches grow with load by themselves.
* **Never blocks the event loop.** ONNX work runs on a small thread pool per version
  (``workers_per_model`` threads); loading and warming a bundle runs on a loader thread.
* **Overload policy "reject when full".** A version's queue holds at most ``max_queue``
  texts; a call whose texts do not all fit is refused at once, as a whole, with
  :class:`ModelBusy` (a ``TemporaryError`` with a ``retry_after`` estimate). Nothing is ever
  queued without bound.
* **LRU prediction cache** keyed by (``name@version``, normalised text). Normalisation is the
  loader's ``clean_text`` plus lower-casing and whitespace folding, and the model is fed the
  normalised text, so a cached answer is exactly what the model would say. Unloading a
  version drops its entries.
* **Hot swap.** ``await load(name, source)`` verifies, loads and warms a bundle off the loop,
  then switches the active version in one step (no ``await`` in between). A request is bound
  to a version when it is queued, so queued and running requests finish on the old version:
  no in-flight request fails. A failed load (tampered bundle, untrusted key) raises the
  ``BundleError`` and leaves the active version serving. ``await unload(name, version)``
  stops routing to the version, drains its queue, then frees it.
* **Cancellation.** A cancelled caller's texts are skipped when a batch is formed, or their
  results are dropped when the batch is already running; batch mates are unaffected.
  ``CancelledError`` is always re-raised.

The runtime belongs to one asyncio event loop; ``stats()`` gives plain counters and gauges.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np

from kefu import tracing
from kefu.errors import BundleError, PermanentError
from kefu.keys import TrustStore
from kefu.models.runtime import TextClassifier, load_model
from kefu.models.store import ModelStore
from kefu.node.nlu.predictions import (
    BATCH_BUCKETS,
    OVERLOAD_POLICY,
    BatchTooLarge,
    CacheStats,
    Classification,
    InferenceFailed,
    InferenceOptions,
    ModelBusy,
    ModelInfo,
    ModelNotLoaded,
    ModelRuntime,
    RuntimeStats,
    StaticModelRuntime,
    VersionStats,
    classification,
    normalise_text,
)

__all__ = [
    "BATCH_BUCKETS",
    "OVERLOAD_POLICY",
    "BatchTooLarge",
    "BatchingModelRuntime",
    "CacheStats",
    "Classification",
    "InferenceFailed",
    "InferenceOptions",
    "ModelBusy",
    "ModelInfo",
    "ModelNotLoaded",
    "ModelRuntime",
    "RuntimeStats",
    "StaticModelRuntime",
    "VersionStats",
    "normalise_text",
]

#: Batch-size histogram buckets: a batch of n texts counts in the largest bucket ≤ n.
# --------------------------------------------------------------------------- the real one


class _PredictionCache:
    """LRU of probability rows keyed by (ref, normalised text); counts entries per ref."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._rows: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self.per_ref: dict[str, int] = {}
        self.hits = self.misses = 0

    def get(self, ref: str, text: str) -> np.ndarray | None:
        row = self._rows.get((ref, text))
        if row is None:
            self.misses += 1
            return None
        self._rows.move_to_end((ref, text))
        self.hits += 1
        return row

    def put(self, ref: str, text: str, row: np.ndarray) -> None:
        if self.capacity == 0:
            return
        key = (ref, text)
        if key in self._rows:
            self._rows.move_to_end(key)
            return
        self._rows[key] = row
        self.per_ref[ref] = self.per_ref.get(ref, 0) + 1
        while len(self._rows) > self.capacity:
            (old_ref, _), _ = self._rows.popitem(last=False)
            self.per_ref[old_ref] -= 1

    def drop(self, ref: str) -> None:
        for key in [k for k in self._rows if k[0] == ref]:
            del self._rows[key]
        self.per_ref.pop(ref, None)

    def __len__(self) -> int:
        return len(self._rows)


@dataclass(eq=False)
class _Item:
    text: str
    future: asyncio.Future[np.ndarray]
    enqueued: float


class _VersionWorker:
    """One loaded version: its queue, dispatcher task, worker threads and counters."""

    def __init__(self, model: TextClassifier, options: InferenceOptions, cache: _PredictionCache):
        self.model = model
        self.name = model.manifest.name
        self.version = model.manifest.version
        self.ref = model.ref
        self.labels = list(model.labels)
        self.options = options
        self.cache = cache
        self.loop = asyncio.get_running_loop()
        self.queue: deque[_Item] = deque()
        self.closing = False
        self.forgotten = False  # cache entries dropped: a late batch must not add new ones
        self.running: set[asyncio.Future[np.ndarray]] = set()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(options.workers_per_model)
        self._executor = ThreadPoolExecutor(
            max_workers=options.workers_per_model,
            thread_name_prefix=f"kefu-infer-{self.name}",
        )
        self.batches = self.texts = self.max_batch_seen = 0
        self.hist = dict.fromkeys(BATCH_BUCKETS, 0)
        self.in_flight = self.busy_rejections = self.errors = 0
        self.cache_hits = self.cache_misses = 0
        self._batch_seconds = 0.0  # moving average, for the retry hint
        self._task = self.loop.create_task(self._dispatch(), name=f"kefu-dispatch-{self.ref}")

    # -- intake (event loop thread) --

    def submit(self, texts: Sequence[str]) -> list[asyncio.Future[np.ndarray]]:
        """Queue all texts or none of them (ModelBusy / BatchTooLarge)."""
        if self.closing:
            raise ModelBusy(self.ref, reason="unloading", retry_after=0.0)
        limit = self.options.max_queue
        if len(texts) > limit:
            raise BatchTooLarge(
                f"{len(texts)} texts in one call exceed the queue of {self.ref} ({limit}) / "
                f"单次请求 {len(texts)} 条文本，超过模型 {self.ref} 的队列上限 {limit}"
            )
        if len(self.queue) + len(texts) > limit:
            self._purge_cancelled()  # only on the overload path: O(queue)
            if len(self.queue) + len(texts) > limit:
                self.busy_rejections += 1
                raise ModelBusy(
                    self.ref, queue_depth=len(self.queue), retry_after=self._retry_after()
                )
        was_empty = not self.queue
        now = self.loop.time()
        futures = []
        for text in texts:
            fut: asyncio.Future[np.ndarray] = self.loop.create_future()
            self.queue.append(_Item(text, fut, now))
            futures.append(fut)
        # Wake the dispatcher for the first text (start the wait window) or a full batch.
        if was_empty or len(self.queue) >= self.options.max_batch:
            self._wakeup.set()
        return futures

    def _purge_cancelled(self) -> None:
        self.queue = deque(i for i in self.queue if not i.future.done())

    def _retry_after(self) -> float:
        per_batch = self._batch_seconds or self.options.max_wait_us / 1e6 or 1e-3
        rounds = math.ceil(len(self.queue) / self.options.max_batch)
        return max(1e-3, rounds * per_batch / self.options.workers_per_model)

    def live_depth(self) -> int:
        return sum(1 for i in self.queue if not i.future.done())

    # -- dispatcher task --

    async def _dispatch(self) -> None:
        opts = self.options
        max_wait = opts.max_wait_us / 1e6
        try:
            while True:
                if not self.queue:
                    if self.closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                deadline = self.queue[0].enqueued + max_wait
                while len(self.queue) < opts.max_batch and not self.closing:
                    delay = deadline - self.loop.time()
                    if delay <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        async with asyncio.timeout(delay):
                            await self._wakeup.wait()
                    except TimeoutError:
                        break
                # Taking the batch only once a thread is free lets it grow while we wait.
                await self._slots.acquire()
                batch: list[_Item] = []
                while self.queue and len(batch) < opts.max_batch:
                    item = self.queue.popleft()
                    if not item.future.done():  # skip cancelled callers
                        batch.append(item)
                if batch:
                    self._start(batch)
                else:
                    self._slots.release()
        except asyncio.CancelledError:
            self._fail_queued(ModelBusy(self.ref, reason="shutting down", retry_after=0.0))
            raise

    def _start(self, batch: list[_Item]) -> None:
        texts = [item.text for item in batch]
        self.in_flight += len(batch)
        started = self.loop.time()
        fut = self.loop.run_in_executor(self._executor, self.model.predict_proba, texts)
        self.running.add(fut)
        fut.add_done_callback(partial(self._finish, batch, started))

    def _finish(self, batch: list[_Item], started: float, fut: asyncio.Future[np.ndarray]) -> None:
        # Runs on the loop thread (asyncio future callback).
        self.running.discard(fut)
        self._slots.release()
        self.in_flight -= len(batch)
        n = len(batch)
        self.batches += 1
        self.texts += n
        self.max_batch_seen = max(self.max_batch_seen, n)
        self.hist[_bucket(n)] += 1
        elapsed = self.loop.time() - started
        self._batch_seconds = (
            elapsed if not self._batch_seconds else (0.8 * self._batch_seconds + 0.2 * elapsed)
        )
        if fut.cancelled() or fut.exception() is not None:
            self.errors += 1
            cause = None if fut.cancelled() else fut.exception()
            for item in batch:
                if not item.future.done():
                    err = InferenceFailed(f"model {self.ref} failed on a batch of {n} ({cause})")
                    err.__cause__ = cause
                    item.future.set_exception(err)
            return
        probs = fut.result()
        for i, item in enumerate(batch):
            row = probs[i].copy()
            row.setflags(write=False)
            if not self.forgotten:
                self.cache.put(self.ref, item.text, row)
            if not item.future.done():  # the caller may have been cancelled meanwhile
                item.future.set_result(row)

    def _fail_queued(self, exc: Exception) -> None:
        while self.queue:
            item = self.queue.popleft()
            if not item.future.done():
                item.future.set_exception(exc)

    # -- lifecycle --

    async def drain(self) -> None:
        """Stop taking texts, serve everything queued and running, then free the threads."""
        self.closing = True
        self._wakeup.set()
        try:
            await asyncio.shield(self._task)
            if self.running:
                await asyncio.wait(set(self.running))
        except asyncio.CancelledError:
            self.abort()
            raise
        self._executor.shutdown(wait=False)
        self._forget()

    def abort(self) -> None:
        self.closing = True
        self._task.cancel()
        self._fail_queued(ModelBusy(self.ref, reason="shutting down", retry_after=0.0))
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._forget()

    def _forget(self) -> None:
        self.forgotten = True
        self.cache.drop(self.ref)

    def stats(self, *, active: bool) -> VersionStats:
        return VersionStats(
            name=self.name,
            version=self.version,
            active=active,
            batches=self.batches,
            texts=self.texts,
            max_batch_seen=self.max_batch_seen,
            batch_sizes=dict(self.hist),
            queue_depth=self.live_depth(),
            in_flight=self.in_flight,
            cache_hits=self.cache_hits,
            cache_misses=self.cache_misses,
            cache_entries=self.cache.per_ref.get(self.ref, 0),
            busy_rejections=self.busy_rejections,
            errors=self.errors,
        )


def _bucket(n: int) -> str:
    for b in (64, 32, 16, 8, 4, 2):
        if n >= b:
            return "64+" if b == 64 else str(b)
    return "1"


class BatchingModelRuntime:
    """Loaded model versions served with micro-batching, caching and hot swap.

    ``trust`` verifies every bundle; ``store`` (optional) resolves ``name`` / ``name@version``
    sources in :meth:`load`. Create and use it inside one running event loop; close it with
    ``await close()`` or ``async with``.
    """

    def __init__(
        self,
        *,
        trust: TrustStore,
        store: ModelStore | None = None,
        options: InferenceOptions | None = None,
    ):
        self.trust = trust
        self.store = store
        self.options = options or InferenceOptions()
        self._cache = _PredictionCache(self.options.cache_size)
        self._versions: dict[str, dict[str, _VersionWorker]] = {}
        self._active: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kefu-model-load")
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None

    # -- serving --

    async def classify(self, model: str, texts: Sequence[str | bytes]) -> list[Classification]:
        """One answer per text, in order; ``model`` is ``name`` or ``name@version``."""
        worker = self._route(model)
        keys = [normalise_text(t) for t in texts]
        rows: list[np.ndarray | None] = [None] * len(keys)
        misses: dict[str, list[int]] = {}  # one model input per distinct text
        for i, key in enumerate(keys):
            row = self._cache.get(worker.ref, key) if self._cache.capacity else None
            if row is None:
                worker.cache_misses += 1
                misses.setdefault(key, []).append(i)
            else:
                worker.cache_hits += 1
                rows[i] = row
        cached = [row is not None for row in rows]
        if misses:
            futures = worker.submit(list(misses))
            with tracing.span("inference", {"kefu.model": worker.ref, "kefu.texts": len(misses)}):
                results = await (futures[0] if len(futures) == 1 else asyncio.gather(*futures))
            fresh = [results] if len(futures) == 1 else results
            for positions, row in zip(misses.values(), fresh, strict=True):
                for i in positions:
                    rows[i] = row
        return [
            classification(
                worker.name,
                worker.version,
                worker.labels,
                row,
                empty=not key,
                cached=hit,
            )
            for key, row, hit in zip(keys, rows, cached, strict=True)
            if row is not None
        ]

    def _route(self, model: str) -> _VersionWorker:
        if self._closed:
            raise ModelBusy(model, reason="shutting down", retry_after=0.0)
        name, _, version = model.partition("@")
        versions = self._versions.get(name)
        version = version or self._active.get(name, "")
        worker = versions.get(version) if versions else None
        if worker is None:
            raise ModelNotLoaded(model)
        return worker

    # -- lifecycle of versions --

    async def load(self, name: str, source: str | Path, *, activate: bool = True) -> ModelInfo:
        """Verify, load and warm a bundle off the event loop, then (by default) make it the
        active version of ``name`` for new requests. ``source`` is a bundle directory or, with
        a store, ``name`` / ``name@version``. Loading an already loaded version is a no-op
        apart from activation. Raises BundleError (the active version keeps serving)."""
        self._check_open()
        async with self._lock(name):
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(self._loader, self._load_and_warm, source)
            self._check_open()
            if model.manifest.name != name:
                raise BundleError(
                    f"bundle is model {model.manifest.name!r}, not {name!r} / "
                    f"模型包名称为 {model.manifest.name!r}，不是 {name!r}",
                    path=model.bundle_dir,
                )
            versions = self._versions.setdefault(name, {})
            worker = versions.get(model.version)
            if worker is None:
                versions[model.version] = _VersionWorker(model, self.options, self._cache)
            elif worker.model.manifest.files != model.manifest.files:
                raise BundleError(
                    f"{model.ref} is already loaded with different content (a version is "
                    f"immutable) / {model.ref} 已加载且内容不同（版本不可变）",
                    path=model.bundle_dir,
                )
            if activate or name not in self._active:
                self._active[name] = model.version  # the switch: one assignment, no await
            return self._info(name, model.version)

    def _load_and_warm(self, source: str | Path) -> TextClassifier:
        # Runs on the loader thread: signature check, hashing and session creation are slow.
        path = Path(source)
        if self.store is not None and not (path / "manifest.json").is_file():
            path = self.store.resolve(str(source))
        model = load_model(path, trust=self.trust, options=self.options.runtime)
        warm = list(self.options.warmup_texts) or ["warm-up"]
        try:
            # Also the first real test: a bundle that cannot answer never takes traffic.
            probs = model.predict_proba(warm)
            model.predict_proba(warm[:1] * self.options.max_batch)
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise BundleError(
                f"{model.ref} fails on warm-up ({exc}) / 模型 {model.ref} 预热失败",
                path=model.bundle_dir,
            ) from exc
        if probs.shape != (len(warm), len(model.labels)):
            raise BundleError(
                f"{model.ref} outputs {probs.shape[1]} columns for {len(model.labels)} labels / "
                f"模型 {model.ref} 输出维度与标签数不一致",
                path=model.bundle_dir,
            )
        return model

    def activate(self, name: str, version: str) -> str | None:
        """Make a loaded version active for new requests; returns the previous one."""
        if version not in self._versions.get(name, {}):
            raise ModelNotLoaded(f"{name}@{version}")
        previous = self._active.get(name)
        self._active[name] = version
        return previous

    async def unload(self, name: str, version: str) -> None:
        """Stop routing to a version, serve what it has queued, then free it. The active
        version can only be unloaded when it is the last one loaded for ``name``."""
        async with self._lock(name):
            versions = self._versions.get(name, {})
            worker = versions.get(version)
            if worker is None:
                raise ModelNotLoaded(f"{name}@{version}")
            if self._active.get(name) == version and len(versions) > 1:
                raise PermanentError(
                    f"{name}@{version} is active: activate another version first / "
                    f"{name}@{version} 正在使用，请先切换到其他版本"
                )
            del versions[version]
            if not versions:
                del self._versions[name]
                self._active.pop(name, None)
            await worker.drain()

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _check_open(self) -> None:
        if self._closed:
            raise ModelBusy("runtime", reason="shutting down", retry_after=0.0)

    # -- inspection --

    def _info(self, name: str, version: str) -> ModelInfo:
        w = self._versions[name][version]
        return ModelInfo(
            name=name,
            version=version,
            labels=tuple(w.labels),
            active=self._active.get(name) == version,
            providers=tuple(w.model.active_providers),
        )

    def models(self) -> list[ModelInfo]:
        return [self._info(n, v) for n in sorted(self._versions) for v in sorted(self._versions[n])]

    def active_version(self, name: str) -> str | None:
        return self._active.get(name)

    def stats(self) -> RuntimeStats:
        return RuntimeStats(
            models=tuple(
                w.stats(active=self._active.get(n) == v)
                for n in sorted(self._versions)
                for v, w in sorted(self._versions[n].items())
            ),
            cache=CacheStats(
                capacity=self._cache.capacity,
                entries=len(self._cache),
                hits=self._cache.hits,
                misses=self._cache.misses,
            ),
        )

    # -- shutdown --

    async def close(self) -> None:
        """Refuse new work, drain every version, free threads. Safe to call again."""
        if self._close_task is None:
            self._closed = True
            self._close_task = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        workers = [w for versions in self._versions.values() for w in versions.values()]
        self._versions.clear()
        self._active.clear()
        try:
            await asyncio.gather(*(w.drain() for w in workers))
        finally:
            self._loader.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
