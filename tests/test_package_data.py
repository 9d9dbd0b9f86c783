"""Issue 10: `pip install -e .` (./scripts/run.sh) shows no setuptools warnings about package
data: every data directory shipped inside a package is itself listed in `packages`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_build_py_warns_about_no_package_data(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "always",
            "-c",
            "import setuptools; setuptools.setup()",
            "-q",
            "build_py",
            "--build-lib",
            str(tmp_path / "lib"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "would be ignored" not in out and "absent from the `packages`" not in out, out
    lib = tmp_path / "lib" / "kefu"
    assert (lib / "models" / "defaults" / "sentiment" / "manifest.json").is_file()
    assert (lib / "models" / "defaults" / "demo-shop-intent" / "model.onnx").is_file()
    assert (lib / "node" / "tenants" / "demo-shop.yaml").is_file()
