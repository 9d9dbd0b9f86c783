"""``kefu chat`` and ``kefu-node chat``: a terminal client for trying a node (one parser, one
client; only the default key directory differs)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from kefu.errors import PermanentError, TemporaryError
from kefu.tls import add_client_tls_arguments, client_tls, rpc_hint, secure_channel

__all__ = ["DEFAULT_TARGET", "add_chat_arguments", "run_chat"]

DEFAULT_TARGET = "127.0.0.1:7400"


def add_chat_arguments(p: argparse.ArgumentParser, *, key_dir: str) -> None:
    """The chat flags; ``key_dir`` is shown as the default location of ``<tenant>.key``."""
    p.add_argument("--target", default=DEFAULT_TARGET, help="node address (%(default)s)")
    p.add_argument("--key", help="tenant API key")
    p.add_argument("--tenant", default="demo-shop", help="tenant whose generated key to use")
    p.add_argument("--key-file", help=f"file holding the key (default: {key_dir}/<tenant>.key)")
    p.add_argument("--text", action="append", help="send these messages and exit (repeatable)")
    p.add_argument("--timeout", type=float, default=10.0)
    add_client_tls_arguments(p)
    p.add_argument(
        "-d",
        "--details",
        dest="verbose_reply",
        action="store_true",
        help="show intent, sentiment, scenario and latency",
    )


async def _chat(args: argparse.Namespace, key_dir: Path) -> int:
    import grpc

    from kefu.v1 import bearer_metadata
    from kefu.v1 import node_pb2 as pb
    from kefu.v1 import node_pb2_grpc as pbg

    key = args.key
    if not key:
        path = Path(args.key_file) if args.key_file else key_dir / f"{args.tenant}.key"
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
    tls = client_tls(args, data_dir=key_dir)
    async with secure_channel(args.target, tls) as channel:
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
                msg = f"{exc.code().name}: {exc.details()}{rpc_hint(exc.details() or '', tls)}"
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
                model = reply.model_versions.get("intent", "")
                print(
                    f"     [{reply.language} intent={reply.intent} {reply.confidence:.2f} "
                    f"sentiment={reply.sentiment.label} scenario={reply.scenario}"
                    f"{' handoff=' + reply.handoff_reason if reply.handoff else ''}"
                    f" {reply.server_latency_us / 1000:.1f} ms"
                    f"{' ' + model if model else ''}]"
                )


def run_chat(args: argparse.Namespace, *, key_dir: Path) -> int:
    """Chat as the parsed arguments say; ``key_dir`` holds ``<tenant>.key`` when neither
    ``--key`` nor ``--key-file`` is given."""
    try:
        return asyncio.run(_chat(args, key_dir))
    except KeyboardInterrupt:
        return 0
