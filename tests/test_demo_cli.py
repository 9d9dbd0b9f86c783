"""``kefu demo order-center`` as a real process: serves the seeded data with the token kept as
a secret file the node reads; SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

KEFU = str(Path(sys.executable).parent / "kefu")


@pytest.mark.slow
def test_order_center_cli(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [KEFU, "demo", "order-center", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0",
         "--orders", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("order center listening on http://127.0.0.1:"), first
        url = first.split(" on ", 1)[1].split()[0]
        secret = tmp_path / "secrets" / "order_center_token"
        assert (os.stat(secret).st_mode & 0o777) == 0o600
        token = secret.read_text().strip()
        with urllib.request.urlopen(f"{url}/health") as resp:
            assert json.load(resp) == {"status": "ok"}
        req = urllib.request.Request(
            f"{url}/api/orders/2024010100000000", headers={"Authorization": f"Bearer {token}"}
        )
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(req)
        assert ei.value.code == 404
        assert json.load(ei.value)["error"]["code"] == "order_not_found"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{url}/api/orders/2024010100000000")
        assert denied.value.code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
