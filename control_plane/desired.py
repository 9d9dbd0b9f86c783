"""Pure core of the control plane: compile desired state and plan what to write.

The leader gathers the registry (tenants), assignments, config versions, model versions and
the rollouts in progress, then :func:`plan_desired` decides which
``kefu_desired_<region>/<tenant>`` documents to put or delete so that what nodes watch matches
what the central team asked for. A running rollout adds a :class:`~kefu.wire.CanarySplit` to
the documents of its regions; a promoted or rolled-back rollout whose assignments are not yet
written overlays the target or the captured baseline, so nodes switch the moment the rollout's
phase changes. No I/O here (no NATS, no gRPC): the leader's reconciler executes the plan, and a
plan run twice writes nothing the second time (documents are compared by fingerprint).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kefu.rollout import Rollout
from kefu.wire import (
    Assignment,
    BundleRef,
    CanarySplit,
    ConfigVersion,
    DesiredTenant,
    ModelVersion,
    TenantRecord,
)

__all__ = [
    "DeleteDesired",
    "DesiredInputs",
    "PutDesired",
    "compile_desired",
    "plan_desired",
    "resolve_bundle",
]


@dataclass(frozen=True, kw_only=True)
class PutDesired:
    region: str
    tenant: str
    doc: DesiredTenant


@dataclass(frozen=True, kw_only=True)
class DeleteDesired:
    region: str
    tenant: str


@dataclass(kw_only=True)
class DesiredInputs:
    tenants: Mapping[str, TenantRecord] = field(default_factory=dict)
    assignments: list[Assignment] = field(default_factory=list)
    #: (tenant, version) → config version.
    configs: Mapping[tuple[str, int], ConfigVersion] = field(default_factory=dict)
    #: ``name@version`` → model version.
    models: Mapping[str, ModelVersion] = field(default_factory=dict)
    #: tenant → its rollout that is active or not yet finalized.
    rollouts: Mapping[str, Rollout] = field(default_factory=dict)


def resolve_bundle(ref: str, models: Mapping[str, ModelVersion]) -> BundleRef | None:
    mv = models.get(ref)
    if mv is None:
        return None
    return BundleRef(name=mv.name, version=mv.version, sha256=mv.sha256, size=mv.size)


def compile_desired(a: Assignment, inputs: DesiredInputs) -> DesiredTenant | None:
    """The document for one assignment, or None while something it needs is missing
    (no config yet, an unknown model); the previous document then stays in place."""
    tenant = inputs.tenants.get(a.tenant)
    if tenant is None:
        return None
    version = a.config_version or tenant.current_config
    models: dict[str, BundleRef] = {}
    split: CanarySplit | None = None
    canary_cfg = None
    slots = dict(a.models)
    ro = inputs.rollouts.get(a.tenant)
    if ro is not None and a.region in ro.regions and not ro.finalized:
        # A config rollout holds the region on its captured config until it ends, so a
        # `config put` meanwhile moves neither arm.
        held = ro.baseline[a.region].config_version if a.region in ro.baseline else 0
        if ro.phase == "promoted":  # until the controller writes the target into assignments
            slots.update(ro.target.models)
            version = ro.target.config_version or version
        elif ro.phase == "rolled_back" and a.region in ro.baseline:
            slots.update(ro.baseline[a.region].models)
            version = (held if ro.target.config_version else 0) or version
        elif ro.phase in ("running", "paused"):
            if ro.target.config_version:
                version = held or version
                canary_cfg = inputs.configs.get((a.tenant, ro.target.config_version))
                if canary_cfg is None:
                    return None
            canary: dict[str, BundleRef] = {}
            for slot, ref in sorted(ro.target.models.items()):
                b = resolve_bundle(ref, inputs.models)
                if b is None:
                    return None
                canary[slot] = b
            split = CanarySplit(
                rollout_id=ro.id,
                salt=ro.salt,
                canary=canary,
                weights=ro.weights(a.region),
                config_version=canary_cfg.version if canary_cfg else 0,
                config_digest=canary_cfg.digest if canary_cfg else "",
                config_yaml=canary_cfg.yaml if canary_cfg else "",
            )
    cfg = inputs.configs.get((a.tenant, version))
    if cfg is None:
        return None
    for slot, ref in sorted(slots.items()):
        b = resolve_bundle(ref, inputs.models)
        if b is None:
            return None
        models[slot] = b
    scenario_models: dict[str, dict[str, BundleRef]] = {}
    for scenario, pins in sorted(a.scenario_models.items()):
        scenario_models[scenario] = {}
        for slot, ref in sorted(pins.items()):
            b = resolve_bundle(ref, inputs.models)
            if b is None:
                return None
            scenario_models[scenario][slot] = b
    return DesiredTenant(
        tenant=a.tenant,
        region=a.region,
        enabled=tenant.enabled,
        config_version=cfg.version,
        config_digest=cfg.digest,
        config_yaml=cfg.yaml,
        models=models,
        scenario_models=scenario_models,
        api_key_hashes=tenant.active_key_hashes(),
        api_key_expiry=tenant.key_expiry(),
        split=split,
        residency=tenant.residency,
    )


def plan_desired(
    inputs: DesiredInputs, current: Mapping[tuple[str, str], str]
) -> list[PutDesired | DeleteDesired]:
    """Actions turning ``current`` ((region, tenant) → fingerprint of the stored document)
    into what ``inputs`` ask for. Sorted by region then tenant, so runs are reproducible."""
    actions: list[PutDesired | DeleteDesired] = []
    wanted: set[tuple[str, str]] = set()
    for a in sorted(inputs.assignments, key=lambda a: (a.region, a.tenant)):
        key = (a.region, a.tenant)
        if a.tenant not in inputs.tenants:
            continue  # tenant gone: treated as unassigned below
        wanted.add(key)
        doc = compile_desired(a, inputs)
        if doc is None:
            continue  # keep what nodes have until the inputs are complete
        if current.get(key) != doc.fingerprint():
            actions.append(PutDesired(region=a.region, tenant=a.tenant, doc=doc))
    for key in sorted(set(current) - wanted):
        actions.append(DeleteDesired(region=key[0], tenant=key[1]))
    return actions
