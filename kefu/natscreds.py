"""The NATS credentials file ``kefu up`` writes (JSON, 0600): read by nodes and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kefu.errors import PermanentError

__all__ = ["NatsCredentials", "load_credentials"]


@dataclass(kw_only=True)
class NatsCredentials:
    url: str
    user: str | None = None
    password: str | None = None


def load_credentials(path: Path, *, require_url: bool = True) -> NatsCredentials:
    """A credentials file written by ``kefu up`` (JSON, 0600); without ``require_url`` the URL
    may be missing (node.yaml's ``control_plane.url`` gives it)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        url = raw["url"] if require_url else raw.get("url", "")
        return NatsCredentials(url=url, user=raw.get("user"), password=raw.get("password"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PermanentError(f"{path}: unreadable NATS credentials ({exc})") from exc
