"""``kefu node run`` as a real process and ``kefu chat`` against it; SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support.processes import free_port, start_process, stop_process

KEFU = str(Path(sys.executable).parent / "kefu")


def start_node(data: Path, port: int, *, metrics: str = "") -> tuple[subprocess.Popen[str], str]:
    """``kefu node run`` as a child process; returns it and its stdout up to "serving"."""
    return start_process(
        [KEFU, "node", "run", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
         "--metrics-listen", metrics],
        until="serving tenants",
        timeout_s=60,
    )  # fmt: skip


@pytest.mark.slow
def test_node_run_chat_and_sigterm(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    proc, out = start_node(data, port, metrics="127.0.0.1:0")
    try:
        assert "serving tenants [demo-shop]" in out
        key_file = data / "demo-shop.key"
        assert (os.stat(key_file).st_mode & 0o777) == 0o600
        key = key_file.read_text().strip()
        assert key in out  # printed once
        chat = subprocess.run(
            [
                KEFU,
                "chat",
                "--target",
                f"127.0.0.1:{port}",
                "--key-file",
                str(key_file),
                "-d",
                "--text",
                "我的订单什么时候到",
                "--text",
                "I want to return my shoes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert chat.returncode == 0, chat.stderr
        assert "intent=delivery_tracking" in chat.stdout and "scenario=logistics" in chat.stdout
        assert "intent=return_refund" in chat.stdout
        bad = subprocess.run(
            [KEFU, "chat", "--target", f"127.0.0.1:{port}", "--key", "wrong", "--text", "hi"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (
            bad.returncode != 0
            and "UNAUTHENTICATED" in bad.stderr
            and "Traceback" not in bad.stderr
        )
    finally:
        rc, logs = stop_process(proc, timeout_s=30)
    assert rc == 0
    turns = [json.loads(line) for line in logs.splitlines() if '"msg": "turn"' in line]
    assert {t["intent"] for t in turns} >= {"delivery_tracking", "return_refund"}
    assert "我的订单什么时候到" not in logs and "return my shoes" not in logs  # residency
    db = sqlite3.connect(data / "tenants" / "demo-shop" / "sessions.db")
    texts = [r[0] for r in db.execute("select text from turns order by session_id, seq")]
    assert "我的订单什么时候到" in texts and "I want to return my shoes" in texts


@pytest.mark.slow
def test_acknowledged_turn_survives_kill_9(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    proc, _ = start_node(data, port)
    try:
        chat = subprocess.run(
            [
                KEFU,
                "chat",
                "--target",
                f"127.0.0.1:{port}",
                "--key-file",
                str(data / "demo-shop.key"),
                "--text",
                "发票怎么开 order 2024112512345678",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert chat.returncode == 0 and chat.stdout.startswith("bot> "), chat.stderr
    finally:
        proc.kill()  # SIGKILL: no chance to flush anything
        proc.wait(timeout=30)
    db = sqlite3.connect(data / "tenants" / "demo-shop" / "sessions.db")
    rows = list(db.execute("select role, text from turns order by seq"))
    assert rows[0] == ("customer", "发票怎么开 order 2024112512345678")
    assert rows[1][0] == "bot" and rows[1][1] == chat.stdout[len("bot> ") :].strip()
    assert db.execute("pragma integrity_check").fetchone() == ("ok",)
