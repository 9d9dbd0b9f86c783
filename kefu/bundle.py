"""The signed model bundle: the one contract between the model pipeline and every node.

A bundle is a directory::

    model.onnx       the (usually INT8-quantized) network
    tokenizer.json   Hugging Face ``tokenizers`` definition
    labels.json      ordered list of class labels (index = output column)
    manifest.json    name, version, task, family, signature, dataset hash, metrics, file hashes
    manifest.sig     Ed25519 signature over the exact bytes of manifest.json

``verify_bundle`` checks, in this order: manifest present and parseable, signature present and
valid for a trusted key, then every listed file present with the right size and SHA-256. The
first failure raises :class:`~kefu.errors.BundleError` naming the offending file. A bundle may
also be packed into a single ``.tar`` file for transport (``pack``/``unpack``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kefu.errors import BundleError, SignatureError
from kefu.keys import SigningKey, TrustStore
from kefu.model_ref import validate_name, validate_ref

__all__ = [
    "MANIFEST",
    "PAYLOAD_FILES",
    "SIGNATURE",
    "Manifest",
    "pack",
    "sha256_file",
    "sign_bundle",
    "unpack",
    "validate_name",
    "validate_ref",
    "verify_bundle",
    "write_manifest",
]

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PAYLOAD_FILES = ("model.onnx", "tokenizer.json", "labels.json")
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class Manifest:
    name: str
    version: str
    task: str  # "intent" | "sentiment" | any text-classification task name
    family: str  # "ngram" | "minilm"
    labels: list[str]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    created_at: str = field(default_factory=utc_now)
    dataset: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    # Runtime parameters the loader needs, e.g. {"max_length": 64}.
    runtime: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_bytes(self) -> bytes:
        # Canonical form: sorted keys, UTF-8, trailing newline. The signature covers these bytes.
        return (
            json.dumps(asdict(self), ensure_ascii=False, sort_keys=True, indent=2) + "\n"
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str | Path = MANIFEST) -> Manifest:
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"manifest is not valid UTF-8 JSON ({exc})", path=source) from exc
        if not isinstance(raw, dict):
            raise BundleError("manifest must be a JSON object", path=source)
        known = set(cls.__dataclass_fields__)
        required = {"name", "version", "task", "family", "labels", "inputs", "outputs"}
        missing = sorted(required - raw.keys())
        if missing:
            raise BundleError(f"manifest lacks field(s): {', '.join(missing)}", path=source)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BundleError(f"manifest has unknown field(s): {', '.join(unknown)}", path=source)
        fmt = raw.get("format", FORMAT_VERSION)
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
            raise BundleError("manifest field 'format' must be a positive integer", path=source)
        if fmt > FORMAT_VERSION:
            raise BundleError(
                f"bundle format {fmt} is newer than this software ({FORMAT_VERSION})",
                path=source,
            )
        for name, kind in _FIELD_TYPES.items():
            if name in raw and not isinstance(raw[name], kind):
                raise BundleError(
                    f"manifest field {name!r} must be a {_KIND_WORDS[kind]}", path=source
                )
        if not all(isinstance(x, str) for x in raw["labels"]):
            raise BundleError("manifest field 'labels' must list strings", path=source)
        # The name and version become directories in every model store: never a path.
        try:
            validate_name(raw["name"])
            validate_name(raw["version"], what="version")
        except BundleError as exc:
            raise BundleError(str(exc), path=source) from exc
        return cls(**raw)

    def content_digest(self) -> str:
        """SHA-256 of the canonical manifest, which lists every file's SHA-256: the identity
        of the bundle's verified content, whatever tar (or copy) carried it."""
        return hashlib.sha256(self.to_bytes()).hexdigest()


_FIELD_TYPES: dict[str, type] = {
    "name": str,
    "version": str,
    "task": str,
    "family": str,
    "created_at": str,
    "labels": list,
    "inputs": dict,
    "outputs": dict,
    "dataset": dict,
    "metrics": dict,
    "training": dict,
    "runtime": dict,
    "files": dict,
}
_KIND_WORDS: dict[type, str] = {str: "string", list: "list", dict: "mapping"}


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Manifest:
    """Hash every payload file into the manifest and write manifest.json (unsigned)."""
    validate_name(manifest.name)
    validate_name(manifest.version, what="version")
    files: dict[str, dict[str, Any]] = {}
    for name in PAYLOAD_FILES:
        p = bundle_dir / name
        if not p.is_file():
            raise BundleError("required bundle file is missing", path=p)
        files[name] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    manifest.files = files
    (bundle_dir / MANIFEST).write_bytes(manifest.to_bytes())
    sig = bundle_dir / SIGNATURE
    if sig.exists():  # any old signature no longer covers the new manifest
        sig.unlink()
    return manifest


def sign_bundle(bundle_dir: Path, key: SigningKey) -> dict[str, str]:
    """Sign manifest.json as it is on disk; the payload hashes must already be correct."""
    mpath = bundle_dir / MANIFEST
    try:
        data = mpath.read_bytes()
    except OSError as exc:
        raise BundleError("cannot read manifest", path=mpath) from exc
    manifest = Manifest.from_bytes(data, source=mpath)
    _check_files(bundle_dir, manifest)  # never sign a bundle whose files do not match
    record = {
        "algorithm": "ed25519",
        "key_id": key.public.key_id,
        "signature": base64.b64encode(key.sign(data)).decode(),
    }
    (bundle_dir / SIGNATURE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def _check_files(bundle_dir: Path, manifest: Manifest) -> None:
    missing = [n for n in PAYLOAD_FILES if n not in manifest.files]
    if missing:
        raise BundleError(
            f"manifest does not list {', '.join(missing)}", path=bundle_dir / MANIFEST
        )
    for name, meta in manifest.files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise BundleError(
                f"manifest lists an unsafe file name {name!r}", path=bundle_dir / MANIFEST
            )
        p = bundle_dir / name
        if not p.is_file():
            raise BundleError("file listed in the manifest is missing", path=p)
        size = p.stat().st_size
        if size != meta.get("size"):
            kind = "truncated" if size < int(meta.get("size", 0)) else "has the wrong size"
            raise BundleError(
                f"file {kind}: {size} bytes, manifest says {meta.get('size')}", path=p
            )
        if sha256_file(p) != meta.get("sha256"):
            raise BundleError("SHA-256 does not match the manifest (file was modified)", path=p)


def verify_bundle(bundle_dir: Path, trust: TrustStore) -> Manifest:
    """Return the manifest of a bundle whose signature and file hashes all check out."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError("bundle directory not found", path=bundle_dir)
    mpath, spath = bundle_dir / MANIFEST, bundle_dir / SIGNATURE
    try:
        data = mpath.read_bytes()
    except OSError as exc:
        raise BundleError("manifest is missing", path=mpath) from exc
    manifest = Manifest.from_bytes(data, source=mpath)
    try:
        record = json.loads(spath.read_text(encoding="utf-8"))
        key_id, algorithm = record["key_id"], record["algorithm"]
        signature = base64.b64decode(record["signature"], validate=True)
    except FileNotFoundError as exc:
        raise SignatureError("bundle is not signed (signature file missing)", path=spath) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SignatureError("signature file is malformed", path=spath) from exc
    if algorithm != "ed25519":
        raise SignatureError(f"unsupported signature algorithm {algorithm!r}", path=spath)
    key = trust.get(key_id)
    if key is None:
        raise SignatureError(
            f"signed by key {key_id}, which is not among the {len(trust)} trusted key(s)",
            path=spath,
        )
    if not key.verify(signature, data):
        raise SignatureError(
            "signature does not match the manifest (manifest was modified)", path=mpath
        )
    _check_files(bundle_dir, manifest)
    return manifest


def pack(bundle_dir: Path) -> bytes:
    """A deterministic tar of the bundle, for the object store or a single-file copy."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in (*PAYLOAD_FILES, MANIFEST, SIGNATURE):
            p = bundle_dir / name
            if not p.is_file():
                raise BundleError("cannot pack: file missing", path=p)
            info = tarfile.TarInfo(name)
            info.size = p.stat().st_size
            info.mode = 0o644
            with p.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def unpack(data: bytes, dest: Path) -> Path:
    """Extract a packed bundle; only the known flat file names are accepted."""
    allowed = {*PAYLOAD_FILES, MANIFEST, SIGNATURE}
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar.getmembers():
                if member.name not in allowed or not member.isfile():
                    raise BundleError(f"unexpected member {member.name!r} in packed bundle")
                src = tar.extractfile(member)
                assert src is not None
                (dest / member.name).write_bytes(src.read())
    except tarfile.TarError as exc:
        raise BundleError(f"packed bundle is corrupt ({exc})", path=dest) from exc
    return dest
