"""The node's gRPC wire contract, version 1 (``package kefu.v1``).

The contract is ``proto/kefu/v1/node.proto``; its comments are the API documentation. The
modules beside this file are generated from it by ``python -m kefu.dev.protogen`` and committed:

* :mod:`kefu.v1.node_pb2` — messages and enums (needs only ``protobuf``);
* :mod:`kefu.v1.node_pb2_grpc` — ``KefuNodeStub``, ``KefuNodeServicer`` and
  ``add_KefuNodeServicer_to_server`` (needs ``grpcio``).

This package itself imports neither, so pure code can use the constants and helpers below
(how the tenant API key travels in request metadata) without pulling in gRPC.
"""

from __future__ import annotations

from collections.abc import Iterable

from kefu.errors import PermanentError

__all__ = [
    "AUTH_METADATA_KEY",
    "BEARER_SCHEME",
    "PROTO_PATH",
    "RETRY_AFTER_METADATA_KEY",
    "SERVICE_NAME",
    "api_key_from_metadata",
    "bearer_metadata",
]

#: Fully qualified service name, as in gRPC method paths ``/kefu.v1.KefuNode/Converse``.
SERVICE_NAME = "kefu.v1.KefuNode"
#: The contract, relative to the repository's ``proto/`` directory.
PROTO_PATH = "kefu/v1/node.proto"
#: Request metadata key carrying ``Bearer <api key>`` (gRPC metadata keys are lower case).
AUTH_METADATA_KEY = "authorization"
#: The authorization scheme; compared case-insensitively, as in HTTP (RFC 7235).
BEARER_SCHEME = "Bearer"
#: Trailing metadata key on RESOURCE_EXHAUSTED: milliseconds to wait before retrying.
RETRY_AFTER_METADATA_KEY = "retry-after-ms"


def _valid_key(key: str) -> bool:
    # Metadata values must be printable ASCII; a space would make the header ambiguous.
    return bool(key) and all("!" <= ch <= "~" for ch in key)


def bearer_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``api_key``: pass as ``metadata=`` on every stub call.

    Raises :class:`PermanentError` for an empty key or one that is not printable ASCII
    without spaces (it could not travel in gRPC metadata intact).
    """
    if not _valid_key(api_key):
        raise PermanentError(
            "API key must be non-empty printable ASCII without spaces"
            " / API 密钥须为非空、无空格的可打印 ASCII 字符"
        )
    return ((AUTH_METADATA_KEY, f"{BEARER_SCHEME} {api_key}"),)


def api_key_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The API key from request metadata, or ``None`` when absent or malformed.

    Accepts what ``context.invocation_metadata()`` returns (sync and asyncio servers). Exactly
    one ``authorization`` entry of the form ``Bearer <key>`` is accepted; several entries are
    refused rather than guessing which one counts.
    """
    values = [v for k, v in metadata or () if k.lower() == AUTH_METADATA_KEY]
    if len(values) != 1:
        return None
    value = values[0]
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    scheme, _, key = value.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != BEARER_SCHEME.lower() or not _valid_key(key):
        return None
    return key
