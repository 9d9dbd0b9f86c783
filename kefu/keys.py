"""Ed25519 signing keys for model bundles.

A key pair is two files: ``NAME.key`` (PKCS#8 PEM, mode 0600) and ``NAME.pub`` (one line,
``ed25519 <base64 raw key> <comment>``). A key is known by its id: the first 16 hex digits of
the SHA-256 of the raw public key. Trusted public keys are plain ``*.pub`` files.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kefu.errors import PermanentError

__all__ = [
    "KeyError_",
    "PublicKey",
    "SigningKey",
    "TrustStore",
    "generate_keypair",
    "load_public_key",
    "load_signing_key",
]


class KeyError_(PermanentError):
    """A key file is missing or malformed (named so it does not shadow builtins.KeyError)."""


def key_id_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    key: Ed25519PublicKey
    comment: str = ""

    @property
    def raw(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return key_id_of(self.raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self.key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def to_line(self) -> str:
        b64 = base64.b64encode(self.raw).decode()
        return f"ed25519 {b64} {self.comment}".rstrip() + "\n"


@dataclass(frozen=True)
class SigningKey:
    key: Ed25519PrivateKey
    comment: str = ""

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.key.public_key(), self.comment)

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def generate_keypair(directory: Path, name: str, *, overwrite: bool = False) -> SigningKey:
    """Create ``NAME.key`` (0600) and ``NAME.pub`` in ``directory``; refuse to overwrite."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    if not overwrite and (key_path.exists() or pub_path.exists()):
        raise KeyError_(f"{key_path}: a key named '{name}' already exists (use --force)")
    sk = SigningKey(Ed25519PrivateKey.generate(), comment=name)
    pem = sk.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Create with 0600 from the start: no window where the private key is world-readable.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(key_path, 0o600)
    pub_path.write_text(sk.public.to_line(), encoding="utf-8")
    return sk


def load_signing_key(path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyError_(f"{path}: cannot read signing key ({exc.strerror})") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyError_(f"{path}: not a PEM Ed25519 private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_(f"{path}: key is not Ed25519")
    return SigningKey(key, comment=path.stem)


def parse_public_key(text: str, *, source: str = "<text>") -> PublicKey:
    parts = text.strip().split(maxsplit=2)
    if len(parts) < 2 or parts[0] != "ed25519":
        raise KeyError_(f"{source}: expected 'ed25519 <base64> [comment]'")
    try:
        raw = base64.b64decode(parts[1], validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise KeyError_(f"{source}: malformed Ed25519 public key") from exc
    return PublicKey(key, parts[2] if len(parts) > 2 else "")


def load_public_key(path: Path) -> PublicKey:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyError_(f"{path}: cannot read public key") from exc
    return parse_public_key(text, source=str(path))


class TrustStore:
    """The set of public keys whose signatures a loader accepts.

    A store made by :meth:`from_paths` follows its files: a key added to (or removed from) a
    trusted-keys directory counts from the next lookup, so trusting a new signer needs no
    restart of a running control plane or node."""

    def __init__(self, keys: Iterable[PublicKey] = ()):
        self._added: dict[str, PublicKey] = {k.key_id: k for k in keys}
        self._loaded: dict[str, PublicKey] = {}
        self._paths: list[Path] = []
        self._optional: list[Path] = []
        self._seen: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_paths(cls, paths: Iterable[Path], *, optional_dirs: Iterable[Path] = ()) -> TrustStore:
        """Load ``*.pub`` files; a directory contributes every ``*.pub`` inside it. A missing
        path is an error, except ``optional_dirs``, which count once they exist."""
        store = cls()
        store._paths = list(paths)
        store._optional = list(optional_dirs)
        store._refresh()
        return store

    def _files(self) -> list[Path]:
        files: list[Path] = []
        for p in self._paths:
            if p.is_dir():
                files.extend(sorted(p.glob("*.pub")))
            elif p.exists():
                files.append(p)
            else:
                raise KeyError_(f"{p}: trusted key file not found")
        for d in self._optional:
            files.extend(sorted(d.glob("*.pub")) if d.is_dir() else [])
        return files

    def _refresh(self) -> None:
        """Re-read the key files when any of them (or a directory's listing) changed."""
        if not (self._paths or self._optional):
            return
        files = self._files()
        dirs = [p for p in (*self._paths, *self._optional) if p.is_dir()]
        seen = tuple((str(f), f.stat().st_mtime_ns) for f in (*files, *dirs))
        if seen != self._seen:
            self._loaded = {k.key_id: k for k in map(load_public_key, files)}
            self._seen = seen

    @property
    def _keys(self) -> dict[str, PublicKey]:
        self._refresh()
        return {**self._loaded, **self._added}

    def add(self, key: PublicKey) -> None:
        self._added[key.key_id] = key

    def get(self, key_id: str) -> PublicKey | None:
        return self._keys.get(key_id)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)
