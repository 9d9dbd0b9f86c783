"""``kefu node run`` (serve a node) and ``kefu chat`` (a terminal client for trying one)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kefu.errors import ConfigError, PermanentError, TemporaryError

if TYPE_CHECKING:
    from kefu.node.cp_link import ControlPlaneLink
    from kefu.node.server import NodeOptions

DEFAULT_TARGET = "127.0.0.1:7400"


async def _run(args: argparse.Namespace) -> int:
    from kefu.models.store import data_dir
    from kefu.node.logs import configure_logging

    configure_logging(fmt=args.log_format)
    os.environ["KEFU_LOG_FORMAT"] = args.log_format  # worker processes log the same way
    from kefu.node.server import Node

    flags = bool(args.control_plane or args.nats_creds)
    opts, workers, link = _options(args, data_dir, managed=flags)
    managed = flags or link is not None  # tenants come from the control plane
    listen = opts.listen
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if workers > 1:
        if managed:
            raise PermanentError(
                "--workers with --control-plane is not supported yet: run one `kefu node run` "
                "per core with its own --node-id and port / 受控节点暂不支持多工作进程"
            )
        return await _run_pool(opts, workers, stop, listen)
    async with Node(opts) as node, _agent(node, args, link) as agent:
        assert node.registry is not None
        if agent is not None:
            print(
                f"kefu node: agent {agent.options.node_id} following region {agent.options.region}"
            )
        _announce(
            opts,
            listen=listen,
            port=node.port,
            metrics_port=node.metrics_port,
            tenants=sorted(node.registry.tenants),
            errors=[e.error for e in node.registry.errors],
            new_keys=node.registry.new_keys,
        )
        await stop.wait()
        print("kefu node: stopping (finishing in-flight turns)…", file=sys.stderr)
    if node.turns_cut:  # exit codes as kefu-node's (kefu/node_main.py EXIT_CODES)
        print(
            f"kefu node: drain deadline expired, {node.turns_cut} turn(s) cancelled",
            file=sys.stderr,
        )
        return 3
    if agent is not None and agent.shutdown is not None:
        from kefu.node.cp_link import describe_shutdown

        print(f"kefu node: {describe_shutdown(agent.shutdown)}", file=sys.stderr)
        if agent.shutdown.save_error:
            return 74  # as kefu-node's EXIT_SHUTDOWN_FAILED
    return 0


async def _run_pool(opts: NodeOptions, workers: int, stop: asyncio.Event, listen: str) -> int:
    from kefu.node.workers import WorkerPool

    async with WorkerPool(opts, workers=workers) as pool:
        _announce(
            opts,
            listen=listen,
            port=pool.port,
            metrics_port=pool.metrics_port,
            tenants=pool.tenants,
            errors=pool.tenant_errors,
            new_keys=pool.new_keys,
            workers=workers,
        )
        await stop.wait()
        print("kefu node: stopping workers (finishing in-flight turns)…", file=sys.stderr)
    return 3 if pool.workers_cut else 0  # 3: like one node whose drain deadline cut turns


def _announce(
    opts: NodeOptions,
    *,
    listen: str,
    port: int,
    metrics_port: int,
    tenants: list[str],
    errors: list[str],
    new_keys: dict[str, str],
    workers: int = 1,
) -> None:
    from kefu.node.tenant import demo_key_path, new_key_notice

    for err in errors:
        print(f"kefu: tenant refused: {err}", file=sys.stderr)
    for tenant, key in new_keys.items():
        print(new_key_notice(opts.data_dir, tenant, key))
    procs = f" with {workers} worker processes" if workers > 1 else ""
    print(
        f"kefu node serving tenants [{', '.join(tenants)}] on "
        f"{listen.rsplit(':', 1)[0]}:{port}{procs}"
    )
    if tenants:  # a node managed by a control plane may start with none
        key_file = demo_key_path(opts.data_dir, tenants[0])
        print(f"try: kefu chat --target 127.0.0.1:{port} --key-file {key_file}")
    if metrics_port:
        print(f"metrics: http://127.0.0.1:{metrics_port}/metrics")
    sys.stdout.flush()


def _is_tenant_config(path: Path) -> bool:
    """Tenant YAMLs have a top-level ``tenant:``; anything else given to --config is a node.yaml.
    Unreadable files count as tenant configs, whose loader reports them with file and line."""
    from kefu.config.yamlsource import load_yaml

    try:  # the bounded loader: a too-deep file is a ConfigError, not a RecursionError
        data = load_yaml(path).data
    except ConfigError:
        return True
    return not isinstance(data, dict) or "tenant" in data


def _options(
    args: argparse.Namespace, data_dir: Callable[[str | None], Path], *, managed: bool = False
) -> tuple[NodeOptions, int, ControlPlaneLink | None]:
    """NodeOptions from an optional node.yaml (``--config node.yaml``, as ``kefu-node`` reads
    it), tenant YAMLs (``--config tenant.yaml ...``) and the flags, which win when given."""
    from kefu.node.server import NodeOptions
    from kefu.node.tenant import DEMO_TENANT_CONFIG

    paths = [Path(p) for p in args.config]
    node_files = [p for p in paths if not _is_tenant_config(p)]
    tenants = [p for p in paths if p not in node_files]
    if len(node_files) > 1:
        raise PermanentError(f"more than one node config: {', '.join(map(str, node_files))}")
    workers = 1
    link = None
    if node_files:
        from kefu.config.node import load_node_config
        from kefu.node.cp_link import ControlPlaneLink
        from kefu.node_main import node_options

        resolved = load_node_config(node_files[0])
        opts = node_options(resolved)
        workers = resolved.config.workers
        link = ControlPlaneLink.from_config(resolved)
        managed = managed or link is not None
        if tenants:  # tenant files on the command line come on top of the node.yaml's
            given = list(resolved.tenant_files)
            opts.tenant_configs = given + tenants
        if args.data_dir:
            opts.data_dir = data_dir(args.data_dir)
    else:
        opts = NodeOptions(
            data_dir=data_dir(args.data_dir),
            tenant_configs=tenants or ([] if managed else [DEMO_TENANT_CONFIG]),
        )
    opts.require_tenants = not managed
    if args.listen:
        opts.listen = args.listen
    if args.metrics_listen is not None:
        opts.metrics_listen = args.metrics_listen or None
    if args.reuse_port:
        opts.reuse_port = True
    if args.max_in_flight:
        opts.max_in_flight = args.max_in_flight
    if args.queue_timeout is not None:
        opts.queue_timeout_s = args.queue_timeout
    if args.workers:
        workers = args.workers
    return opts, workers, link


@contextlib.asynccontextmanager
async def _agent(node: Any, args: argparse.Namespace, link: Any) -> AsyncIterator[Any]:
    """The control-plane agent when --control-plane / --nats-creds or a node.yaml
    ``control_plane:`` section is given (else None); the flags win over the file."""
    from kefu.node.cp_link import ControlPlaneLink, follow_control_plane

    if args.control_plane or args.nats_creds:
        link = ControlPlaneLink(
            url=args.control_plane,
            credentials=Path(args.nats_creds) if args.nats_creds else None,
            region=args.region,
            node_id=args.node_id,
            telemetry_s=args.telemetry_interval,
        )
    if link is None:
        yield None
        return
    async with follow_control_plane(node, link) as agent:
        yield agent


def cmd_run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _chat(args: argparse.Namespace) -> int:
    import grpc

    from kefu.v1 import bearer_metadata
    from kefu.v1 import node_pb2 as pb
    from kefu.v1 import node_pb2_grpc as pbg

    key = args.key
    if not key:
        path = Path(args.key_file or f"kefu-data/{args.tenant}.key")
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PermanentError(
                f"{path}: cannot read the API key ({exc.strerror}); use --key"
            ) from exc
    metadata = bearer_metadata(key)
    session = ""
    interactive = not args.text
    texts = iter(args.text) if args.text else None
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = pbg.KefuNodeStub(channel)
        while True:
            text: str | None
            if texts is not None:
                text = next(texts, None)
            else:
                try:
                    text = await asyncio.to_thread(input, "you> ")
                except EOFError:
                    text = None
            if text is None or text.strip() in ("/quit", "/exit"):
                return 0
            try:
                reply = await stub.Converse(
                    pb.ConverseRequest(text=text, session_id=session, channel=pb.CHANNEL_WEB),
                    metadata=metadata,
                    timeout=args.timeout,
                )
            except grpc.aio.AioRpcError as exc:
                msg = f"{exc.code().name}: {exc.details()}"
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise TemporaryError(
                        f"node at {args.target} unreachable or busy: {msg}"
                    ) from exc
                if not interactive:
                    raise PermanentError(msg) from exc
                print(f"  ! {msg}")
                continue
            session = reply.session_id
            print(f"bot> {reply.text}")
            if args.verbose_reply:
                print(
                    f"     [{reply.language} intent={reply.intent} {reply.confidence:.2f} "
                    f"sentiment={reply.sentiment.label} scenario={reply.scenario}"
                    f"{' handoff=' + reply.handoff_reason if reply.handoff else ''}"
                    f" {reply.server_latency_us / 1000:.1f} ms]"
                )


def cmd_chat(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_chat(args))
    except KeyboardInterrupt:
        return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="the regional node that serves customer conversations")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    r = verbs.add_parser("run", help="serve gRPC (demo tenant and shipped models by default)")
    r.add_argument(
        "--config",
        action="append",
        default=[],
        help="node.yaml (as kefu-node reads it) and/or tenant YAMLs (repeatable)",
    )
    r.add_argument("--data-dir", help="data directory (default: $KEFU_DATA_DIR or ./kefu-data)")
    r.add_argument("--listen", help=f"gRPC address (default {DEFAULT_TARGET})")
    r.add_argument("--max-in-flight", type=int, help="turns served at once (default: 8)")
    r.add_argument(
        "--queue-timeout",
        type=float,
        help="longest expected wait before a turn is shed, seconds (default: 0.05)",
    )
    r.add_argument(
        "--log-format", choices=("json", "text"), default="json", help="stderr log format"
    )
    r.add_argument(
        "--metrics-listen",
        help="Prometheus /metrics address, '' to disable (default 127.0.0.1:7401)",
    )
    r.add_argument(
        "--workers",
        type=int,
        help="node processes sharing the port (use the core count for throughput; default 1)",
    )
    r.add_argument(
        "--reuse-port", action="store_true", help="share the port with other worker processes"
    )
    r.add_argument(
        "--control-plane", metavar="NATS_URL", help="follow the control plane over this NATS URL"
    )
    r.add_argument("--nats-creds", help="NATS credentials file (url, user, password; JSON)")
    r.add_argument("--region", default="local", help="region this node serves (default: local)")
    r.add_argument("--node-id", help="node id (default: the credentials' user, else hostname)")
    r.add_argument(
        "--telemetry-interval", type=float, default=10.0, help="seconds between telemetry batches"
    )
    r.set_defaults(handler=cmd_run)

    c = sub.add_parser("chat", help="chat with a node from the terminal")
    c.add_argument("--target", default=DEFAULT_TARGET)
    c.add_argument("--key", help="tenant API key")
    c.add_argument("--tenant", default="demo-shop", help="tenant whose generated key to use")
    c.add_argument("--key-file", help="file holding the key (default: kefu-data/<tenant>.key)")
    c.add_argument("--text", action="append", help="send these messages and exit (repeatable)")
    c.add_argument("--timeout", type=float, default=10.0)
    c.add_argument(
        "-d",
        "--details",
        dest="verbose_reply",
        action="store_true",
        help="show intent, sentiment, scenario and latency",
    )
    c.set_defaults(handler=cmd_chat)
