"""Free loopback ports and child processes that say on stdout when they are ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a child process's flags;
    in-process servers bind port 0 instead)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_process(
    cmd: Sequence[str],
    *,
    until: str = "serving tenants",
    env: dict[str, str] | None = None,
    timeout_s: float = 90.0,
) -> tuple[subprocess.Popen[str], str]:
    """Start ``cmd`` with piped stdout/stderr; return it and its stdout up to and including
    the first line that contains ``until``. Fails the test (with the child's output) when the
    child exits or ``timeout_s`` passes first."""
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if until in line:
            return proc, "".join(lines)
    proc.kill()
    _, err = proc.communicate(timeout=30)
    pytest.fail(f"process did not start ({until!r} not seen): {cmd}\n{''.join(lines)}{err}")


def stop_process(proc: subprocess.Popen[str], *, timeout_s: float = 60.0) -> tuple[int, str]:
    """SIGTERM ``proc``, wait for it to exit and return its exit code and the rest of its
    stderr (stdout is drained too, so a chatty child cannot block on a full pipe)."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, err or ""
