"""The layer contracts (kefu/dev/layers.py) hold for the tree, and the check really fails on a
forbidden import, a pure-core I/O import and an import cycle. Plus: a node never needs torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kefu.dev import layers

ROOT = Path(__file__).resolve().parents[1]


def _only_python(folder: str, names: list[str]) -> set[str]:
    """copytree's ignore: the check reads only ``*.py`` (no bundles, data or caches)."""
    return {n for n in names if not n.endswith(".py") and not (Path(folder) / n).is_dir()} | {
        "__pycache__"
    }


def _copy_tree(dest: Path, src: Path = ROOT) -> Path:
    for rel in layers.PACKAGE_DIRS.values():
        shutil.copytree(src / rel, dest / rel, ignore=_only_python)
    return dest


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sources copied once and checked clean once; each case edits a copy of it."""
    root = _copy_tree(tmp_path_factory.mktemp("pristine"))
    assert layers.check(root) == []
    return root


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")


def test_the_tree_keeps_every_contract() -> None:
    assert [str(v) for v in layers.check(ROOT)] == []


def test_the_command_line_check_passes_on_the_tree() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kefu.dev.layers", "--root", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "all contracts hold" in out.stdout


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        # control_plane never imports node
        ("control_plane/desired.py", "import kefu.node.serving.server", "control_plane never"),
        # tui reaches the control plane only through tui.client
        ("tui/views.py", "from kefu.control_plane import api", "only through tui.client"),
        # models imports nothing of node
        ("models/store.py", "from kefu.node.nlu import language", "models imports nothing"),
        # services never import adapters
        (
            "node/dialog/tenant.py",
            "from kefu.node.sessions import sqlite_store",
            "services never import adapters",
        ),
        # the pure core reaches no I/O library, even through another module
        ("node/nlu/predictions.py", "import kefu.models.runtime", "reaches onnxruntime"),
        ("node/dialog/scenario.py", "import grpc", "pure core reaches grpc"),
        # the gateway reaches nodes only through their gRPC API
        (
            "node/gateway/conversations.py",
            "from kefu.node.dialog import conversation",
            "only through their gRPC API",
        ),
        ("node/gateway/routing.py", "import aiohttp", "pure core reaches aiohttp"),
        ("node/dialog/reply.py", "x = open('f').read()", "file I/O"),
        # the shared core imports no package built on it
        ("kefu/wire.py", "import kefu.control_plane.service", "shared kefu core"),
        # no cycles (a lazy import inside a function counts)
        (
            "node/serving/admission.py",
            "def _f():\n    import kefu.node.dialog.conversation",
            "import cycle",
        ),
    ],
)
def test_a_forbidden_import_fails_the_check(
    tmp_path: Path,
    pristine: Path,
    capsys: pytest.CaptureFixture[str],
    module: str,
    line: str,
    expected: str,
) -> None:
    root = _copy_tree(tmp_path, pristine)
    _append(root / module, line)
    assert layers.main(["--root", str(root)]) == 1  # the command scripts/test.sh runs
    found = capsys.readouterr().err
    assert expected in found and "broken contract" in found, found


def test_imports_under_type_checking_do_not_count(tmp_path: Path, pristine: Path) -> None:
    root = _copy_tree(tmp_path, pristine)
    _append(
        root / "control_plane/desired.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import kefu.node.serving.server",
    )
    assert layers.check(root) == []


def loaded_after(imports: list[str]) -> set[str]:
    code = (
        "import sys\n" + "".join(f"import {m}\n" for m in imports) + "print(' '.join(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_node_server_never_imports_torch() -> None:
    assert "torch" not in loaded_after(["kefu.node.serving.server", "kefu.node.cli"])
