"""`kefu up` end to end: NATS, control plane and a node as one command; chat; Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from support.processes import start_process

pytestmark = pytest.mark.slow


def test_kefu_up_serves_the_demo_tenant_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, out = start_process(
        [
            sys.executable,
            "-m",
            "kefu.cli",
            "up",
            "--data-dir",
            str(data),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--cp-listen",
            "127.0.0.1:0",
            "--order-center-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
        ],
        until="Ctrl-C",
        env={"PYTHONUNBUFFERED": "1"},
        timeout_s=120,
    )
    try:
        chat = re.search(r"kefu chat --target (\S+) --key-file (\S+) --ca-file (\S+)", out)
        cp = re.search(r"control plane on (\S+)", out)
        assert chat and cp, out
        ca = chat[3]
        assert ca == str(data / "pki" / "ca.crt")
        reply = subprocess.run(
            [
                sys.executable,
                "-m",
                "kefu.cli",
                "chat",
                "--target",
                chat[1],
                "--key-file",
                chat[2],
                "--ca-file",
                ca,
                "-d",
                "--text",
                "how do i get a VAT invoice?",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert reply.returncode == 0 and "intent=invoice" in reply.stdout, reply.stderr
        # TLS by default: the node refuses a plaintext client, with a hint that says why.
        plain_cmd = ["kefu.cli", "chat", "--target", chat[1], "--key-file", chat[2]]
        plain = subprocess.run(
            [sys.executable, "-m", *plain_cmd, "--plaintext", "--text", "hi"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert plain.returncode != 0 and "require TLS" in plain.stderr, plain.stderr
        # NATS: TLS with certificate-mapped users, no password in its config or the creds.
        conf = (data / "nats" / "nats-server.conf").read_text(encoding="utf-8")
        assert '"verify_and_map": true' in conf and "password" not in conf
        assert "password" not in (data / "nats" / "creds" / "local-1.json").read_text()
        # The access gateway in front of the node: the demo page, and a message through it.
        demo = re.search(r"demo page / 演示页面: (http://\S+)/demo", out)
        assert demo, out
        with urllib.request.urlopen(f"{demo[1]}/demo", timeout=10) as page:
            assert page.status == 200 and b"kefu-widget.js" in page.read()
        req = urllib.request.Request(
            f"{demo[1]}/v1/chat/demo-shop/messages",
            data=json.dumps({"text": "how do i get a VAT invoice?"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as answer:
            assert json.loads(answer.read())["intent"] == "invoice"
        assert (os.stat(chat[2]).st_mode & 0o777) == 0o600
        # Conversations: the data directory 0700, the tenant's database and its WAL 0600.
        assert data.stat().st_mode & 0o777 == 0o700
        db = data / "tenants" / "demo-shop" / "sessions.db"
        for f in (db, db.with_name("sessions.db-wal")):
            assert f.stat().st_mode & 0o777 == 0o600, f
        # The first-start admin token: printed once, kept 0600 where `kefu cp` looks for it
        # (under $KEFU_DATA_DIR), so `kefu cp` works without flags.
        token_file = data / "secrets" / "control-plane-admin.token"
        token = token_file.read_text(encoding="utf-8").strip()
        assert token.startswith("kcp_") and token in out
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert f"--token-file {token_file}" in out
        # The operator console's command (kefu.tui.app exists), with the same token file.
        assert f"kefu tui --control-plane {cp[1]} --token-file {token_file}" in out, out
        cp_env = {k: v for k, v in os.environ.items() if k != "KEFU_CP_TOKEN"}
        nodes = subprocess.run(
            [sys.executable, "-m", "kefu.cli", "cp", "--target", cp[1], "--json", "nodes"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**cp_env, "KEFU_DATA_DIR": str(data)},
        )
        assert '"node_id": "local-1"' in nodes.stdout and '"state": "serving"' in nodes.stdout
        denied = subprocess.run(
            [sys.executable, "-m", "kefu.cli", "cp", "--target", cp[1], "--ca-file", ca, "nodes"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**cp_env, "KEFU_DATA_DIR": str(tmp_path / "no-such-dir")},
        )
        assert denied.returncode != 0 and "UNAUTHENTICATED" in denied.stderr
        assert "Traceback" not in denied.stderr
        assert (data / "nats" / "nats-server.conf").stat().st_mode & 0o777 == 0o600
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    err = proc.stderr.read() if proc.stderr else ""
    assert rc == 0 and "Traceback" not in err, err
    # NATS went down with it: its port no longer accepts connections.
    m = re.search(r"tls://127.0.0.1:(\d+)", out)
    assert m is not None
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(m[1])), timeout=1):
        pass


@pytest.mark.parametrize(
    "flag",
    ["--order-center-listen", "--cp-listen", "--listen", "--metrics-listen", "--gateway-listen"],
)
def test_kefu_up_names_the_flag_when_a_port_is_busy(tmp_path: Path, flag: str) -> None:
    """Every port `kefu up` binds is settable; a busy one is a clear error naming its flag."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = f"127.0.0.1:{held.getsockname()[1]}"
        ports = {
            "--listen": "127.0.0.1:0",
            "--metrics-listen": "",
            "--cp-listen": "127.0.0.1:0",
            "--order-center-listen": "127.0.0.1:0",
            "--gateway-listen": "127.0.0.1:0",
        }
        ports[flag] = busy
        args = [a for kv in ports.items() for a in kv]
        proc = subprocess.run(
            [sys.executable, "-m", "kefu.cli", "up", "--data-dir", str(tmp_path / "d"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode != 0
    assert busy in proc.stderr and f"choose another address with {flag}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
