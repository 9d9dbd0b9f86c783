"""What a node keeps on disk to serve without its control plane: verified bundles and the
last-known-good documents.

:class:`BundleFetcher` downloads a packed bundle from the object store (nats-py checks the
object's SHA-256 while streaming it to disk; the digest is then compared with the desired
state's), unpacks it beside its final place, verifies the signature and every file hash once and
renames it into the model store, so a reader never sees a partial or unverified bundle.
:meth:`BundleFetcher.load` hands a stored bundle to the serving target. Per bundle, fetch and
load are serialised by one lock.

:class:`LastKnownGood` holds the desired documents the node last applied, one file per tenant,
written atomically (temporary file, fsync, rename) under ``<data-dir>/agent/lkg/`` after every
successful apply and read back before any network call when the agent starts, so a node whose
control plane or NATS is down serves exactly what it served before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from kefu.bundle import MANIFEST, unpack, verify_bundle
from kefu.bus import Bus, BusUnavailable
from kefu.config import TenantConfig
from kefu.errors import BundleError, KefuError
from kefu.models.store import ModelStore
from kefu.wire import (
    OBJECT_BUNDLES,
    BundleRef,
    CanarySplit,
    DesiredTenant,
    bundle_object,
    decode,
    encode,
)

__all__ = ["BundleFetcher", "LastKnownGood", "NodeTarget"]

log = logging.getLogger("kefu.node.agent.storage")


class NodeTarget(Protocol):
    """What the agent drives: the serving node (or a lightweight stand-in in benchmarks)."""

    async def load_bundle(self, bundle: BundleRef, path: Path, *, activate: bool) -> None: ...
    async def apply_tenant(self, doc: DesiredTenant, config: TenantConfig) -> None: ...
    async def apply_canary_config(self, doc: DesiredTenant, config: TenantConfig | None) -> None:
        """Build (or drop, when None) the tenant a config canary's sessions run."""

    def apply_split(self, tenant: str, split: CanarySplit | None) -> None: ...
    def split_report(self, tenant: str) -> tuple[int, int, int]: ...
    def capabilities(self) -> list[str]: ...
    async def remove_tenant(self, tenant: str) -> None: ...
    def loaded(self) -> frozenset[str]: ...
    def providers(self) -> list[str]: ...
    async def release_unused(self, grace_s: float) -> list[str]: ...


class BundleFetcher:
    def __init__(
        self,
        store: ModelStore,
        target: NodeTarget,
        *,
        bus: Callable[[], Bus | None],
        fetch_timeout_s: float,
    ):
        self.store = store
        self.target = target
        self._bus = bus
        self.fetch_timeout_s = fetch_timeout_s
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, b: BundleRef) -> Path:
        return self.store.bundle_path(b.name, b.version)  # refuses a path outside the store

    def stored(self, b: BundleRef) -> bool:
        try:
            return self.path(b).is_dir()
        except BundleError:  # an invalid name: its fetch refuses the tenant, naming why
            return False

    async def fetch(self, b: BundleRef) -> None:
        lock = self._locks.setdefault(b.ref, asyncio.Lock())
        async with lock:
            if (self.path(b) / MANIFEST).is_file():
                return
            bus = self._bus()
            if bus is None:
                raise BusUnavailable("not connected: cannot download " + b.ref)
            parent = self.path(b).parent
            parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{b.version}.", suffix=".tar")
            os.close(fd)
            packed = Path(tmp)
            try:
                # nats-py checks the object's own SHA-256 while streaming it to disk; comparing
                # that digest with the desired state's binds the download to what was assigned.
                info = await asyncio.wait_for(
                    bus.obj_get(OBJECT_BUNDLES, bundle_object(b.name, b.version), packed),
                    self.fetch_timeout_s,
                )
                if b.sha256 and info.sha256 != b.sha256:
                    raise BundleError(
                        f"downloaded {b.ref} has SHA-256 {info.sha256[:16]}…, desired state says "
                        f"{b.sha256[:16]}… / 下载的模型包校验和不符",
                        path=packed,
                    )
                await asyncio.to_thread(self._unpack_into_store, b, packed)
            finally:
                packed.unlink(missing_ok=True)
            log.info("fetched bundle %s (%d bytes)", b.ref, b.size)

    def _unpack_into_store(self, b: BundleRef, packed: Path) -> None:
        """Unpack beside its final place, verify signature and every file hash once, then
        rename into the store: a reader never sees a partial or unverified bundle."""
        dest = self.path(b)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{b.version}."))
        try:
            unpack(packed.read_bytes(), tmp)
            manifest = verify_bundle(tmp, self.store.trust)
            if manifest.ref != b.ref:
                raise BundleError(
                    f"object {b.ref} holds bundle {manifest.ref} / 模型包内容与名称不符", path=tmp
                )
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    async def load(self, b: BundleRef, *, activate: bool = True) -> None:
        lock = self._locks.setdefault(b.ref, asyncio.Lock())
        async with lock:
            if b.ref in self.target.loaded():
                return
            path = self.path(b)
            if not (path / MANIFEST).is_file():
                raise BundleError(f"bundle {b.ref} is not in the local store", path=path)
            await self.target.load_bundle(b, path, activate=activate)


class LastKnownGood:
    def __init__(self, directory: Path):
        self.directory = directory

    def path(self, tenant: str) -> Path:
        return self.directory / f"{tenant}.json"

    def save(self, doc: DesiredTenant) -> None:
        """Blocking (fsync): the agent runs it in a thread."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{doc.tenant}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(encode(doc))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path(doc.tenant))  # atomic: a crash leaves the old or the new

    def remove(self, tenant: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(tenant).unlink()

    def documents(self) -> Iterator[tuple[Path, DesiredTenant | KefuError | OSError]]:
        """Every saved document in name order, or why one could not be read."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            try:
                yield path, decode(DesiredTenant, path.read_bytes(), what=str(path))
            except (KefuError, OSError) as exc:
                yield path, exc
