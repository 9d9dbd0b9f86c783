"""The local model store: verified bundles under ``<root>/<name>/<version>/``.

Both the pipeline (``kefu model train/list``) and the node use it. Adding a bundle verifies it
first and copies it in atomically (write to a temporary sibling, then rename), so a reader
never sees half a bundle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kefu.bundle import MANIFEST, Manifest, validate_name, verify_bundle
from kefu.errors import BundleError, KefuError
from kefu.keys import TrustStore

__all__ = ["DEFAULT_DATA_DIR", "ModelStore", "StoreEntry", "data_dir", "shipped_dir", "trust_for"]

DEFAULT_DATA_DIR = "kefu-data"


def data_dir(explicit: str | Path | None = None) -> Path:
    """``--data-dir`` if given, else ``$KEFU_DATA_DIR``, else ``./kefu-data``."""
    return Path(explicit or os.environ.get("KEFU_DATA_DIR") or DEFAULT_DATA_DIR)


def shipped_dir() -> Path:
    """Default bundles (and their release public key) shipped inside the package."""
    return Path(__file__).parent / "defaults"


@dataclass(frozen=True)
class StoreEntry:
    name: str
    version: str
    path: Path
    manifest: Manifest | None
    verified: bool
    problem: str = ""

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        dev = (m.metrics.get("dev") or {}) if m else {}
        lat = (dev.get("latency") or {}).get("batch_1", {})
        return {
            "name": self.name,
            "version": self.version,
            "path": str(self.path),
            "verified": self.verified,
            "problem": self.problem,
            "task": m.task if m else None,
            "family": m.family if m else None,
            "labels": len(m.labels) if m else None,
            "created_at": m.created_at if m else None,
            "metrics": {
                "accuracy": dev.get("accuracy"),
                "macro_f1": dev.get("macro_f1"),
                "ece": dev.get("ece"),
                "p50_ms_batch1": lat.get("p50_ms"),
                "p99_ms_batch1": lat.get("p99_ms"),
                "quantization_accuracy_change": m.metrics.get("quantization_accuracy_change")
                if m
                else None,
                "size_bytes": m.metrics.get("size_bytes") if m else None,
            },
        }


def _readable_manifest(bundle_dir: Path) -> Manifest | None:
    """The manifest of a refused bundle, when it can still be read (for listing only)."""
    try:
        return Manifest.from_bytes((bundle_dir / MANIFEST).read_bytes())
    except (OSError, KefuError):
        return None


class ModelStore:
    def __init__(self, root: Path, trust: TrustStore):
        self.root = Path(root)
        self.trust = trust

    def bundle_path(self, name: str, version: str) -> Path:
        """``<root>/<name>/<version>`` for a valid name and version; refuses (BundleError) any
        path that would resolve outside the store (an absolute name, ``..``, a symlink)."""
        validate_name(name)
        validate_name(version, what="version")
        root = self.root.resolve()
        path = (root / name / version).resolve()
        if not path.is_relative_to(root) or path.parent.parent != root:
            raise BundleError(
                f"model {name}@{version} would be stored outside the model store / "
                "模型存储路径越界",
                path=self.root,
            )
        return self.root / name / version

    def entries(self) -> list[StoreEntry]:
        out: list[StoreEntry] = []
        if not self.root.is_dir():
            return out
        for name_dir in sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            for vdir in sorted(
                p for p in name_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
            ):
                try:
                    manifest = verify_bundle(vdir, self.trust)
                    out.append(StoreEntry(name_dir.name, vdir.name, vdir, manifest, True))
                except KefuError as exc:
                    m = _readable_manifest(vdir)
                    out.append(StoreEntry(name_dir.name, vdir.name, vdir, m, False, str(exc)))
        out.sort(key=lambda e: (e.name, e.manifest.created_at if e.manifest else "", e.version))
        return out

    def resolve(self, ref: str) -> Path:
        """``name@version`` → that bundle; ``name`` → its newest verified version; a path → it."""
        p = Path(ref)
        if (p / MANIFEST).is_file():
            return p
        name, _, version = ref.partition("@")
        validate_name(name)
        if version:
            path = self.bundle_path(name, version)
            if not path.is_dir():
                raise BundleError(
                    f"no version {version!r} of model {name!r} in the store", path=self.root
                )
            return path
        good = [e for e in self.entries() if e.name == name and e.verified]
        if not good:
            raise BundleError(f"no verified bundle named {name!r} in the store", path=self.root)
        return good[-1].path

    def add(self, bundle_dir: Path, *, replace: bool = False) -> Path:
        manifest = verify_bundle(bundle_dir, self.trust)
        dest = self.bundle_path(manifest.name, manifest.version)
        if dest.exists() and not replace:
            same = (dest / MANIFEST).is_file() and (
                (dest / MANIFEST).read_bytes() == (bundle_dir / MANIFEST).read_bytes()
            )
            if same:
                return dest  # idempotent: this exact bundle is already there
            raise BundleError(
                f"{manifest.ref} is already in the store with different content "
                "(a version is immutable: publish a new version)",
                path=dest,
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{manifest.version}.", dir=dest.parent))
        try:
            for f in bundle_dir.iterdir():
                if f.is_file():
                    shutil.copyfile(f, tmp / f.name)
            verify_bundle(tmp, self.trust)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def seed_shipped(self) -> list[Path]:
        """Copy the shipped default bundles into the store when they are not there yet."""
        added: list[Path] = []
        root = shipped_dir()
        if not root.is_dir():
            return added
        for b in sorted(p for p in root.iterdir() if (p / MANIFEST).is_file()):
            m = Manifest.from_bytes((b / MANIFEST).read_bytes(), source=b / MANIFEST)
            if not self.bundle_path(m.name, m.version).exists():
                added.append(self.add(b))
            else:
                self.add(b)  # refuses a different bundle squatting on the shipped version
        return added


def trust_for(data: Path, extra: list[str] | None = None) -> TrustStore:
    """Trusted keys: ``<data>/trusted-keys/*.pub`` (followed: a key added there later counts),
    the shipped release key, ``$KEFU_TRUSTED_KEYS`` (``:``-separated) and any ``--trust``
    files."""
    paths = [shipped_dir()]
    env = os.environ.get("KEFU_TRUSTED_KEYS", "")
    paths += [Path(p) for p in env.split(":") if p and Path(p).exists()]
    paths += [Path(p) for p in extra or []]
    return TrustStore.from_paths(paths, optional_dirs=[data / "trusted-keys"])


def default_version() -> str:
    """A version for a new bundle: the UTC time, sortable (``20261125.231500``)."""
    return datetime.now(UTC).strftime("%Y%m%d.%H%M%S")
