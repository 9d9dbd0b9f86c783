"""Helpers shared by the packaging tests: a node.yaml on free ports and /metrics reads.

``free_port`` and ``start`` (a node process, read until it serves) are re-exported from
``support.processes``, where they live."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from support.processes import free_port
from support.processes import start_process as start

__all__ = ["ROOT", "free_port", "metric_value", "metrics_text", "node_yaml", "start"]

ROOT = Path(__file__).resolve().parents[1]


def node_yaml(tmp: Path, *, drain_timeout_s: float = 10.0) -> tuple[Path, int, int]:
    """A node.yaml for a test node: temp data dir, free gRPC and metrics ports."""
    port, metrics = free_port(), free_port()
    path = tmp / "etc" / "node.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"data_dir: ../data\nlisten: 127.0.0.1:{port}\nmetrics_listen: 127.0.0.1:{metrics}\n"
        f"limits:\n  drain_timeout_s: {drain_timeout_s}\nlogging:\n  format: json\n",
        encoding="utf-8",
    )
    return path, port, metrics


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode("utf-8")


def metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None
