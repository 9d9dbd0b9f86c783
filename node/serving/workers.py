"""Worker processes sharing one gRPC port: ``kefu node run --workers N``.

One Python process serves at most one core (the GIL), and gRPC framing, the NLU pipeline and
the SQLite group commits all want CPU. ``WorkerPool`` starts N node processes that listen on the
same port with ``SO_REUSEPORT`` on purpose — the kernel spreads connections across them — and
supervises them:

* **Port ownership.** Before any worker starts, the parent binds the port *without*
  ``SO_REUSEPORT``. If anything listens there already (another node, whether it shares ports or
  not), that bind fails and the pool refuses to start: sharing is only ever among our workers.
* **One-time set-up in the parent**: the model store is seeded, tenant configs are checked and
  the demo key is generated (and printed) once, before workers race for it.
* **Metrics**: each worker serves ``/metrics`` on a private loopback port; the parent's endpoint
  merges them at scrape time, adding a ``worker`` label (sum over it for node totals).
* **Retention** runs in worker 0 only (the job is idempotent; N copies would only waste I/O).
* **Supervision**: a worker that dies is restarted with exponential backoff (1 s … 30 s); a
  SIGTERM/SIGINT to the parent drains every worker (each finishes its in-flight turns) and
  waits for them.

SQLite is shared by the workers: each process group-commits its own turns, and WAL plus
``BEGIN IMMEDIATE`` with busy retries serialise the writers safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from kefu.errors import PermanentError
from kefu.node.serving.server import Node, NodeOptions, PortInUse

__all__ = ["PoolStatus", "WorkerPool", "reserve_port"]

log = logging.getLogger("kefu.node.workers")

_READY_TIMEOUT_S = 120.0  # loading and warming the models of every tenant
_SCRAPE_TIMEOUT_S = 2.0
_MAX_BACKOFF_S = 30.0


class PoolStatus(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


def reserve_port(listen: str) -> int:
    """The port for ``listen`` after checking that nothing listens there; port 0 → a free one.

    The probe socket does not set SO_REUSEPORT, so it fails on a port held by anyone, including
    a node whose own workers share that port.
    """
    host, _, port = listen.rpartition(":")
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host.strip("[]") or "0.0.0.0", int(port)))
        except OSError as exc:
            raise PortInUse(
                f"cannot listen on {listen}: {exc.strerror} (another node running?) / "
                f"无法监听 {listen}：{exc.strerror}（是否已有节点在运行？）"
            ) from exc
        except ValueError as exc:
            raise PermanentError(f"bad listen address {listen!r}: {exc}") from exc
        return int(probe.getsockname()[1])


# --------------------------------------------------------------------------- the worker side


def _worker_main(
    options: NodeOptions, index: int, conn: multiprocessing.connection.Connection
) -> None:
    """Entry point of one worker process (spawned: nothing is inherited but ``options``)."""
    from kefu.node.serving.logs import configure_logging

    configure_logging(fmt=os.environ.get("KEFU_LOG_FORMAT", "json"))
    for handler in logging.getLogger("kefu").handlers:
        handler.addFilter(_WorkerTag(index))
    try:
        code = asyncio.run(_serve_worker(options, index, conn))
    except Exception as exc:  # reported to the parent, which prints it without a traceback
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        code = 1
    os._exit(code)  # skip interpreter teardown: grpc threads can hang it after a drain


async def _serve_worker(
    options: NodeOptions, index: int, conn: multiprocessing.connection.Connection
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    node = Node(options)
    async with node:
        conn.send(("ready", node.metrics_port))
        await stop.wait()
    return 3 if node.turns_cut else 0  # 3: the drain deadline cut in-flight turns


class _WorkerTag(logging.Filter):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        fields = dict(getattr(record, "fields", None) or {})
        fields["worker"] = self.index
        record.fields = fields
        return True


# --------------------------------------------------------------------------- the parent side


@dataclass
class _Worker:
    index: int
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    metrics_port: int = 0
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)


class _MergedMetrics(Collector):
    """Every worker's /metrics, scraped now, with a ``worker`` label added to each sample."""

    def __init__(self, pool: WorkerPool):
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for worker in list(self._pool.workers):
            if not worker.metrics_port:
                continue
            url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=_SCRAPE_TIMEOUT_S) as resp:
                    text = resp.read().decode("utf-8")
            except OSError as exc:  # a worker restarting: its series are simply absent
                log.warning("worker %d metrics unavailable: %s", worker.index, exc)
                continue
            for family in text_string_to_metric_families(text):
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for s in family.samples:
                    labels = {**s.labels, "worker": str(worker.index)}
                    target.samples.append(s._replace(labels=labels))
        yield from merged.values()


class WorkerPool:
    """N node processes on one port; an async context manager like :class:`Node`."""

    def __init__(self, options: NodeOptions, *, workers: int):
        if workers < 1:
            raise PermanentError("--workers must be at least 1")
        self.options = options
        self.size = workers
        self.status = PoolStatus.NEW
        self.port = 0
        self.metrics_port = 0
        self.workers: list[_Worker] = []
        self.tenants: list[str] = []
        self.tenant_errors: list[str] = []
        self.new_keys: dict[str, str] = {}
        #: Workers that did not exit cleanly at :meth:`drain` (cut turns, killed, crashed).
        self.workers_cut = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._metrics_server: Any = None
        self._supervisor: asyncio.Task[None] | None = None

    async def start(self) -> WorkerPool:
        if self.status is not PoolStatus.NEW:
            return self
        opts = self.options
        host = opts.listen.rpartition(":")[0]
        self.port = reserve_port(opts.listen)
        await self._prepare()
        for index in range(self.size):
            self.workers.append(self._spawn(index))
        for worker in self.workers:
            worker.metrics_port = await self._await_ready(worker)
        if opts.metrics_listen:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_MergedMetrics(self))
            m_host, _, m_port = opts.metrics_listen.rpartition(":")
            try:
                server, _ = start_http_server(
                    int(m_port), addr=m_host or "127.0.0.1", registry=registry
                )
            except (OSError, ValueError) as exc:
                raise PermanentError(
                    f"cannot serve metrics on {opts.metrics_listen}: {exc}"
                ) from exc
            self._metrics_server = server
            self.metrics_port = int(server.server_address[1])
        self._supervisor = asyncio.create_task(self._supervise(), name="kefu-worker-supervisor")
        self.status = PoolStatus.SERVING
        log.info("%d workers serving on %s:%d", self.size, host, self.port)
        return self

    async def _prepare(self) -> None:
        from kefu.models.store import ModelStore, trust_for
        from kefu.node.dialog.tenant import TenantRegistry
        from kefu.node.sessions.files import private_dir
        from kefu.node.sessions.sqlite_store import sqlite_store_opener

        opts = self.options
        private_dir(opts.data_dir)  # conversations live here: 0700
        ModelStore(opts.data_dir / "models", trust_for(opts.data_dir)).seed_shipped()
        registry = await TenantRegistry.open(
            opts.data_dir, opts.tenant_configs, open_store=sqlite_store_opener()
        )
        try:
            self.tenants = sorted(registry.tenants)
            self.tenant_errors = [e.error for e in registry.errors]
            self.new_keys = dict(registry.new_keys)
        finally:
            await registry.close()
        if not self.tenants:
            raise PermanentError(
                f"no tenant could be loaded: {'; '.join(self.tenant_errors) or 'no configs'}"
            )

    def _worker_options(self, index: int) -> NodeOptions:
        host = self.options.listen.rpartition(":")[0]
        return replace(
            self.options,
            listen=f"{host}:{self.port}",
            reuse_port=True,
            metrics_listen="127.0.0.1:0" if self.options.metrics_listen else None,
            run_retention=self.options.run_retention and index == 0,
        )

    def _spawn(self, index: int, restarts: int = 0) -> _Worker:
        parent_end, child_end = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_worker_main,
            args=(self._worker_options(index), index, child_end),
            name=f"kefu-node-worker-{index}",
            daemon=False,
        )
        process.start()
        child_end.close()
        return _Worker(index=index, process=process, conn=parent_end, restarts=restarts)

    async def _await_ready(self, worker: _Worker) -> int:
        ready = await asyncio.to_thread(worker.conn.poll, _READY_TIMEOUT_S)
        if not ready:
            raise PermanentError(f"worker {worker.index} did not start within {_READY_TIMEOUT_S} s")
        try:
            kind, value = await asyncio.to_thread(worker.conn.recv)
        except (EOFError, OSError) as exc:
            raise PermanentError(
                f"worker {worker.index} exited during start (code {worker.process.exitcode})"
            ) from exc
        if kind != "ready":
            raise PermanentError(f"worker {worker.index} failed to start: {value}")
        return int(value)

    async def _supervise(self) -> None:
        while self.status is PoolStatus.SERVING:
            await asyncio.sleep(0.5)
            for slot, worker in enumerate(self.workers):
                if worker.process.is_alive() or self.status is not PoolStatus.SERVING:
                    continue
                code = worker.process.exitcode
                # Back off by how quickly it died: a crash loop must not spin the CPU.
                quick = time.monotonic() - worker.started_at < 10.0
                delay = min(_MAX_BACKOFF_S, 2.0**worker.restarts) if quick else 1.0
                log.error(
                    "worker %d exited with code %s; restarting in %.0f s",
                    worker.index,
                    code,
                    delay,
                )
                await asyncio.sleep(delay)
                if self.status is not PoolStatus.SERVING:
                    return
                fresh = self._spawn(worker.index, restarts=worker.restarts + 1 if quick else 0)
                self.workers[slot] = fresh
                try:
                    fresh.metrics_port = await self._await_ready(fresh)
                except PermanentError as exc:
                    log.error("worker %d restart failed: %s", worker.index, exc)

    async def drain(self) -> None:
        if self.status in (PoolStatus.DRAINING, PoolStatus.STOPPED):
            return
        self.status = PoolStatus.DRAINING
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for worker in self.workers:
            if worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid or 0, signal.SIGTERM)
        deadline = self.options.grace_s + 5.0
        for worker in self.workers:
            await asyncio.to_thread(worker.process.join, deadline)
            if worker.process.is_alive():
                log.error("worker %d did not stop in time; killing it", worker.index)
                worker.process.kill()
                await asyncio.to_thread(worker.process.join, 5.0)
            # A worker still starting (a replacement loading its models) has served nothing:
            # SIGTERM before its handler is installed kills it with -15, which cuts no turn.
            if worker.process.exitcode != 0 and worker.metrics_port:
                self.workers_cut += 1
            worker.conn.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self.status = PoolStatus.STOPPED

    async def __aenter__(self) -> WorkerPool:
        try:
            return await self.start()
        except BaseException:
            await self.drain()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.drain())
