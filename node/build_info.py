"""The version, git commit and build date of this node (``kefu-node version``, install)."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

from kefu import __version__

__all__ = ["build_info"]

log = logging.getLogger("kefu.node_main")


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
