"""The NATS credentials file ``kefu up`` writes (JSON, 0600): read by nodes and the CLI.

``{"url", "user", "password"}`` for a password login, or ``{"url", "user", "ca_file",
"cert_file", "key_file"}`` for TLS with a client certificate (no secret in the file itself;
the key file is 0600). ``"domain"``, when present, is the JetStream domain of the control
plane's buckets (a node on a region's leaf server, :mod:`kefu.natstopology`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kefu.certstore import TlsFiles
from kefu.errors import PermanentError

__all__ = ["NatsCredentials", "load_credentials"]


@dataclass(kw_only=True)
class NatsCredentials:
    url: str
    user: str | None = None
    password: str | None = None
    #: TLS to NATS (CA, and the client pair NATS maps to the user); relative paths in the
    #: file are relative to the file.
    tls: TlsFiles | None = None
    #: JetStream domain of the control plane's buckets (None: the server's own).
    domain: str | None = None


def load_credentials(path: Path, *, require_url: bool = True) -> NatsCredentials:
    """A credentials file written by ``kefu up`` (JSON, 0600); without ``require_url`` the URL
    may be missing (node.yaml's ``control_plane.url`` gives it)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        url = raw["url"] if require_url else raw.get("url", "")
        tls = None
        if raw.get("ca_file"):
            here = path.parent

            def at(key: str) -> Path | None:
                return here / raw[key] if raw.get(key) else None

            tls = TlsFiles(
                ca_file=here / raw["ca_file"], cert_file=at("cert_file"), key_file=at("key_file")
            )
        return NatsCredentials(
            url=url,
            user=raw.get("user"),
            password=raw.get("password"),
            tls=tls,
            domain=raw.get("domain") or None,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PermanentError(f"{path}: unreadable NATS credentials ({exc})") from exc
