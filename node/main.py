"""``kefu-node``: the one executable an enterprise installs in a region.

    kefu-node run [--config /etc/kefu/node.yaml] [--data-dir D] [--listen H:P]
                  [--metrics-listen H:P]
    kefu-node version [--json]
    kefu-node check-config FILE [FILE ...]
    kefu-node chat [--target H:P] [--key-file F] [--text T ...] [-d]
    kefu-node gateway [--config gateway.yaml] [--listen H:P] [--node ID=H:P ...]
    kefu-node rekey --tenant T [--shred] [--data-dir /var/lib/kefu]
    kefu-node audit verify|list [--data-dir /var/lib/kefu]
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
import dataclasses
import json
import logging
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kefu import __version__
from kefu.errors import ConfigError, KefuError
from kefu.node.bootstrap import (
    EXIT_CODES,
    EXIT_DRAIN_TIMEOUT,
    EXIT_INTERNAL,
    EXIT_NOPERM,
    EXIT_OK,
    EXIT_SHUTDOWN_FAILED,
    NodePlan,
    Started,
    node_options,
    serve,
)
from kefu.node.build_info import build_info
from kefu.node.chat import add_chat_arguments

if TYPE_CHECKING:  # the heavy modules load only when a command needs them
    from kefu.config.node import ResolvedNodeConfig

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
    "node_options",
]

log = logging.getLogger("kefu.node_main")

DEFAULT_CONFIG = Path("/etc/kefu/node.yaml")


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


class BinaryVoice:
    """What ``kefu-node run`` prints (the dev CLI words it apart: kefu.node.cli)."""

    def started(self, plan: NodePlan, s: Started) -> None:
        from kefu.node.dialog.tenant import new_key_notice

        opts = plan.options
        for err in s.errors:
            print(f"kefu-node: tenant refused: {err}", file=sys.stderr)
        for tenant, key in s.new_keys.items():
            print(new_key_notice(opts.data_dir, tenant, key))
        if s.agent is not None:
            print(
                f"control plane: node {s.agent.options.node_id} following region "
                f"{s.agent.options.region} (tenants and models come from it)"
            )
        procs = f" with {s.workers} worker processes" if s.workers > 1 else ""
        print(
            f"kefu-node {__version__} serving tenants [{', '.join(s.tenants)}] on "
            f"{cfg_host(opts.listen)}:{s.port}{procs} "
            f"(config {plan.source}, data {opts.data_dir})"
        )
        if s.metrics_port:
            print(f"metrics: http://{cfg_host(opts.metrics_listen or '')}:{s.metrics_port}/metrics")
        sys.stdout.flush()

    def signal_again(self, sig: str) -> None:
        print(f"kefu-node: {sig} again: already stopping / 正在停止", file=sys.stderr)

    def stopping(self, plan: NodePlan, sig: str, *, pool: bool) -> None:
        what = "stopping workers" if pool else "stopping"
        print(
            f"kefu-node: {sig}: {what}, finishing in-flight turns "
            f"(≤ {plan.options.grace_s:g} s) / 正在停止，等待进行中的对话完成",
            file=sys.stderr,
        )

    def shutdown_report(self, text: str) -> None:
        print(f"kefu-node: {text}", file=sys.stderr)

    def shutdown_failed(self, exc: BaseException) -> None:
        log.exception("shutdown failed")
        print(f"kefu-node: error: shutdown could not close storage: {exc}", file=sys.stderr)

    def turns_cut(self, plan: NodePlan, n: int) -> None:
        print(
            f"kefu-node: drain deadline ({plan.options.grace_s:g} s) expired: {n} "
            f"in-flight turn(s) cancelled / 超时，已取消 {n} 个进行中的对话",
            file=sys.stderr,
        )

    def workers_cut(self, n: int) -> None:
        print(
            f"kefu-node: {n} worker(s) did not stop cleanly within the drain "
            f"deadline / {n} 个工作进程未能按时正常停止",
            file=sys.stderr,
        )

    def stopped_cleanly(self) -> None:
        print("kefu-node: stopped cleanly / 已正常停止", file=sys.stderr)


def cfg_host(address: str) -> str:
    host = address.rpartition(":")[0]
    return "127.0.0.1" if host in ("", "0.0.0.0", "[::]") else host


def cmd_run(args: argparse.Namespace) -> int:
    from kefu.node.agent.cp_link import ControlPlaneLink

    resolved = _resolve_run_config(args)
    plan = NodePlan(
        options=node_options(resolved),
        workers=resolved.config.workers,
        link=ControlPlaneLink.from_config(resolved) if resolved.config.workers == 1 else None,
        log_format=resolved.config.logging.format,
        source=str(resolved.source),
    )
    return asyncio.run(serve(plan, BinaryVoice()))


# --------------------------------------------------------------------------- chat


def cmd_chat(args: argparse.Namespace) -> int:
    """``kefu chat`` bundled into the executable, so an operator can try a fresh install."""
    from kefu.node.chat import run_chat

    return run_chat(args, key_dir=Path("/var/lib/kefu"))


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
    for name in ("start", "systemd", "force_config", "listen", "client_auth"):
        if getattr(args, name, None) is not None:
            fields[name] = getattr(args, name)
    for name in ("tls_cert", "tls_key", "tls_ca"):
        if getattr(args, name, None):
            fields[name] = Path(getattr(args, name))
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
    add_chat_arguments(t, key_dir="/var/lib/kefu")
    t.set_defaults(handler=cmd_chat)

    from kefu.node.cli import add_key_commands

    add_key_commands(sub, data_dir_default="/var/lib/kefu")

    from kefu.node.gateway.cli import add_run_arguments

    add_run_arguments(
        sub.add_parser("gateway", help="the access gateway in front of the region's nodes")
    )

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
    i.add_argument(
        "--listen",
        default="127.0.0.1:7400",
        help="gRPC address for a new node.yaml (a non-loopback one needs --tls-*)",
    )
    i.add_argument("--tls-cert", help="the node's certificate (kefu certs issue ... --role node)")
    i.add_argument("--tls-key", help="its private key (copied 0640 root:kefu)")
    i.add_argument("--tls-ca", help="the CA certificate clients and gateways are checked against")
    i.add_argument(
        "--client-auth",
        action="store_true",
        default=None,
        help="mutual TLS: gateways must present a certificate of --tls-ca",
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
