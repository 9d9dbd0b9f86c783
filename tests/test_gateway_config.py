"""gateway.yaml: typed, located errors; secrets read at start; the command line's errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kefu.errors import ConfigError
from kefu.node.gateway.config import load_gateway_config

GOOD = """\
listen: 127.0.0.1:7600
nodes:
  - {id: edge-1, address: 10.0.0.11:7400}
tenants:
  - id: demo-shop
    api_key_file: demo.key
    identity_secret_files: [id.secret]
    allowed_origins: [https://shop.example.com]
"""


def test_a_good_file_resolves_keys_and_secrets(tmp_path: Path) -> None:
    (tmp_path / "demo.key").write_text("k-123\n", encoding="utf-8")
    (tmp_path / "id.secret").write_text("s3cret\n", encoding="utf-8")
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD, encoding="utf-8")
    r = load_gateway_config(path)
    t = r.tenants[0]
    assert (t.public_id, t.api_key, t.identity_secrets) == ("demo-shop", "k-123", (b"s3cret",))
    assert r.nodes[0].address == "10.0.0.11:7400"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("10.0.0.11:7400", "nowhere"), "gateway.yaml:3: field 'nodes[0].address'"),
        (("id: edge-1", "id: Edge.1"), "gateway.yaml:3: field 'nodes[0].id'"),
        (("    allowed_origins", "    allowed_origin"), "allowed_origin"),
        (("api_key_file: demo.key", "api_key_file: missing.key"), "cannot read"),
        (("  - {id: edge-1, address: 10.0.0.11:7400}", "  []"), "discover_nodes"),
    ],
)
def test_errors_name_file_line_and_field(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    (tmp_path / "demo.key").write_text("k", encoding="utf-8")
    (tmp_path / "id.secret").write_text("s", encoding="utf-8")
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD.replace(*edit), encoding="utf-8")
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load_gateway_config(path)


def test_kefu_gateway_run_without_config_is_a_clear_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kefu.cli", "gateway", "run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 78 and "--config gateway.yaml" in out.stderr
    assert "Traceback" not in out.stderr
