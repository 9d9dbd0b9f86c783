"""Where the keys of encryption at rest live: the node's master key and each tenant's wrapped
data keys (the pure formats are :mod:`kefu.node.sessions.sealing`).

* **Master key**: ``$KEFU_MASTER_KEY`` (base64, 32 bytes), else a KMS hook (a callable
  returning the 32 bytes, e.g. a call to the enterprise's KMS at start), else the file
  ``<data-dir>/keys/master.key`` (0600; created on first use). It never reaches a log.
* **Tenant data keys**: ``<data-dir>/keys/tenants/<tenant>.json`` (0600) —
  ``{"current": "<key-id>", "keys": ["kw1:<key-id>:..."]}``, each wrapped by the master key.
  Deleting the file (:meth:`TenantKeys.shred`) makes the tenant's sealed text unreadable:
  crypto-shredding for offboarding. :meth:`TenantKeys.rekey` adds a new current key; values
  sealed with the older keys stay readable until those keys are retired.

The keys live apart from ``tenants/<tenant>/sessions.db``, so a copy of the data directory's
databases without ``keys/`` holds no readable conversation text.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kefu.certstore import write_private
from kefu.node.sessions.sealing import (
    FieldCipher,
    KeyUnavailable,
    new_data_key,
    new_key_id,
    parse_master_key,
    unwrap_key,
    wrap_key,
)
from kefu.wire import check_id

__all__ = ["MASTER_KEY_ENV", "EncryptionOptions", "TenantKeys", "load_master_key"]

MASTER_KEY_ENV = "KEFU_MASTER_KEY"


@dataclass(frozen=True, kw_only=True)
class EncryptionOptions:
    """Encryption at rest of conversation text, entities, slots, hand-off summaries and
    feedback comments in the session store."""

    #: A file holding the master key (base64); default ``<data-dir>/keys/master.key``.
    master_key_file: Path | None = None
    #: An external KMS: returns the 32-byte master key. Tried after the environment variable.
    kms: Callable[[], bytes] | None = None


def load_master_key(data_dir: Path, options: EncryptionOptions) -> bytes:
    if env := os.environ.get(MASTER_KEY_ENV, "").strip():
        return parse_master_key(env)
    if options.kms is not None:
        key = options.kms()
        if len(key) != 32:
            raise KeyUnavailable("the KMS hook must return 32 bytes / KMS 须返回 32 字节")
        return key
    path = options.master_key_file or Path(data_dir) / "keys" / "master.key"
    if not path.exists():
        _create_once(path, base64.b64encode(os.urandom(32)) + b"\n")
    try:
        return parse_master_key(path.read_bytes())
    except OSError as exc:
        raise KeyUnavailable(f"{path}: cannot read the master key ({exc.strerror})") from exc


def _create_once(path: Path, data: bytes) -> None:
    """Create ``path`` (0600) unless it exists: of several processes starting at once, the
    first one's content wins and the others read it (a link never replaces a file)."""
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}")
    write_private(tmp, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


class TenantKeys:
    """The wrapped data keys of the tenants of one node (see the module docstring)."""

    def __init__(self, data_dir: Path, master: bytes):
        self.dir = Path(data_dir) / "keys" / "tenants"
        self._master = master

    def path(self, tenant: str) -> Path:
        return self.dir / f"{check_id(tenant, 'tenant')}.json"

    def _read(self, tenant: str) -> dict[str, Any] | None:
        try:
            raw = json.loads(self.path(tenant).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise KeyUnavailable(f"{self.path(tenant)}: unreadable data keys ({exc})") from exc
        return raw if isinstance(raw, dict) else None

    def _write(self, tenant: str, current: str, wrapped: list[str]) -> None:
        body = json.dumps({"current": current, "keys": wrapped}, indent=1).encode()
        write_private(self.path(tenant), body)

    def cipher(self, tenant: str, *, create: bool = True) -> FieldCipher:
        """The tenant's cipher; its first data key is made when it has none."""
        raw = self._read(tenant)
        if raw is None:
            if not create:
                raise KeyUnavailable(f"tenant {tenant}: no data key (shredded?) / 无数据密钥")
            kid = new_key_id()
            first = wrap_key(self._master, tenant=tenant, key_id=kid, data_key=new_data_key())
            body = json.dumps({"current": kid, "keys": [first]}, indent=1).encode()
            _create_once(self.path(tenant), body)
            raw = self._read(tenant)
            assert raw is not None
        keys = dict(
            unwrap_key(self._master, tenant=tenant, wrapped=str(w)) for w in raw.get("keys", [])
        )
        return FieldCipher(tenant=tenant, keys=keys, current=str(raw.get("current")))

    def rekey(self, tenant: str) -> str:
        """Add a new current data key (the old ones stay readable); its id."""
        raw = self._read(tenant) or {"keys": []}
        kid = new_key_id()
        wrapped = [str(w) for w in raw.get("keys", [])]
        wrapped.append(wrap_key(self._master, tenant=tenant, key_id=kid, data_key=new_data_key()))
        self._write(tenant, kid, wrapped)
        return kid

    def shred(self, tenant: str) -> bool:
        """Delete every data key of ``tenant``: its sealed data can never be read again."""
        path = self.path(tenant)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed
