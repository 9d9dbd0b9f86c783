"""Starting a node: one process or a worker pool, with or without a control plane.

The one bootstrap behind ``kefu-node run`` (:mod:`kefu.node.main`, options from node.yaml) and
``kefu node run`` (:mod:`kefu.node.cli`, options from flags and YAMLs). They differ only in
where the :class:`NodePlan` comes from and in the words they print (a :class:`RunVoice`).
Serves until SIGTERM or SIGINT, then drains: stops accepting, lets in-flight turns finish
within ``grace_s`` and closes the per-tenant SQLite stores. Exit codes: :data:`EXIT_CODES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kefu.errors import KefuError, PermanentError, TemporaryError

if TYPE_CHECKING:  # the heavy modules load only when a node starts
    from kefu.config.node import ResolvedNodeConfig
    from kefu.node.agent.cp_link import ControlPlaneLink
    from kefu.node.serving.server import NodeOptions

__all__ = [
    "EXIT_CODES",
    "EXIT_DRAIN_TIMEOUT",
    "EXIT_INTERNAL",
    "EXIT_NOPERM",
    "EXIT_OK",
    "EXIT_SHUTDOWN_FAILED",
    "NodePlan",
    "RunVoice",
    "Started",
    "node_options",
    "serve",
]

EXIT_OK = 0
EXIT_DRAIN_TIMEOUT = 3
EXIT_INTERNAL = 70  # EX_SOFTWARE
EXIT_SHUTDOWN_FAILED = 74  # EX_IOERR
EXIT_NOPERM = 77  # EX_NOPERM

#: Every exit code of a node and what it means (also printed by ``kefu-node --help``).
EXIT_CODES: dict[int, str] = {
    0: "stopped on SIGTERM/SIGINT; every in-flight turn finished, SQLite flushed and closed "
    "(with a control plane: the telemetry sent, or saved in the data dir to send after restart)",
    1: "a permanent error (message on stderr)",
    2: "bad command line",
    3: "stopped on SIGTERM/SIGINT, but the drain deadline expired and in-flight turns were "
    "cancelled (acknowledged turns are on disk)",
    65: "a model bundle is missing, tampered with or untrusted",
    69: "the listen port is in use, or a required execution provider is unavailable",
    70: "internal error (a bug: see the log)",
    74: "shutdown could not flush or close storage (or save unsent telemetry)",
    75: "temporary failure (disk full or busy, node unreachable): retry later",
    77: "permission denied (run install/uninstall as root; data directory not writable)",
    78: "invalid configuration (file, line and field on stderr)",
}


@dataclass
class NodePlan:
    """What to start: the node's options, how many processes, the control-plane link."""

    options: NodeOptions
    workers: int = 1
    link: ControlPlaneLink | None = None
    log_format: str = "json"
    #: Where the options came from (a node.yaml path, "<defaults>", ...), for the banner.
    source: str = ""


@dataclass
class Started:
    """A serving node (or pool), as the banner shows it."""

    port: int
    metrics_port: int
    tenants: list[str]
    errors: list[str]
    new_keys: dict[str, str]
    workers: int = 1
    #: The control-plane agent, when the node follows one.
    agent: Any = None
    notices: list[str] = field(default_factory=list)


class RunVoice(Protocol):
    """What a front end prints at each step (``kefu-node`` and ``kefu node`` word it apart)."""

    def started(self, plan: NodePlan, s: Started) -> None: ...
    def signal_again(self, sig: str) -> None: ...
    def stopping(self, plan: NodePlan, sig: str, *, pool: bool) -> None: ...
    def shutdown_report(self, text: str) -> None: ...
    def shutdown_failed(self, exc: BaseException) -> None: ...
    def turns_cut(self, plan: NodePlan, n: int) -> None: ...
    def workers_cut(self, n: int) -> None: ...
    def stopped_cleanly(self) -> None: ...


def node_options(resolved: ResolvedNodeConfig) -> NodeOptions:
    """NodeOptions from a resolved node.yaml."""
    from kefu.models.runtime import RuntimeOptions
    from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG
    from kefu.node.nlu.inference import InferenceOptions
    from kefu.node.serving.server import NodeOptions

    cfg = resolved.config
    inf = cfg.inference
    trt_cache = inf.trt_engine_cache_dir
    if trt_cache and not Path(trt_cache).is_absolute():
        trt_cache = str(resolved.data_dir / trt_cache)
    managed = cfg.control_plane is not None  # tenants come from the control plane
    opts = NodeOptions(
        data_dir=resolved.data_dir,
        listen=cfg.listen,
        tenant_configs=list(resolved.tenant_files) or ([] if managed else [DEMO_TENANT_CONFIG]),
        max_in_flight=cfg.limits.max_in_flight,
        max_queue=cfg.limits.max_queue,
        queue_timeout_s=cfg.limits.queue_timeout_s,
        grace_s=cfg.limits.drain_timeout_s,
        retention_interval_s=cfg.limits.retention_interval_s,
        metrics_listen=cfg.metrics_listen,
        reuse_port=cfg.reuse_port,
        inference=InferenceOptions(
            max_batch=inf.max_batch,
            max_wait_us=inf.max_wait_us,
            cache_size=inf.cache_size,
            runtime=RuntimeOptions(
                providers=inf.providers,
                intra_op_threads=inf.intra_op_threads,
                trt_engine_cache_dir=trt_cache,
            ),
        ),
    )
    opts.require_tenants = not managed
    opts.otlp_endpoint = cfg.tracing.otlp_endpoint
    opts.otel_service_name = cfg.tracing.service_name or "kefu-node"
    if resolved.tls_files is not None and cfg.tls is not None:
        from kefu.certstore import TlsFiles

        cert, key, ca = resolved.tls_files
        opts.tls = TlsFiles(ca_file=ca, cert_file=cert, key_file=key)
        opts.client_auth = cfg.tls.client_auth
    if cfg.encryption.at_rest:
        from kefu.node.sessions.tenant_keys import EncryptionOptions

        opts.encryption = EncryptionOptions(master_key_file=resolved.master_key_file)
    return opts


def os_error(exc: OSError, data_dir: Path) -> KefuError:
    """An OSError at start as an operator reads it (permission → exit 77, else retry later)."""
    where = f"{exc.filename}: " if exc.filename else ""
    if isinstance(exc, PermissionError):
        err = PermanentError(
            f"{where}permission denied (the data directory {data_dir} must be "
            "writable by the user running the node)"
        )
        err.exit_code = EXIT_NOPERM
        return err
    return TemporaryError(f"{where}{exc.strerror or exc}")


async def serve(plan: NodePlan, voice: RunVoice) -> int:
    """Serve until SIGTERM/SIGINT, drain, and return the exit code (:data:`EXIT_CODES`)."""
    from kefu.node.serving.logs import configure_logging

    configure_logging(fmt=plan.log_format)
    os.environ["KEFU_LOG_FORMAT"] = plan.log_format  # worker processes log the same way
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            voice.signal_again(sig.name)
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    if plan.workers > 1:
        if plan.link is not None:
            raise PermanentError(
                "--workers with --control-plane is not supported yet: run one `kefu node run` "
                "per core with its own --node-id and port / 受控节点暂不支持多工作进程"
            )
        return await _serve_pool(plan, voice, stop, received)
    return await _serve_one(plan, voice, stop, received)


async def _serve_one(
    plan: NodePlan, voice: RunVoice, stop: asyncio.Event, received: list[str]
) -> int:
    from kefu.node.agent.cp_link import describe_shutdown, follow_control_plane
    from kefu.node.serving.server import Node

    opts = plan.options
    node = Node(opts)
    agent = None
    stopping = False
    try:
        try:
            await node.start()
        except OSError as exc:
            raise os_error(exc, opts.data_dir) from exc
        assert node.registry is not None
        async with contextlib.AsyncExitStack() as stack:
            if plan.link is not None:
                # On exit: stop following, drain the node, then flush or save the telemetry.
                agent = await stack.enter_async_context(follow_control_plane(node, plan.link))
            voice.started(
                plan,
                Started(
                    port=node.port,
                    metrics_port=node.metrics_port,
                    tenants=sorted(node.registry.tenants),
                    errors=[e.error for e in node.registry.errors],
                    new_keys=node.registry.new_keys,
                    agent=agent,
                ),
            )
            await stop.wait()
            stopping = True
            voice.stopping(plan, received[0], pool=False)
    except Exception as exc:
        if not stopping:
            raise
        voice.shutdown_failed(exc)
        return EXIT_SHUTDOWN_FAILED
    finally:
        try:
            await asyncio.shield(node.drain())  # idempotent: done already with an agent
        except Exception as exc:
            voice.shutdown_failed(exc)
            return EXIT_SHUTDOWN_FAILED
    if agent is not None and agent.shutdown is not None:
        voice.shutdown_report(describe_shutdown(agent.shutdown))
    if node.turns_cut:
        voice.turns_cut(plan, node.turns_cut)
        return EXIT_DRAIN_TIMEOUT
    if agent is not None and agent.shutdown is not None and agent.shutdown.save_error:
        return EXIT_SHUTDOWN_FAILED
    voice.stopped_cleanly()
    return EXIT_OK


async def _serve_pool(
    plan: NodePlan, voice: RunVoice, stop: asyncio.Event, received: list[str]
) -> int:
    """N node processes on one port, supervised (see :mod:`kefu.node.serving.workers`)."""
    from kefu.node.serving.workers import WorkerPool

    async with WorkerPool(plan.options, workers=plan.workers) as pool:
        voice.started(
            plan,
            Started(
                port=pool.port,
                metrics_port=pool.metrics_port,
                tenants=list(pool.tenants),
                errors=list(pool.tenant_errors),
                new_keys=pool.new_keys,
                workers=pool.size,
            ),
        )
        await stop.wait()
        voice.stopping(plan, received[0], pool=True)
    if pool.workers_cut:
        voice.workers_cut(pool.workers_cut)
        return EXIT_DRAIN_TIMEOUT
    voice.stopped_cleanly()
    return EXIT_OK
