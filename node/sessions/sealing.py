"""Encryption at rest, the pure part: per-tenant data keys, their wrapping by the node's
master key, and sealed column values (AES-256-GCM via ``cryptography``). No files, no SQLite:
where the master key comes from and which columns are sealed are the adapters' business.

Formats (text, so they fit the STRICT ``TEXT`` columns and JSON files):

* a **wrapped data key**: ``kw1:<key-id>:<base64(nonce ‖ ciphertext)>`` — the tenant's 32-byte
  data key encrypted with the master key; the associated data binds it to
  ``kefu-dek|<tenant>|<key-id>``, so a wrapped key copied to another tenant does not unwrap.
* a **sealed value**: ``enc1:<key-id>:<base64(nonce ‖ ciphertext)>`` — associated data
  ``<tenant>|<column>``, so a value moved to another tenant or column does not open.

Nonces are 96-bit random (NIST SP 800-38D §8.2.2); a data key is rotated (``kefu node rekey``)
long before 2^32 values. Deleting every wrapped copy of a tenant's data key makes its sealed
values unreadable (crypto-shredding). A value without the ``enc1:`` prefix is a row written
before encryption was turned on and is returned as is.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kefu.errors import PermanentError

__all__ = [
    "KEY_BYTES",
    "FieldCipher",
    "KeyUnavailable",
    "is_sealed",
    "new_data_key",
    "new_key_id",
    "parse_master_key",
    "unwrap_key",
    "wrap_key",
]

KEY_BYTES = 32
_NONCE = 12
_SEALED = "enc1"
_WRAPPED = "kw1"


class KeyUnavailable(PermanentError):
    """A key is missing (shredded), wrong or the data was tampered with."""


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def new_key_id() -> str:
    return secrets.token_hex(4)


def parse_master_key(text: str | bytes) -> bytes:
    """A master key as kept in a file or ``$KEFU_MASTER_KEY``: 32 bytes, base64."""
    raw = text.strip() if isinstance(text, bytes) else text.strip().encode()
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyUnavailable(
            "the master key must be 32 bytes in base64 (e.g. `head -c 32 /dev/urandom | "
            "base64`) / 主密钥须为 base64 编码的 32 字节"
        )
    return key


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> str:
    nonce = os.urandom(_NONCE)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plaintext, aad)).decode()


def _open(key: bytes, blob: str, aad: bytes) -> bytes:
    raw = base64.b64decode(blob)
    return AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:], aad)


def wrap_key(master: bytes, *, tenant: str, key_id: str, data_key: bytes) -> str:
    aad = f"kefu-dek|{tenant}|{key_id}".encode()
    return f"{_WRAPPED}:{key_id}:{_seal(master, data_key, aad)}"


def unwrap_key(master: bytes, *, tenant: str, wrapped: str) -> tuple[str, bytes]:
    """(key id, data key); :class:`KeyUnavailable` for a wrong master key, another tenant's
    key or a damaged one."""
    try:
        tag, key_id, blob = wrapped.strip().split(":", 2)
        if tag != _WRAPPED:
            raise ValueError(tag)
        key = _open(master, blob, f"kefu-dek|{tenant}|{key_id}".encode())
    except (ValueError, InvalidTag, binascii.Error) as exc:
        raise KeyUnavailable(
            f"tenant {tenant}: the data key does not open with this node's master key "
            f"(wrong master key, or a key of another tenant) / 租户数据密钥无法解开"
        ) from exc
    return key_id, key


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(_SEALED + ":")


@dataclass(kw_only=True)
class FieldCipher:
    """Seals and opens one tenant's column values. ``keys`` holds every data key still
    readable (old ones during a rekey); new values use ``current``."""

    tenant: str
    keys: Mapping[str, bytes]
    current: str
    _aad: dict[str, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ValueError("the current key id must be among the keys")

    def _ad(self, column: str) -> bytes:
        ad = self._aad.get(column)
        if ad is None:
            ad = self._aad[column] = f"{self.tenant}|{column}".encode()
        return ad

    def seal(self, column: str, text: str) -> str:
        blob = _seal(self.keys[self.current], text.encode(), self._ad(column))
        return f"{_SEALED}:{self.current}:{blob}"

    def open(self, column: str, value: str) -> str:
        if not is_sealed(value):
            return value  # written before encryption was on
        _, key_id, blob = value.split(":", 2)
        key = self.keys.get(key_id)
        if key is None:
            raise KeyUnavailable(
                f"tenant {self.tenant}: data key {key_id} is gone (shredded or not loaded) / "
                f"数据密钥已删除"
            )
        try:
            return _open(key, blob, self._ad(column)).decode()
        except (InvalidTag, ValueError, binascii.Error) as exc:
            raise KeyUnavailable(
                f"tenant {self.tenant}: a sealed {column} value fails its integrity check "
                f"(tampered, or moved from another tenant) / 数据完整性校验失败"
            ) from exc

    @staticmethod
    def key_id_of(value: str) -> str | None:
        return value.split(":", 2)[1] if is_sealed(value) else None
