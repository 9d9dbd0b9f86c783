"""How a client reaches the control plane's API: its default address, the operator token and
one unary call with the errors an operator understands. Used by ``kefu cp`` and the TUI."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kefu.certstore import TlsFiles
from kefu.errors import PermanentError, TemporaryError
from kefu.tls import rpc_hint, secure_channel

__all__ = [
    "DEFAULT_CP",
    "DEFAULT_NATS",
    "TOKEN_ENV",
    "call_control_plane",
    "default_token_file",
    "resolve_operator_token",
]

DEFAULT_CP = "127.0.0.1:7500"
DEFAULT_NATS = "nats://127.0.0.1:4222"
TOKEN_ENV = "KEFU_CP_TOKEN"


def default_token_file() -> Path:
    """The admin token file `kefu up` and `kefu control-plane run` write on first start."""
    from kefu.control_plane.auth import TOKEN_FILE
    from kefu.models.store import data_dir

    return data_dir() / TOKEN_FILE


def resolve_operator_token(
    token: str | None = None, token_file: str | Path | None = None
) -> tuple[str, str]:
    """(token, where it came from): explicit token, token file, ``$KEFU_CP_TOKEN``, else the
    default file when it exists; ("", "") when none is found. Usable by other clients (TUI)."""
    from kefu.control_plane.tokens import read_token_file

    if token:
        return token.strip(), "--token"
    if token_file:
        return read_token_file(Path(token_file)), str(token_file)
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    path = default_token_file()
    return read_token_file(path, missing_ok=True), str(path)


async def call_control_plane(
    target: str,
    build: Callable[[Any], tuple[str, Any]],
    *,
    token: str | None = None,
    token_file: str | None = None,
    actor: str | None = None,
    timeout: float,
    tls: TlsFiles | None = None,
) -> Any:
    """One unary call: ``build(pb)`` gives (method name, request); the reply message back."""
    import grpc

    from kefu.control_plane.api import ACTOR_METADATA_KEY, MAX_MESSAGE_BYTES
    from kefu.v1 import bearer_metadata
    from kefu.v1 import control_plane_pb2 as pb
    from kefu.v1 import control_plane_pb2_grpc as pbg

    token, source = resolve_operator_token(token, token_file)
    md: tuple[tuple[str, str], ...] = bearer_metadata(token) if token else ()
    if actor:
        md += ((ACTOR_METADATA_KEY, actor),)
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    async with secure_channel(target, tls, options=options) as ch:
        stub = pbg.ControlPlaneStub(ch)
        method, request = build(pb)
        try:
            return await getattr(stub, method)(request, metadata=md, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            msg = f"{exc.code().name}: {exc.details()}"
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                hint = f"token from {source}" if token else f"no token found ({source} absent)"
                raise PermanentError(f"{msg} [{hint}]") from exc
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                hint = rpc_hint(exc.details() or "", tls)
                raise TemporaryError(f"control plane at {target}: {msg}{hint}") from exc
            raise PermanentError(msg) from exc
