"""TLS for the gRPC listeners and the NATS connections, from :class:`~kefu.certstore.TlsFiles`.

* :func:`server_credentials`: gRPC server credentials that **re-read the certificate pair when
  its files change** (grpcio asks before every new handshake; open connections keep theirs),
  so a renewed certificate is served without a restart and without a failed RPC. A pair that
  does not match (caught half-written) is ignored until it does.
* :func:`channel_credentials`: a gRPC client that verifies the server against the CA (and
  presents its own pair for mutual TLS).
* :func:`client_ssl_context`: the ``ssl`` context of a NATS client (verifies the server;
  presents the pair NATS maps to a user). :func:`refresh_context` reloads a renewed pair into
  it (called before reconnecting).
* :func:`warn_plaintext`: the loud warning of a plaintext listener or connection.

grpcio is imported lazily: NATS-only processes never load it for their TLS context.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kefu.certstore import TlsFiles, check_pair
from kefu.pki import key_matches

if TYPE_CHECKING:
    import grpc

__all__ = [
    "PairWatcher",
    "add_client_tls_arguments",
    "bind",
    "channel_credentials",
    "client_ssl_context",
    "client_tls",
    "is_loopback",
    "refresh_context",
    "rpc_hint",
    "secure_channel",
    "server_credentials",
    "warn_plaintext",
]

log = logging.getLogger("kefu.tls")


def _stamp(paths: list[Path]) -> tuple[tuple[int, int], ...]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0))
    return tuple(out)


class PairWatcher:
    """The current (key, certificate, CA) bytes of ``files``, re-read when they change; at
    most one ``stat`` round per ``min_interval_s``."""

    def __init__(self, files: TlsFiles, *, min_interval_s: float = 0.5):
        if files.cert_file is None or files.key_file is None:
            raise ValueError("a server needs a certificate and a key")
        self.files = files
        self.min_interval_s = min_interval_s
        self._key, self._cert = files.key_file, files.cert_file
        self._paths = [files.key_file, files.cert_file, files.ca_file]
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp = _stamp(self._paths)
        first = self._load()
        if first is None:
            raise ValueError(f"{files.key_file} does not match {files.cert_file}")
        self.current: tuple[bytes, bytes, bytes] = first
        #: How many times a changed pair was loaded (tests and logs).
        self.reloads = 0

    def _load(self) -> tuple[bytes, bytes, bytes] | None:
        try:
            key = self._key.read_bytes()
            cert = self._cert.read_bytes()
            ca = self.files.ca_file.read_bytes()
            if not key_matches(cert, key):
                return None
        except (OSError, ValueError):
            return None
        return key, cert, ca

    def poll(self) -> bool:
        """True when a changed, consistent pair was loaded into :attr:`current`."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked < self.min_interval_s:
                return False
            self._checked = now
            stamp = _stamp(self._paths)
            if stamp == self._stamp:
                return False
            loaded = self._load()
            if loaded is None:  # half-written: try again on a later handshake
                return False
            self._stamp, self.current = stamp, loaded
            self.reloads += 1
        log.info("TLS certificate %s reloaded", self.files.cert_file)
        return True


def server_credentials(files: TlsFiles, *, require_client_cert: bool = False) -> Any:
    """gRPC server credentials that follow certificate renewals (see the module docstring).
    With ``require_client_cert`` (mutual TLS) a client must present a certificate of the CA."""
    import grpc  # lazy: NATS-only processes never load grpcio for their TLS context

    check_pair(files)
    watcher = PairWatcher(files)

    def config() -> Any:
        key, cert, ca = watcher.current
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch() -> Any:
        return config() if watcher.poll() else None

    creds = grpc.dynamic_ssl_server_credentials(
        config(), fetch, require_client_authentication=require_client_cert
    )
    creds.kefu_watcher = watcher
    return creds


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    import grpc

    ca = files.ca_file.read_bytes()
    if files.cert_file and files.key_file:
        return grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=files.key_file.read_bytes(),
            certificate_chain=files.cert_file.read_bytes(),
        )
    return grpc.ssl_channel_credentials(root_certificates=ca)


def client_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.cert_file and files.key_file:
        ctx.load_cert_chain(str(files.cert_file), str(files.key_file))
    return ctx


def refresh_context(ctx: ssl.SSLContext, files: TlsFiles) -> bool:
    """Load a renewed client pair into ``ctx`` (later handshakes use it); False when the
    files are unreadable or do not match (the old pair stays)."""
    if not (files.cert_file and files.key_file):
        return False
    try:
        if not key_matches(files.cert_file.read_bytes(), files.key_file.read_bytes()):
            return False
        ctx.load_cert_chain(str(files.cert_file), str(files.key_file))
    except (OSError, ValueError, ssl.SSLError):
        return False
    return True


def is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def warn_plaintext(what: str, address: str) -> None:
    """Say loudly that ``what`` on ``address`` is not encrypted."""
    where = "loopback only" if is_loopback(address) else "REACHABLE FROM THE NETWORK"
    message = (
        f"WARNING: {what} on {address} is PLAINTEXT (no TLS; {where}): for development only / "
        f"警告：{what} 未加密，仅供开发使用"
    )
    if not is_loopback(address):  # the log too, where it matters (tests read loopback logs)
        log.warning(message)
    print(message, file=sys.stderr)


def bind(server: Any, listen: str, tls: TlsFiles | None, *, what: str, mutual: bool = False) -> int:
    """Bind a gRPC ``server`` to ``listen``: TLS (renewal-aware, optionally mutual) when
    ``tls`` is given, else plaintext with the loud warning. Returns the port (0 = failed)."""
    if tls is None:
        warn_plaintext(what, listen)
        return int(server.add_insecure_port(listen))
    return int(server.add_secure_port(listen, server_credentials(tls, require_client_cert=mutual)))


def secure_channel(target: str, tls: TlsFiles | None, options: Any = None) -> Any:
    """A grpc.aio channel: TLS verifying the server against ``tls.ca_file`` (and presenting
    its pair), or plaintext when ``tls`` is None."""
    import grpc

    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, channel_credentials(tls), options=options)


def add_client_tls_arguments(p: Any) -> None:
    """``--ca-file`` and ``--plaintext`` for the command-line clients."""
    p.add_argument(
        "--ca-file",
        help="CA certificate to verify the server with (default: $KEFU_CA_FILE, else "
        "<data-dir>/pki/ca.crt as `kefu up` makes it; none found = plaintext)",
    )
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="connect without TLS (a loopback development server only)",
    )


def client_tls(args: Any, *, data_dir: Path | None = None) -> TlsFiles | None:
    """The TLS a command-line client uses: None with ``--plaintext`` or when no CA is found."""
    from kefu.certstore import find_ca

    if getattr(args, "plaintext", False):
        return None
    ca = find_ca(getattr(args, "ca_file", None), data_dir=data_dir)
    return TlsFiles(ca_file=ca) if ca is not None else None


def rpc_hint(details: str, tls: TlsFiles | None) -> str:
    """What to do about a TLS failure hidden in a gRPC UNAVAILABLE (else '')."""
    low = details.lower()
    if tls is not None and ("certificate" in low or "handshake" in low or "ssl" in low):
        return (
            f" (TLS: the server's certificate is not signed by {tls.ca_file}, has expired, or "
            f"does not name this address / 服务器证书不受信任、已过期或地址不符)"
        )
    if tls is None and ("connection reset" in low or "socket closed" in low or "eof" in low):
        return " (the server may require TLS: give --ca-file / 服务器可能要求 TLS)"
    return ""
