"""``kefu gateway run|identity-token`` (and ``kefu-node gateway``, the same ``run``).

kefu gateway run --config gateway.yaml [--listen 127.0.0.1:7600]
kefu gateway run --node local-1=127.0.0.1:7400 --tenant demo-shop --key-file kefu-data/demo-shop.key
kefu gateway identity-token --secret-file F --user U [--attr vip=true ...] [--ttl 3600]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from kefu.errors import ConfigError
from kefu.logformat import JsonFormatter

__all__ = ["add_run_arguments", "register", "run_gateway"]

log = logging.getLogger("kefu.gateway")


def _log_to_stderr(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger("kefu")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def _resolve(args: argparse.Namespace) -> Any:
    from kefu.node.gateway.config import (
        GatewayConfig,
        load_gateway_config,
        resolve_gateway,
    )

    if args.config:
        resolved = load_gateway_config(args.config)
        if args.listen:
            cfg = resolved.config.model_copy(update={"listen": args.listen})
            resolved = resolve_gateway(
                cfg, base=Path(args.config).resolve().parent, source=args.config
            )
        return resolved
    if not args.node or not args.tenant or not args.key_file:
        raise ConfigError(
            "kefu gateway run needs --config gateway.yaml, or --node ID=HOST:PORT (repeatable), "
            "--tenant and --key-file / 需要 --config 或 --node、--tenant、--key-file"
        )
    nodes = []
    for spec in args.node:
        nid, sep, addr = spec.partition("=")
        if not sep:
            raise ConfigError(f"--node {spec!r}: use ID=HOST:PORT, e.g. local-1=127.0.0.1:7400")
        nodes.append({"id": nid, "address": addr})
    raw = {
        "listen": args.listen or "127.0.0.1:7600",
        "nodes": nodes,
        "tenants": [
            {
                "id": args.tenant,
                "api_key_file": str(Path(args.key_file).absolute()),
                "allowed_origins": args.allow_origin or [],
            }
        ],
    }
    try:
        cfg = GatewayConfig.model_validate(raw)
    except ValueError as exc:
        raise ConfigError(f"kefu gateway run: {exc}") from exc
    return resolve_gateway(cfg, base=Path.cwd(), source="<command line>")


async def _serve(resolved: Any) -> int:
    from kefu.node.gateway.app import Gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Gateway(resolved) as gw:
        up = [n.id for n in gw.pool.healthy()]
        print(
            f"kefu gateway on {gw.url} → nodes {[n.id for n in resolved.nodes]} "
            f"({len(up)} up); demo page {gw.url}/demo; API {gw.url}/v1/openapi.json"
        )
        sys.stdout.flush()
        await stop.wait()
        print("kefu gateway: stopping / 正在停止", file=sys.stderr)
    return 0


def event_loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """``asyncio.run`` or uvloop's: ``auto`` takes uvloop when it is installed (it cuts the
    gateway's per-request cost; see docs/benchmarks.md "Access gateway overhead")."""
    if choice == "asyncio":
        return asyncio.run
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise ConfigError(
                "--event-loop uvloop: uvloop is not installed / 未安装 uvloop"
            ) from exc
        return asyncio.run
    return uvloop.run


def run_gateway(args: argparse.Namespace) -> int:
    resolved = _resolve(args)
    _log_to_stderr(resolved.config.log_format if args.log_format is None else args.log_format)
    return event_loop_runner(getattr(args, "event_loop", "auto"))(_serve(resolved))


def identity_token(args: argparse.Namespace) -> int:
    from kefu.node.gateway.identity import sign_identity

    try:
        secret = Path(args.secret_file).read_text(encoding="utf-8").strip().encode("utf-8")
    except OSError as exc:
        raise ConfigError(f"--secret-file: cannot read {args.secret_file}: {exc.strerror}") from exc
    attrs = {}
    for item in args.attr or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise ConfigError(f"--attr {item!r}: use NAME=VALUE, e.g. vip=true")
        attrs[k] = v
    now = time.time()
    print(
        sign_identity(
            secret, user_id=args.user, expires_at=now + args.ttl, issued_at=now, attributes=attrs
        )
    )
    return 0


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="gateway.yaml (nodes, tenants, limits; see docs/gateway.md)")
    p.add_argument("--listen", help="HTTP host:port (default 127.0.0.1:7600)")
    p.add_argument("--node", action="append", metavar="ID=HOST:PORT", help="a node (repeatable)")
    p.add_argument("--tenant", help="tenant id (without --config)")
    p.add_argument("--key-file", help="the tenant's channel API key file (without --config)")
    p.add_argument("--allow-origin", action="append", help="an allowed browser origin (repeatable)")
    p.add_argument("--log-format", choices=("json", "text"), default=None)
    p.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="auto: uvloop when installed (faster), else asyncio",
    )
    p.set_defaults(handler=run_gateway)


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("gateway", help="the access gateway: HTTP/JSON, WebSocket, widget, WeChat")
    gsub = g.add_subparsers(dest="gateway_command", required=True, metavar="COMMAND")
    add_run_arguments(gsub.add_parser("run", help="serve the channels in front of the nodes"))
    t = gsub.add_parser("identity-token", help="sign a customer identity token (for testing)")
    t.add_argument("--secret-file", required=True)
    t.add_argument("--user", required=True)
    t.add_argument("--attr", action="append", metavar="NAME=VALUE")
    t.add_argument("--ttl", type=float, default=3600.0)
    t.set_defaults(handler=identity_token)
