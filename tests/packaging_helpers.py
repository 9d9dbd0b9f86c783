"""Helpers shared by the packaging tests: free ports, starting a node process, a gRPC turn."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def start(
    cmd: Sequence[str], *, env: dict[str, str] | None = None, until: str = "serving tenants"
) -> tuple[subprocess.Popen[str], str]:
    """Start a node; return it and its stdout up to the first line containing ``until``."""
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if until in line:
            return proc, "".join(lines)
    proc.kill()
    _, err = proc.communicate(timeout=30)
    pytest.fail(f"node did not start: {cmd}\n{''.join(lines)}{err}")


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode("utf-8")


def metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None
