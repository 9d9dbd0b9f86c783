"""The control plane's catalog: tenant config versions and published model versions.

Config versions are immutable and numbered per tenant (a roll-back is a new version with the
old text); every text is validated server-side exactly as a node validates it, off the event
loop and within a deadline. Model versions are signed bundles, verified (signature and every
file hash) before they are stored in the object store; a version is immutable.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hashlib
import json
import tempfile
from pathlib import Path

from kefu.bundle import SIGNATURE, unpack, verify_bundle
from kefu.bus import Conflict, snapshot
from kefu.config import parse_tenant_config
from kefu.control_plane.state import (
    MAX_CONFIG_TEXT,
    VALIDATE_TIMEOUT_S,
    NotFoundError,
    StateStore,
)
from kefu.errors import ConfigError
from kefu.model_ref import VersionRef, validate_name
from kefu.wire import (
    BUCKET_CONFIGS,
    BUCKET_MODELS,
    BUCKET_REGISTRY,
    OBJECT_BUNDLES,
    ConfigVersion,
    ModelVersion,
    TenantRecord,
    bundle_object,
    check_id,
    config_key,
    decode,
    digest,
    encode,
    model_key,
)

__all__ = ["Catalog"]


class Catalog(StateStore):
    # ------------------------------------------------------------------ configs

    def validate_config(self, tenant: str, text: str, *, source: str) -> None:
        """Server-side validation, the same the node does: raises ConfigError (file:line).
        Blocking (YAML and pydantic): :meth:`put_config` runs it in a thread."""
        size = len(text.encode("utf-8"))
        if size > MAX_CONFIG_TEXT:
            big = f"config is {size} bytes, the limit is {MAX_CONFIG_TEXT} / 配置过大"
            raise ConfigError(big, path=source)
        cfg = parse_tenant_config(text, source=source)
        if cfg.tenant.id != tenant:
            raise ConfigError(
                f"config is for tenant {cfg.tenant.id!r}, not {tenant!r} / "
                f"配置属于租户 {cfg.tenant.id!r}，不是 {tenant!r}",
                path=source,
                field="tenant.id",
            )

    async def put_config(
        self,
        tenant: str,
        text: str,
        *,
        actor: str,
        comment: str = "",
        rollback_of: int = 0,
        staged: bool = False,
    ) -> ConfigVersion:
        """Validate and store a new config version; it becomes the tenant's current one unless
        ``staged`` (then only a rollout or an assignment naming it serves it)."""
        rec = await self._tenant(tenant)
        if len(text) > MAX_CONFIG_TEXT:  # characters ≤ bytes: refused before any parsing
            self.validate_config(tenant, text, source=f"{tenant}.yaml")
        # Parsing a big config takes seconds of CPU: never on the event loop (other RPCs, the
        # leader lease and the reconciler keep running), and never without a deadline.
        work = asyncio.to_thread(self.validate_config, tenant, text, source=f"{tenant}.yaml")
        try:
            await asyncio.wait_for(work, VALIDATE_TIMEOUT_S)
        except TimeoutError as exc:
            too_long = f"not validated within {VALIDATE_TIMEOUT_S:.0f} s / 配置校验超时"
            raise ConfigError(too_long, path=f"{tenant}.yaml") from exc
        versions = await self.list_configs(tenant)
        if versions and versions[-1].digest == digest(text) and not rollback_of:
            return versions[-1]  # same text as the newest: idempotent, no new version
        if staged and rollback_of:
            raise ConfigError("a rollback cannot be staged / 回滚不能暂存", path=f"{tenant}.yaml")
        n = (versions[-1].version if versions else 0) + 1
        while True:
            cv = ConfigVersion(
                tenant=tenant,
                version=n,
                yaml=text,
                digest=digest(text),
                author=actor,
                comment=comment,
                rollback_of=rollback_of,
            )
            try:
                await self.bus.kv_create(BUCKET_CONFIGS, config_key(tenant, n), encode(cv))
                break
            except Conflict:
                n += 1  # another writer took this number
        before = rec.current_config

        def change(old: TenantRecord | None) -> TenantRecord:
            assert old is not None
            return old.model_copy(update={"current_config": max(old.current_config, cv.version)})

        if not staged:
            await self._mutate(TenantRecord, BUCKET_REGISTRY, f"tenant.{tenant}", change)
        prev = await self._config_text(tenant, before) if before else None
        await self._audit(
            actor,
            "config.rollback" if rollback_of else "config.stage" if staged else "config.put",
            f"tenant/{tenant}/configs/{cv.version}",
            tenant=tenant,
            before=prev,
            after=text,
            detail=comment or (f"rollback to version {rollback_of}" if rollback_of else ""),
        )
        self.on_change()
        return cv

    async def _config_text(self, tenant: str, version: int) -> str | None:
        cv, _ = await self._get(ConfigVersion, BUCKET_CONFIGS, config_key(tenant, version))
        return cv.yaml if cv else None

    async def list_configs(self, tenant: str) -> list[ConfigVersion]:
        check_id(tenant, "tenant")
        entries = await snapshot(self.bus, BUCKET_CONFIGS, f"{tenant}.*")
        out = [decode(ConfigVersion, e.value) for e in entries.values()]
        return sorted(out, key=lambda c: c.version)

    async def get_config(self, tenant: str, version: int = 0) -> ConfigVersion:
        rec = await self._tenant(tenant)
        version = version or rec.current_config
        cv, _ = await self._get(ConfigVersion, BUCKET_CONFIGS, config_key(tenant, version))
        if cv is None:
            raise NotFoundError(
                f"tenant {tenant!r} has no config version {version} / 无配置版本 {version}"
            )
        return cv

    async def diff_config(self, tenant: str, a: int, b: int = 0) -> str:
        old, new = await self.get_config(tenant, a), await self.get_config(tenant, b)
        a_lines, b_lines = old.yaml.splitlines(keepends=True), new.yaml.splitlines(keepends=True)
        names = f"{tenant}@{old.version}", f"{tenant}@{new.version}"
        # Diffing two big configs is CPU work: off the event loop, like their validation.
        diff = difflib.unified_diff
        return await asyncio.to_thread(lambda: "".join(diff(a_lines, b_lines, *names)))

    async def rollback_config(self, tenant: str, version: int, *, actor: str) -> ConfigVersion:
        """Make ``version``'s content current again, as a new version (history stays linear)."""
        old = await self.get_config(tenant, version)
        return await self.put_config(
            tenant, old.yaml, actor=actor, comment=f"rollback to {version}", rollback_of=version
        )

    # ------------------------------------------------------------------ models

    async def publish_model(self, packed: bytes, *, actor: str) -> ModelVersion:
        """Verify a packed, signed bundle (signature and every file hash), then store it."""
        with tempfile.TemporaryDirectory(prefix="kefu-publish-") as tmp:
            bundle_dir = unpack(packed, Path(tmp) / "bundle")
            manifest = verify_bundle(bundle_dir, self.trust)
            sig_key = _signer(bundle_dir)
        sha = hashlib.sha256(packed).hexdigest()
        content = manifest.content_digest()
        mv = ModelVersion(
            name=manifest.name,
            version=manifest.version,
            task=manifest.task,
            family=manifest.family,
            labels=list(manifest.labels),
            size=len(packed),
            sha256=sha,
            content_sha256=content,
            signer=sig_key,
            created_at=manifest.created_at,
            metrics=_summary_metrics(manifest.metrics),
            published_by=actor,
        )
        key = model_key(manifest.name, manifest.version)
        existing, _ = await self._get(ModelVersion, BUCKET_MODELS, key)
        if existing is not None:
            # Same verified content (whatever tar carried it): idempotent. The stored object
            # and its transport hash stay those of the first publish.
            if existing.sha256 == sha or (
                existing.content_sha256 and existing.content_sha256 == content
            ):
                return existing
            raise Conflict(
                f"model {manifest.ref} is already published with different content (versions "
                f"are immutable) / 模型 {manifest.ref} 已发布且内容不同（版本不可变）"
            )
        # Object first, record second: a record never points at a missing bundle.
        await self.bus.obj_put(OBJECT_BUNDLES, bundle_object(mv.name, mv.version), packed)
        # A concurrent publish of the same version may have won; its record stands.
        with contextlib.suppress(Conflict):
            await self.bus.kv_create(BUCKET_MODELS, key, encode(mv))
        await self._audit(actor, "model.publish", f"models/{manifest.ref}", after=sha)
        return mv

    async def list_models(self, name: str = "") -> list[ModelVersion]:
        if name:
            validate_name(name)
        entries = await snapshot(self.bus, BUCKET_MODELS, f"{name}.>" if name else ">")
        out = [decode(ModelVersion, e.value) for e in entries.values()]
        return sorted(out, key=lambda m: (m.name, m.published_at))

    async def get_model(self, ref: str) -> ModelVersion:
        vref = VersionRef.parse(ref)
        name, version = vref.name, vref.version
        if not version:
            versions = await self.list_models(name)
            if not versions:
                raise NotFoundError(f"no model {name!r} / 模型 {name!r} 不存在")
            return versions[-1]
        mv, _ = await self._get(ModelVersion, BUCKET_MODELS, model_key(name, version))
        if mv is None:
            raise NotFoundError(f"no model {ref!r} / 模型 {ref!r} 不存在")
        return mv


def _signer(bundle_dir: Path) -> str:
    try:
        return str(json.loads((bundle_dir / SIGNATURE).read_text(encoding="utf-8"))["key_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _summary_metrics(metrics: dict[str, object]) -> dict[str, object]:
    dev = metrics.get("dev") if isinstance(metrics.get("dev"), dict) else {}
    assert isinstance(dev, dict)
    return {k: dev.get(k) for k in ("accuracy", "macro_f1", "ece") if dev.get(k) is not None} | {
        k: metrics[k] for k in ("quantization_accuracy_change", "size_bytes") if k in metrics
    }
