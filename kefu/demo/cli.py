"""``kefu demo order-center``: run the demo order center the demo tenant's plugins call;
``kefu demo traffic``: simulated customers (:mod:`kefu.demo.traffic`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from pathlib import Path

from kefu.errors import PermanentError

__all__ = ["register"]

DEFAULT_LISTEN = "127.0.0.1:7480"
TOKEN_SECRET = "order_center_token"


def _token(data_dir: Path, given: str | None) -> str:
    """The token: --token, else $KEFU_SECRET_ORDER_CENTER_TOKEN, else the one kept in
    ``<data-dir>/secrets/order_center_token`` (created once, mode 0600) — the file the node
    reads the same secret from, so the two find each other with the same --data-dir."""
    token = given or os.environ.get("KEFU_SECRET_ORDER_CENTER_TOKEN")
    path = data_dir / "secrets" / TOKEN_SECRET
    if token:
        return token
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token


async def _serve(args: argparse.Namespace) -> None:
    from kefu.demo.order_center import OrderCenter

    host, _, port = args.listen.rpartition(":")
    try:
        port_no = int(port)
    except ValueError as exc:
        raise PermanentError(f"--listen must be host:port, got {args.listen!r}") from exc
    from kefu.models.store import data_dir as default_data_dir

    data_dir = default_data_dir(args.data_dir)
    token = _token(data_dir, args.token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with OrderCenter(
        data_dir / "order-center.db",
        host=host or "127.0.0.1",
        port=port_no,
        token=token,
        seed_orders=args.orders,
    ) as oc:
        print(f"order center listening on {oc.url} (data {oc.db_path})", flush=True)
        print(f"token: {data_dir / 'secrets' / TOKEN_SECRET} (or --token)", flush=True)
        await stop.wait()


def _order_center(args: argparse.Namespace) -> int:
    asyncio.run(_serve(args))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="demo back-office systems (order center), simulated customers")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    oc = verbs.add_parser("order-center", help="run the demo order center (HTTP + SQLite)")
    oc.add_argument(
        "--listen", default=DEFAULT_LISTEN, help=f"host:port (default {DEFAULT_LISTEN})"
    )
    oc.add_argument(
        "--data-dir", help="data directory (default: $KEFU_DATA_DIR or ./kefu-data), as the node's"
    )
    oc.add_argument("--token", help="API token (default: <data-dir>/secrets/order_center_token)")
    oc.add_argument("--orders", type=int, default=600, help="orders to seed a new database with")
    oc.set_defaults(handler=_order_center)
    from kefu.demo.traffic import register as register_traffic

    register_traffic(verbs)
