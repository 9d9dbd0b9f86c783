"""Pure core of the node agent: what to do so that this node serves its desired state.

:func:`plan` compares the region's desired documents with what the node observes about itself
and returns, per tenant, the ordered actions to run: fetch the bundles it lacks, load and warm
them, then apply the tenant (config pinned to the assigned versions) — or remove it. Actions
of one tenant run in order; tenants run in parallel. Every action is idempotent, so running a
plan again after a crash or a partial failure converges too. :func:`pin_models` is the config
step: the assigned versions become explicit ``name@version`` references, so a tenant switches
versions exactly when its config is swapped in. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kefu.config import ModelRef, TenantConfig
from kefu.errors import ConfigError
from kefu.model_ref import MODEL_SLOTS
from kefu.wire import BundleRef, DesiredTenant

__all__ = [
    "ApplySplit",
    "ApplyTenant",
    "FetchBundle",
    "LoadBundle",
    "LocalState",
    "NodeAction",
    "RemoveTenant",
    "pin_models",
    "plan",
]


@dataclass(frozen=True, kw_only=True)
class FetchBundle:
    bundle: BundleRef


@dataclass(frozen=True, kw_only=True)
class LoadBundle:
    bundle: BundleRef
    #: Make it the active version of its name (only the tenant-level assignment does; a
    #: scenario's pin or a rollout's canary must never become another tenant's default).
    activate: bool = True


@dataclass(frozen=True, kw_only=True)
class ApplyTenant:
    doc: DesiredTenant


@dataclass(frozen=True, kw_only=True)
class ApplySplit:
    """Only the rollout split changed (a weight, a pause): no tenant re-apply."""

    doc: DesiredTenant


@dataclass(frozen=True, kw_only=True)
class RemoveTenant:
    tenant: str


NodeAction = FetchBundle | LoadBundle | ApplyTenant | ApplySplit | RemoveTenant


@dataclass(kw_only=True)
class LocalState:
    #: tenant → fingerprint of the desired document it serves (its last-known-good).
    applied: Mapping[str, str] = field(default_factory=dict)
    #: tenant → base fingerprint (without the split) of the document it serves.
    applied_base: Mapping[str, str] = field(default_factory=dict)
    #: tenant → fingerprint of a document the node refused (not retried until it changes).
    refused: Mapping[str, str] = field(default_factory=dict)
    #: ``name@version`` present and verified in the local model store.
    stored: frozenset[str] = frozenset()
    #: ``name@version`` loaded in the inference runtime.
    loaded: frozenset[str] = frozenset()
    #: Tenants whose desired document names versions the node-local guard reverted (skipped
    #: until the desired state names others).
    held: frozenset[str] = frozenset()


def plan(desired: Mapping[str, DesiredTenant], local: LocalState) -> dict[str, list[NodeAction]]:
    """Per tenant, the actions (in order) that make the node serve ``desired``.

    ``desired`` must be a complete snapshot of the region: a tenant the node serves that is
    absent from it is removed. (The agent only plans once its watcher delivered a snapshot, so
    a node that starts offline keeps serving its last-known-good.)
    """
    out: dict[str, list[NodeAction]] = {}
    for tenant, doc in sorted(desired.items()):
        fp = doc.fingerprint()
        if not doc.enabled:
            if tenant in local.applied:
                out[tenant] = [RemoveTenant(tenant=tenant)]
            continue
        if local.applied.get(tenant) == fp or local.refused.get(tenant) == fp:
            continue
        if tenant in local.held:
            continue  # the node reverted these versions by itself: not again
        actions: list[NodeAction] = []
        defaults = {b.ref for b in doc.models.values()}
        for b in doc.bundles():
            if b.ref not in local.stored:
                actions.append(FetchBundle(bundle=b))
            if b.ref not in local.loaded:
                actions.append(LoadBundle(bundle=b, activate=b.ref in defaults))
        if tenant in local.applied and local.applied_base.get(tenant) == doc.base_fingerprint():
            actions.append(ApplySplit(doc=doc))
        else:
            actions.append(ApplyTenant(doc=doc))
        out[tenant] = actions
    for tenant in sorted(set(local.applied) - set(desired)):
        out[tenant] = [RemoveTenant(tenant=tenant)]
    return out


def _pin(ref: ModelRef | None, b: BundleRef | None) -> ModelRef | None:
    if b is None:
        return ref
    labels = ref.labels if ref is not None and ref.name == b.name else ()
    return ModelRef(name=b.name, version=b.version, labels=labels)


def pin_models(config: TenantConfig, doc: DesiredTenant) -> TenantConfig:
    """``config`` with the assignment's versions pinned; a config naming a different model
    in a slot than the assignment is refused (the assignment says versions, not models)."""
    if config.tenant.id != doc.tenant:
        raise ConfigError(
            f"config is for tenant {config.tenant.id!r}, not {doc.tenant!r} / 配置租户不符",
            field="tenant.id",
        )
    m = config.models
    updates: dict[str, ModelRef | None] = {}
    for slot, b in doc.models.items():
        current = getattr(m, slot, None)
        if slot not in MODEL_SLOTS:
            raise ConfigError(f"unknown model slot {slot!r} / 未知模型槽位", field="models")
        if current is not None and current.name != b.name:
            raise ConfigError(
                f"assignment gives {slot} model {b.name!r} but the config names "
                f"{current.name!r} / 分配的模型与配置不一致",
                field=f"models.{slot}",
            )
        updates[slot] = _pin(current, b)
    models = m.model_copy(update=updates)
    scenarios = []
    known = {s.id for s in config.scenarios}
    for scenario_id in doc.scenario_models:
        if scenario_id not in known:
            raise ConfigError(
                f"assignment pins models for unknown scenario {scenario_id!r} / 未知场景",
                field="scenarios",
            )
    for s in config.scenarios:
        pins = doc.scenario_models.get(s.id, {})
        if pins:
            sm = s.models.model_copy(
                update={slot: _pin(getattr(s.models, slot, None), b) for slot, b in pins.items()}
            )
            s = s.model_copy(update={"models": sm})
        scenarios.append(s)
    return config.model_copy(update={"models": models, "scenarios": tuple(scenarios)})
