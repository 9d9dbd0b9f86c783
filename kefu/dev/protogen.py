"""Generate the Python gRPC modules from ``proto/`` and check that the committed ones are current.

    python -m kefu.dev.protogen            # regenerate kefu/v1/node_pb2.py, .pyi, node_pb2_grpc.py
    python -m kefu.dev.protogen --check    # exit 1, naming the stale files, if they are out of date

Every ``.proto`` under ``proto/kefu/`` is compiled from the repository root with
``grpc_tools.protoc -I proto --python_out=. --pyi_out=. --grpc_python_out=.``, so
``proto/kefu/v1/node.proto`` lands in ``kefu/v1/`` and imports as ``kefu.v1.node_pb2``.

The generated code is committed (the node must not need grpcio-tools at run time), so the check
regenerates into a temporary directory and compares bytes. protoc's output depends on the
grpcio-tools version as well as on the ``.proto``; when the versions stamped in the files differ
the message says so, because then the fix is the pinned tool, not a regeneration.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import itertools
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kefu.errors import KefuError, PermanentError

__all__ = [
    "ROOT",
    "Drift",
    "check",
    "expected_outputs",
    "generate",
    "main",
    "proto_files",
]

#: The repository root of this checkout (parent of the ``kefu`` package directory).
ROOT = Path(__file__).resolve().parents[2]

_PROTO_DIR = "proto"
# Only our own namespace: proto/gen (ruff-excluded) or vendored protos are not ours to compile.
_NAMESPACE = "kefu"
_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
_PROTOC_TIMEOUT_S = 120
# Version stamps protoc writes into the files; differing stamps mean a different generator.
_STAMPS = (
    ("protobuf", re.compile(r"^# Protobuf Python Version: (\S+)$", re.M)),
    ("grpc", re.compile(r"^GRPC_GENERATED_VERSION = '([^']+)'$", re.M)),
)


@dataclass(frozen=True, kw_only=True)
class Drift:
    """One generated file that does not match a fresh generation."""

    #: Path relative to the repository root, with forward slashes.
    path: str = ""
    #: ``missing`` (not committed), ``stale`` (content differs) or ``orphan`` (no .proto).
    kind: str = "stale"
    #: The first lines of a unified diff (committed → fresh), for ``stale`` only.
    diff: str = ""
    #: Generator stamps (committed, fresh) when they differ, e.g.
    #: ("protobuf 7.35.1", "protobuf 7.36.0").
    versions: tuple[str, str] | None = None

    def describe(self) -> str:
        what = {
            "missing": "is missing (not generated yet)",
            "stale": "differs from what the .proto generates",
            "orphan": "has no .proto under proto/ any more",
        }.get(self.kind, self.kind)
        text = f"{self.path} {what}"
        if self.versions is not None:
            text += (
                f" (the committed file was generated for {self.versions[0]}, this"
                f" environment generates {self.versions[1]}: install the pinned grpcio-tools)"
            )
        return text


def proto_files(root: Path = ROOT) -> list[str]:
    """The ``.proto`` files to compile, relative to ``root/proto``, sorted."""
    base = root / _PROTO_DIR
    return sorted(p.relative_to(base).as_posix() for p in (base / _NAMESPACE).rglob("*.proto"))


def expected_outputs(protos: Sequence[str]) -> list[str]:
    """The generated files for ``protos`` (paths relative to the output root), sorted."""
    return sorted(p.removesuffix(".proto") + s for p in protos for s in _SUFFIXES)


def generate(*, root: Path = ROOT, out_dir: Path | None = None) -> list[Path]:
    """Compile every proto under ``root/proto/kefu`` into ``out_dir`` (default: ``root``).

    Returns the written files. Raises :class:`PermanentError` when grpcio-tools is missing,
    there is nothing to compile, or protoc rejects a file (its message is included).
    """
    if importlib.util.find_spec("grpc_tools") is None:
        raise PermanentError(
            "grpcio-tools is not installed; install the dev extra: pip install -e '.[dev]'"
            " / 未安装 grpcio-tools"
        )
    protos = proto_files(root)
    if not protos:
        raise PermanentError(f"no .proto files under {root / _PROTO_DIR / _NAMESPACE}")
    out = root if out_dir is None else out_dir
    out.mkdir(parents=True, exist_ok=True)
    # A subprocess, not grpc_tools.protoc.main(): importing that module installs import hooks
    # in the calling interpreter, and its entry point adds the well-known-types include path.
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{_PROTO_DIR}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(f"{_PROTO_DIR}/{p}" for p in protos),
    ]
    try:
        done = subprocess.run(
            cmd, cwd=root, capture_output=True, text=True, timeout=_PROTOC_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PermanentError(f"could not run protoc: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise PermanentError(f"protoc failed (exit {done.returncode}):\n{detail}")
    written = [out / rel for rel in expected_outputs(protos)]
    absent = [p for p in written if not p.is_file()]
    if absent:
        raise PermanentError(f"protoc did not write {', '.join(str(p) for p in absent)}")
    return written


def _stamp(text: str) -> str:
    return ", ".join(f"{name} {m.group(1)}" for name, rx in _STAMPS if (m := rx.search(text)))


def _compare(rel: str, committed: Path, fresh: Path) -> Drift | None:
    if not committed.is_file():
        return Drift(path=rel, kind="missing")
    old, new = committed.read_bytes(), fresh.read_bytes()
    if old == new:
        return None
    old_text = old.decode("utf-8", errors="replace")
    new_text = new.decode("utf-8", errors="replace")
    lines = difflib.unified_diff(
        old_text.splitlines(),
        new_text.splitlines(),
        fromfile=f"{rel} (committed)",
        tofile=f"{rel} (from .proto)",
        lineterm="",
        n=1,
    )
    diff = "\n".join(line[:200] for line in itertools.islice(lines, 30))
    stamps = (_stamp(old_text), _stamp(new_text))
    return Drift(
        path=rel, kind="stale", diff=diff, versions=stamps if stamps[0] != stamps[1] else None
    )


def check(*, root: Path = ROOT) -> list[Drift]:
    """Regenerate into a temporary directory and compare with the files under ``root``.

    Returns the drifts; an empty list means the committed code is in sync with the protos.
    """
    protos = proto_files(root)
    expected = expected_outputs(protos)
    drifts: list[Drift] = []
    with tempfile.TemporaryDirectory(prefix="kefu-protogen-") as tmp:
        generate(root=root, out_dir=Path(tmp))
        for rel in expected:
            drift = _compare(rel, root / rel, Path(tmp) / rel)
            if drift is not None:
                drifts.append(drift)
    # Generated files left behind by a renamed or deleted .proto still import and mislead.
    known = set(expected)
    for path in sorted((root / _NAMESPACE).rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.name.endswith(_SUFFIXES) and rel not in known:
            drifts.append(Drift(path=rel, kind="orphan"))
    return drifts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kefu.dev.protogen",
        description="Generate Python gRPC code from proto/ into the kefu package.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the committed generated files are out of date",
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="repository root (default: this checkout)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    root: Path = args.root.resolve()
    try:
        if not args.check:
            for path in generate(root=root):
                print(f"wrote {path.relative_to(root).as_posix()}")
            return 0
        drifts = check(root=root)
    except KefuError as exc:
        print(f"protogen: {exc}", file=sys.stderr)
        return exc.exit_code
    if not drifts:
        count = len(expected_outputs(proto_files(root)))
        print(f"generated code is in sync with {_PROTO_DIR}/ ({count} files)")
        return 0
    print("protogen: generated code is out of date / 生成代码与 .proto 不一致:", file=sys.stderr)
    for drift in drifts:
        print(f"  {drift.describe()}", file=sys.stderr)
    print(
        "Fix: run `python -m kefu.dev.protogen` from the repository root and commit the result"
        " (delete orphans by hand).",
        file=sys.stderr,
    )
    for drift in drifts:
        if drift.diff:
            print(drift.diff, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
