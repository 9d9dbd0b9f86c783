"""``kefu-node``: the one executable an enterprise installs in a region.

    kefu-node run [--config /etc/kefu/node.yaml] [--data-dir D] [--listen H:P]
                  [--metrics-listen H:P]
    kefu-node version [--json]
    kefu-node check-config FILE [FILE ...]
    kefu-node chat [--target H:P] [--key-file F] [--text T ...] [-d]
    kefu-node install [--root DIR] [--no-start] ...
    kefu-node uninstall [--root DIR] [--purge]

This is the entry point of the PyInstaller build (``packaging/``) and of the ``kefu-node``
console script; the developer CLI (``kefu node run``) stays as it is. ``run`` reads the node
configuration (:mod:`kefu.config.node`), serves until SIGTERM or SIGINT, then drains: it stops
accepting, lets in-flight turns finish within ``limits.drain_timeout_s``, and closes the
per-tenant SQLite stores (which checkpoints their WAL). The exit code tells what happened
(:data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kefu import __version__
from kefu.errors import ConfigError, KefuError

if TYPE_CHECKING:  # the heavy modules load only when a command needs them
    from kefu.config.node import ResolvedNodeConfig
    from kefu.node.serving.server import NodeOptions

__all__ = [
    "DEFAULT_CONFIG",
    "EXIT_CODES",
    "EXIT_DRAIN_TIMEOUT",
    "EXIT_INTERNAL",
    "EXIT_NOPERM",
    "EXIT_OK",
    "EXIT_SHUTDOWN_FAILED",
    "build_info",
    "main",
]

log = logging.getLogger("kefu.node_main")

DEFAULT_CONFIG = Path("/etc/kefu/node.yaml")

EXIT_OK = 0
EXIT_DRAIN_TIMEOUT = 3
EXIT_INTERNAL = 70  # EX_SOFTWARE
EXIT_SHUTDOWN_FAILED = 74  # EX_IOERR
EXIT_NOPERM = 77  # EX_NOPERM

#: Every exit code of ``kefu-node`` and what it means (also printed by ``kefu-node --help``).
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


# --------------------------------------------------------------------------- build info


def build_info() -> dict[str, Any]:
    """Version, git commit and build date: from the file the build embeds, else the checkout."""
    info: dict[str, Any] = {"version": __version__, "commit": "unknown", "build_date": None}
    embedded = Path(__file__).with_name("_build_info.json")
    if embedded.is_file():
        try:
            info.update(json.loads(embedded.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:  # a broken stamp must not stop a node
            log.warning("cannot read %s: %s", embedded, exc)
        return info
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        info["commit"] = out.stdout.strip() + " (source checkout, not a build)"
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def cmd_version(args: argparse.Namespace) -> int:
    info = build_info()
    info["frozen"] = bool(getattr(sys, "frozen", False))
    info["python"] = platform.python_version()
    info["platform"] = f"{platform.system().lower()}-{platform.machine()}"
    info["execution_providers"] = _providers()
    if args.json:
        print(json.dumps(info, ensure_ascii=False, indent=2))
        return 0
    print(f"kefu-node {info['version']}")
    print(f"  commit:     {info['commit']}")
    print(f"  built:      {info['build_date'] or '(not a build)'}")
    print(f"  python:     {info['python']} ({info['platform']}, frozen={info['frozen']})")
    print(f"  providers:  {', '.join(info['execution_providers'])}")
    return 0


# --------------------------------------------------------------------------- check-config


def _looks_like_tenant(path: Path) -> bool:
    from kefu.config.yamlsource import load_yaml

    data = load_yaml(path).data
    return isinstance(data, dict) and "tenant" in data


def cmd_check_config(args: argparse.Namespace) -> int:
    from kefu.config import load_tenant_config
    from kefu.config.node import load_node_config

    failed: list[ConfigError] = []
    for name in args.files:
        path = Path(name)
        try:
            if _looks_like_tenant(path):
                tcfg = load_tenant_config(path)
                print(f"{path}: ok (tenant {tcfg.tenant.id})")
                continue
            resolved = load_node_config(path)
            cfg = resolved.config
            print(f"{path}: ok (node config)")
            print(f"  data_dir        {resolved.data_dir}")
            print(f"  listen          {cfg.listen}")
            print(f"  metrics_listen  {cfg.metrics_listen or '(off)'}")
            for tenant_file in resolved.tenant_files:
                tcfg = load_tenant_config(tenant_file)
                print(f"  tenant          {tcfg.tenant.id} ({tenant_file}): ok")
            cp = cfg.control_plane
            if cp is not None:
                creds = resolved.credentials_file
                print(f"  control_plane   region {cp.region}, node {cp.node_id or '(default)'}")
                print(f"    url           {cp.url or '(from the credentials file)'}")
                print(f"    credentials   {f'{creds}: readable' if creds else '(none)'}")
                print(f"    telemetry     every {cp.telemetry_interval_s:g} s")
            elif not resolved.tenant_files:
                print("  tenant          demo-shop (built-in demo)")
        except ConfigError as exc:
            failed.append(exc)
            print(f"kefu-node: error: {exc}", file=sys.stderr)
    if failed:
        return failed[0].exit_code
    return 0


# --------------------------------------------------------------------------- run


def _resolve_run_config(args: argparse.Namespace) -> ResolvedNodeConfig:
    from kefu.config.node import NodeConfig, ResolvedNodeConfig, load_node_config

    explicit = args.config or os.environ.get("KEFU_NODE_CONFIG")
    if explicit:
        resolved = load_node_config(explicit)
    elif DEFAULT_CONFIG.is_file():
        resolved = load_node_config(DEFAULT_CONFIG)
    else:
        # No installed config: a developer trying the binary. Same defaults as `kefu node run`.
        print(
            f"kefu-node: no {DEFAULT_CONFIG}, running on defaults (see `kefu-node install`)",
            file=sys.stderr,
        )
        resolved = ResolvedNodeConfig(
            source="<defaults>",
            config=NodeConfig(),
            data_dir=Path(os.environ.get("KEFU_DATA_DIR") or "kefu-data").absolute(),
        )
    overrides: dict[str, Any] = {}
    if args.listen:
        overrides["listen"] = args.listen
    if args.metrics_listen is not None:
        overrides["metrics_listen"] = args.metrics_listen or None
    if overrides:
        # Re-validate so a bad override gets the same checks as the file.
        merged = resolved.config.model_dump() | overrides
        try:
            cfg = NodeConfig.model_validate(merged)
        except ValueError as exc:
            raise ConfigError(f"bad command-line override: {exc}") from exc
        resolved = dataclasses.replace(resolved, config=cfg)
    if args.data_dir:
        resolved = dataclasses.replace(resolved, data_dir=Path(args.data_dir).absolute())
    return resolved


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
    return opts


async def _serve(resolved: ResolvedNodeConfig) -> int:
    from kefu.node.dialog.tenant import new_key_notice
    from kefu.node.serving.logs import configure_logging
    from kefu.node.serving.server import Node

    configure_logging(fmt=resolved.config.logging.format)
    opts = node_options(resolved)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            print(f"kefu-node: {sig.name} again: already stopping / 正在停止", file=sys.stderr)
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    if resolved.config.workers > 1:
        return await _serve_pool(resolved, opts, stop, received)
    from kefu.node.agent.cp_link import ControlPlaneLink, describe_shutdown, follow_control_plane

    link = ControlPlaneLink.from_config(resolved)
    node = Node(opts)
    agent = None
    stopping = False
    try:
        try:
            await node.start()
        except OSError as exc:
            raise _os_error(exc, resolved) from exc
        assert node.registry is not None
        async with contextlib.AsyncExitStack() as stack:
            if link is not None:
                # On exit: stop following, drain the node, then flush or save the telemetry.
                agent = await stack.enter_async_context(follow_control_plane(node, link))
            for err in node.registry.errors:
                print(f"kefu-node: tenant refused: {err.error}", file=sys.stderr)
            for tenant, key in node.registry.new_keys.items():
                print(new_key_notice(opts.data_dir, tenant, key))
            if agent is not None:
                print(
                    f"control plane: node {agent.options.node_id} following region "
                    f"{agent.options.region} (tenants and models come from it)"
                )
            host = cfg_host(opts.listen)
            tenants = ", ".join(sorted(node.registry.tenants))
            print(
                f"kefu-node {__version__} serving tenants [{tenants}] on {host}:{node.port} "
                f"(config {resolved.source}, data {opts.data_dir})"
            )
            if node.metrics_port:
                print(
                    f"metrics: http://{cfg_host(opts.metrics_listen or '')}:"
                    f"{node.metrics_port}/metrics"
                )
            sys.stdout.flush()
            await stop.wait()
            stopping = True
            print(
                f"kefu-node: {received[0]}: stopping, finishing in-flight turns "
                f"(≤ {opts.grace_s:g} s) / 正在停止，等待进行中的对话完成",
                file=sys.stderr,
            )
    except Exception as exc:
        if not stopping:
            raise
        log.exception("shutdown failed")
        print(f"kefu-node: error: shutdown could not close storage: {exc}", file=sys.stderr)
        return EXIT_SHUTDOWN_FAILED
    finally:
        try:
            await asyncio.shield(node.drain())  # idempotent: done already with an agent
        except Exception as exc:
            log.exception("shutdown failed")
            print(f"kefu-node: error: shutdown could not close storage: {exc}", file=sys.stderr)
            return EXIT_SHUTDOWN_FAILED
    if agent is not None and agent.shutdown is not None:
        print(f"kefu-node: {describe_shutdown(agent.shutdown)}", file=sys.stderr)
    if node.turns_cut:
        print(
            f"kefu-node: drain deadline ({opts.grace_s:g} s) expired: {node.turns_cut} "
            f"in-flight turn(s) cancelled / 超时，已取消 {node.turns_cut} 个进行中的对话",
            file=sys.stderr,
        )
        return EXIT_DRAIN_TIMEOUT
    if agent is not None and agent.shutdown is not None and agent.shutdown.save_error:
        return EXIT_SHUTDOWN_FAILED
    print("kefu-node: stopped cleanly / 已正常停止", file=sys.stderr)
    return EXIT_OK


async def _serve_pool(
    resolved: ResolvedNodeConfig, opts: NodeOptions, stop: asyncio.Event, received: list[str]
) -> int:
    """``workers: N``: N node processes on one port, supervised (see kefu.node.serving.workers)."""
    from kefu.node.dialog.tenant import new_key_notice
    from kefu.node.serving.workers import WorkerPool

    os.environ["KEFU_LOG_FORMAT"] = resolved.config.logging.format
    async with WorkerPool(opts, workers=resolved.config.workers) as pool:
        for err in pool.tenant_errors:
            print(f"kefu-node: tenant refused: {err}", file=sys.stderr)
        for tenant, key in pool.new_keys.items():
            print(new_key_notice(opts.data_dir, tenant, key))
        print(
            f"kefu-node {__version__} serving tenants [{', '.join(pool.tenants)}] on "
            f"{cfg_host(opts.listen)}:{pool.port} with {pool.size} worker processes "
            f"(config {resolved.source}, data {opts.data_dir})"
        )
        if pool.metrics_port:
            print(
                f"metrics: http://{cfg_host(opts.metrics_listen or '')}:{pool.metrics_port}/metrics"
            )
        sys.stdout.flush()
        await stop.wait()
        print(
            f"kefu-node: {received[0]}: stopping workers, finishing in-flight turns "
            f"(≤ {opts.grace_s:g} s) / 正在停止，等待进行中的对话完成",
            file=sys.stderr,
        )
    if pool.workers_cut:
        print(
            f"kefu-node: {pool.workers_cut} worker(s) did not stop cleanly within the drain "
            f"deadline / {pool.workers_cut} 个工作进程未能按时正常停止",
            file=sys.stderr,
        )
        return EXIT_DRAIN_TIMEOUT
    print("kefu-node: stopped cleanly / 已正常停止", file=sys.stderr)
    return EXIT_OK


def cfg_host(address: str) -> str:
    host = address.rpartition(":")[0]
    return "127.0.0.1" if host in ("", "0.0.0.0", "[::]") else host


def _os_error(exc: OSError, resolved: ResolvedNodeConfig) -> KefuError:
    from kefu.errors import PermanentError, TemporaryError

    where = f"{exc.filename}: " if exc.filename else ""
    if isinstance(exc, PermissionError):
        err = PermanentError(
            f"{where}permission denied (the data directory {resolved.data_dir} must be "
            "writable by the user running the node)"
        )
        err.exit_code = EXIT_NOPERM
        return err
    return TemporaryError(f"{where}{exc.strerror or exc}")


def cmd_run(args: argparse.Namespace) -> int:
    resolved = _resolve_run_config(args)
    return asyncio.run(_serve(resolved))


# --------------------------------------------------------------------------- chat


def cmd_chat(args: argparse.Namespace) -> int:
    """``kefu chat`` bundled into the executable, so an operator can try a fresh install."""
    from kefu.node.cli import cmd_chat as chat

    if not args.key and not args.key_file:
        args.key_file = str(Path("/var/lib/kefu") / f"{args.tenant}.key")
    return chat(args)


# --------------------------------------------------------------------------- install


def cmd_install(args: argparse.Namespace) -> int:
    from kefu.node.install import InstallOptions, install

    return install(_install_options(args, InstallOptions))


def cmd_uninstall(args: argparse.Namespace) -> int:
    from kefu.node.install import InstallOptions, uninstall

    return uninstall(_install_options(args, InstallOptions), purge=args.purge)


def _install_options(args: argparse.Namespace, cls: Any) -> Any:
    fields: dict[str, Any] = {"root": Path(args.root), "user": args.user}
    if getattr(args, "binary", None):
        fields["binary"] = Path(args.binary)
    for name in ("start", "systemd", "force_config"):
        if getattr(args, name, None) is not None:
            fields[name] = getattr(args, name)
    return cls(**fields)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="kefu-node",
        description="Kefu regional node (客服节点): serves customer conversations over gRPC.",
        epilog=f"exit codes:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kefu-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="serve until SIGTERM (then drain and exit)")
    r.add_argument(
        "--config",
        help=f"node.yaml (default: $KEFU_NODE_CONFIG, else {DEFAULT_CONFIG} if it exists)",
    )
    r.add_argument("--data-dir", help="override data_dir")
    r.add_argument("--listen", help="override listen (gRPC host:port)")
    r.add_argument("--metrics-listen", help="override metrics_listen ('' = off)")
    r.set_defaults(handler=cmd_run)

    v = sub.add_parser("version", help="version, commit, build date, execution providers")
    v.add_argument("--json", action="store_true")
    v.set_defaults(handler=cmd_version)

    c = sub.add_parser("check-config", help="validate a node.yaml (and its tenants) or a tenant")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.set_defaults(handler=cmd_check_config)

    t = sub.add_parser("chat", help="try a node: send messages, print the replies")
    t.add_argument("--target", default="127.0.0.1:7400", help="node address (%(default)s)")
    t.add_argument("--key", help="tenant API key")
    t.add_argument("--tenant", default="demo-shop", help="tenant whose generated key to use")
    t.add_argument("--key-file", help="file holding the key (default /var/lib/kefu/<tenant>.key)")
    t.add_argument("--text", action="append", help="send these messages and exit (repeatable)")
    t.add_argument("--timeout", type=float, default=10.0)
    t.add_argument(
        "-d", "--details", dest="verbose_reply", action="store_true", help="intent, scenario..."
    )
    t.set_defaults(handler=cmd_chat)

    i = sub.add_parser("install", help="install as a system service (user, dirs, config, unit)")
    _common_install_args(i)
    i.add_argument("--binary", help="executable to install (default: this one, when frozen)")
    i.add_argument(
        "--no-start", dest="start", action="store_false", help="do not enable/start the unit"
    )
    i.add_argument(
        "--no-systemd",
        dest="systemd",
        action="store_false",
        help="skip systemctl even when systemd runs (print how to supervise instead)",
    )
    i.add_argument(
        "--force-config", action="store_true", help="overwrite an existing /etc/kefu/node.yaml"
    )
    i.set_defaults(handler=cmd_install, start=True, systemd=True)

    u = sub.add_parser("uninstall", help="remove the service and binary (data kept)")
    _common_install_args(u)
    u.add_argument(
        "--purge", action="store_true", help="also delete /etc/kefu, /var/lib/kefu and the user"
    )
    u.set_defaults(handler=cmd_uninstall)
    return parser


def _common_install_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="/", help="install below this directory (default: /)")
    p.add_argument("--user", default="kefu", help="system user the node runs as")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except KefuError as exc:
        if os.environ.get("KEFU_DEBUG"):
            raise
        print(f"kefu-node: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # never a stack trace for an operator; the log has it
        if os.environ.get("KEFU_DEBUG"):
            raise
        log.error("internal error: %r (KEFU_DEBUG=1 shows the traceback)", exc)
        print(f"kefu-node: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
