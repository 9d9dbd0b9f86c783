"""The wire contract between the control plane and nodes: NATS names, key schema, documents.

Desired state (what the central team wants) and observed state (what a node reports) travel as
JSON documents validated by the pydantic models below, in JetStream key-value buckets:

=========================  ===========================  =========================================
bucket / stream            key / subject                document
=========================  ===========================  =========================================
``kefu_registry``          ``tenant.<tenant>``          :class:`TenantRecord`
                           ``region.<region>``          :class:`RegionRecord`
``kefu_configs``           ``<tenant>.<version:06d>``   :class:`ConfigVersion` (immutable)
``kefu_models``            ``<name>.<version>``         :class:`ModelVersion` (immutable)
``kefu_assignments``       ``<tenant>.<region>``        :class:`Assignment`
``kefu_desired_<region>``  ``<tenant>``                 :class:`DesiredTenant` (compiled by the
                                                        leader; what nodes of the region watch)
``kefu_nodes``             ``<node id>``                :class:`NodeStatus` (heartbeat)
``kefu_leader``            ``lease``                    :class:`Lease`
object store ``kefu_bundles``  ``<name>@<version>``     packed, signed bundle (kefu.bundle.pack)
stream ``KEFU_AUDIT``      ``kefu.audit.<tenant|_>``    :class:`AuditEvent`
stream ``KEFU_TELEMETRY``  ``kefu.telemetry.<region>.<node>``  :class:`TelemetryBatch`
=========================  ===========================  =========================================

One desired bucket per region is what makes region isolation enforceable with plain NATS
subject permissions: a node may read ``KV_kefu_desired_<its region>`` and nothing else.
No document here carries conversation text (raw text never leaves its region). The failover
documents (region health, tenants' routes, gateways' reach) are in :mod:`kefu.wire_failover`
and importable from here too.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from kefu.canary_stats import ArmCounts
from kefu.errors import PermanentError
from kefu.model_ref import VersionRef, format_ref
from kefu.wire_failover import (
    BUCKET_REACH,
    BUCKET_REGION_HEALTH,
    BUCKET_ROUTES,
    GatewayReach,
    RegionHealth,
    RegionState,
    TenantRoute,
)

__all__ = [
    "BUCKET_ASSIGNMENTS",
    "BUCKET_CONFIGS",
    "BUCKET_LEADER",
    "BUCKET_MODELS",
    "BUCKET_NODES",
    "BUCKET_OPERATORS",
    "BUCKET_REACH",
    "BUCKET_REGION_HEALTH",
    "BUCKET_REGISTRY",
    "BUCKET_ROUTES",
    "LATENCY_BOUNDS_MS",
    "LEASE_KEY",
    "OBJECT_BUNDLES",
    "STREAM_AUDIT",
    "STREAM_TELEMETRY",
    "ApiKeyEntry",
    "Assignment",
    "AuditEvent",
    "BundleRef",
    "CanarySplit",
    "ConfigVersion",
    "DesiredTenant",
    "FailoverMode",
    "GatewayReach",
    "GuardRevert",
    "Lease",
    "ModelVersion",
    "NodeAuditEvent",
    "NodeStatus",
    "ObservedTenant",
    "RegionHealth",
    "RegionRecord",
    "RegionState",
    "TelemetryAggregate",
    "TelemetryBatch",
    "TenantRecord",
    "TenantResidency",
    "TenantRoute",
    "WireError",
    "assignment_key",
    "audit_subject",
    "bundle_object",
    "check_id",
    "config_key",
    "decode",
    "desired_bucket",
    "digest",
    "encode",
    "model_key",
    "telemetry_subject",
]

BUCKET_REGISTRY = "kefu_registry"
BUCKET_CONFIGS = "kefu_configs"
BUCKET_MODELS = "kefu_models"
BUCKET_ASSIGNMENTS = "kefu_assignments"
BUCKET_NODES = "kefu_nodes"
BUCKET_LEADER = "kefu_leader"
#: Control-plane operator tokens (hashes only); no node user may read it.
BUCKET_OPERATORS = "kefu_operators"
LEASE_KEY = "lease"
OBJECT_BUNDLES = "kefu_bundles"
STREAM_AUDIT = "KEFU_AUDIT"
STREAM_TELEMETRY = "KEFU_TELEMETRY"
#: Upper bounds of the telemetry latency histogram buckets (the last bucket is +inf).
LATENCY_BOUNDS_MS = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)

# Tenant, region and node ids become NATS subject tokens and bucket names: keep them tame.
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


_T = TypeVar("_T", bound=BaseModel)


class WireError(PermanentError):
    """A document or identifier does not follow the wire contract."""


def check_id(value: str, what: str = "id") -> str:
    if not _ID_RE.match(value):
        raise WireError(
            f"invalid {what} {value!r}: 1-63 chars of a-z, 0-9, '_', '-' / "
            f"{what} 无效：只能使用 1-63 个 a-z、0-9、'_'、'-' 字符"
        )
    return value


def desired_bucket(region: str) -> str:
    return f"kefu_desired_{check_id(region, 'region')}"


def config_key(tenant: str, version: int) -> str:
    return f"{tenant}.{version:06d}"


def model_key(name: str, version: str) -> str:
    return f"{name}.{version}"


def bundle_object(name: str, version: str) -> str:
    return f"{name}@{version}"


def assignment_key(tenant: str, region: str) -> str:
    return f"{tenant}.{region}"


def audit_subject(tenant: str | None) -> str:
    return f"kefu.audit.{tenant or '_'}"


def telemetry_subject(region: str, node_id: str) -> str:
    return f"kefu.telemetry.{region}.{node_id}"


def digest(data: bytes | str | BaseModel | None) -> str:
    """Short content digest (SHA-256, 16 hex) used in audit records and convergence checks."""
    if data is None:
        return ""
    if isinstance(data, BaseModel):
        data = data.model_dump_json()
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()[:16]


class _Doc(BaseModel):
    # Unknown fields are ignored so an older node reads a newer control plane's documents.
    model_config = ConfigDict(extra="ignore")


def encode(doc: BaseModel) -> bytes:
    return doc.model_dump_json().encode()


def decode(cls: type[_T], data: bytes, *, what: str = "document") -> _T:
    try:
        return cls.model_validate_json(data)
    except ValueError as exc:
        raise WireError(f"malformed {what}: {exc}") from exc


def now() -> float:
    return time.time()


# ------------------------------------------------------------------------------ registry


class ApiKeyEntry(_Doc):
    id: str
    sha256: str
    created_at: float
    revoked: bool = False
    #: Unix seconds after which the key is refused (0 = never): set by an issue with a
    #: lifetime, or by a rotation to the end of the successor period (:mod:`kefu.rotation`).
    expires_at: float = 0.0
    #: The key id that replaced this one (rotation).
    successor: str = ""


class TenantRecord(_Doc):
    id: str
    name: str = ""
    enabled: bool = True
    created_at: float = Field(default_factory=now)
    #: The config version new assignments follow (a put makes it current; a roll-back moves it).
    current_config: int = 0
    api_keys: list[ApiKeyEntry] = Field(default_factory=list)
    #: None = no residency set: the tenant is not routed by region (served where assigned).
    residency: TenantResidency | None = None

    def active_key_hashes(self) -> list[str]:
        return sorted(k.sha256 for k in self.api_keys if not k.revoked)

    def key_expiry(self) -> dict[str, float]:
        """hash → expiry (Unix seconds) of the active keys that expire; nodes enforce it."""
        return {k.sha256: k.expires_at for k in self.api_keys if not k.revoked and k.expires_at}


class RegionRecord(_Doc):
    id: str
    description: str = ""
    created_at: float = Field(default_factory=now)
    #: The residency zone (e.g. ``cn``, ``eu``): a tenant's allowed regions never leave the zone
    #: of its home region. "" = a zone of its own.
    zone: str = ""
    #: Where this region's tenants fail over to, in order (regions of the same zone).
    failover: list[str] = Field(default_factory=list)


#: automatic = the leader moves traffic when the region is down; manual = only an operator's
#: drain moves it; never = the tenant is served from its home region or not at all.
FailoverMode = Literal["automatic", "manual", "never"]


class TenantResidency(_Doc):
    """Where a tenant's conversations may be served and stored (set by an admin)."""

    home: str
    #: Every region allowed to serve it (always includes ``home``; all in home's zone).
    allowed: list[str] = Field(default_factory=list)
    #: Whether its sessions may be replicated to the other allowed regions.
    replicate: bool = False
    failover_mode: FailoverMode = "automatic"


class ConfigVersion(_Doc):
    tenant: str
    version: int
    yaml: str
    digest: str
    author: str = ""
    comment: str = ""
    created_at: float = Field(default_factory=now)
    #: Set when this version was created by rolling back to an older one.
    rollback_of: int = 0


class ModelVersion(_Doc):
    name: str
    version: str
    task: str
    family: str
    labels: list[str]
    size: int
    #: SHA-256 (hex) of the packed bundle in the object store.
    sha256: str
    #: SHA-256 of the canonical manifest (which lists every file's hash): the identity of the
    #: verified content, so a re-tarred identical bundle is the same version ("" = older record).
    content_sha256: str = ""
    signer: str = ""
    created_at: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    published_at: float = Field(default_factory=now)
    published_by: str = ""


class BundleRef(_Doc):
    name: str
    version: str
    sha256: str = ""
    size: int = 0

    @property
    def version_ref(self) -> VersionRef:
        return VersionRef(self.name, self.version)

    @property
    def ref(self) -> str:
        return format_ref(self.name, self.version)


class Assignment(_Doc):
    """Which config and model versions a tenant runs in one region."""

    tenant: str
    region: str
    #: 0 = follow the tenant's current config version.
    config_version: int = 0
    #: slot (``intent``, ``sentiment``, ``encoder``) → ``name@version``.
    models: dict[str, str] = Field(default_factory=dict)
    #: scenario → slot → ``name@version`` (a scenario's own pins, e.g. a specialised model).
    scenario_models: dict[str, dict[str, str]] = Field(default_factory=dict)
    updated_at: float = Field(default_factory=now)
    updated_by: str = ""

    def without(self, names: list[str]) -> Assignment:
        """A copy with model slots (``slot``), scenarios' pins (``scenario``) or single pins
        (``scenario:slot``) taken away; a name that is not assigned raises WireError."""
        models = dict(self.models)
        pins = {sc: dict(slots) for sc, slots in self.scenario_models.items()}
        for name in names:
            scenario, _, slot = name.partition(":")
            if slot and slot in pins.get(scenario, {}):
                del pins[scenario][slot]
                if not pins[scenario]:
                    del pins[scenario]
            elif not slot and name in models:
                del models[name]
            elif not slot and name in pins:
                del pins[name]
            else:
                raise WireError(
                    f"{name!r} is not assigned to {self.tenant} in {self.region}: nothing to "
                    f"remove / 该区域未分配 {name!r}，无可移除"
                )
        return self.model_copy(update={"models": models, "scenario_models": pins})


class CanarySplit(_Doc):
    """The sticky in-node split a region's desired document carries while a rollout runs.

    ``weights`` lists the region's nodes in the rollout's waves so far (node id → share of new
    sessions on the canary); a node not listed serves only the baseline. ``canary`` are the
    bundles the canary arm runs (a slot not named keeps the baseline's). See
    :mod:`kefu.rollout`.
    """

    rollout_id: str
    salt: str
    canary: dict[str, BundleRef] = Field(default_factory=dict)
    weights: dict[str, float] = Field(default_factory=dict)
    #: A config canary: the tenant config version the canary arm runs (0 = the baseline's).
    config_version: int = 0
    config_digest: str = ""
    config_yaml: str = ""

    def weight_for(self, node_id: str) -> float:
        return self.weights.get(node_id, 0.0)


def _compat(data: dict[str, Any]) -> dict[str, Any]:
    """Fields added later leave the fingerprint as it was while they are empty."""
    if not data["api_key_expiry"]:
        del data["api_key_expiry"]  # what it was before rotation existed
    if data["residency"] is None:
        del data["residency"]  # ... and before residency reached the nodes
    return data


class DesiredTenant(_Doc):
    """Everything a node needs to serve one tenant, compiled by the leader per region."""

    tenant: str
    region: str
    enabled: bool = True
    config_version: int
    config_digest: str
    config_yaml: str
    models: dict[str, BundleRef] = Field(default_factory=dict)
    scenario_models: dict[str, dict[str, BundleRef]] = Field(default_factory=dict)
    api_key_hashes: list[str] = Field(default_factory=list)
    #: hash → Unix seconds after which the node refuses that key (rotated or expiring keys
    #: only; absent = never). Nodes decide with their own clock, so no update is needed when
    #: the successor period ends.
    api_key_expiry: dict[str, float] = Field(default_factory=dict)
    #: Set while a rollout runs in this region (a node without the ``split-v1`` capability
    #: ignores it: the control plane never puts such a node in a wave).
    split: CanarySplit | None = None
    #: The tenant's residency (home, allowed regions, ``replicate``): a node with
    #: ``replication:`` ships and sources the tenant's sessions from it. None = not set.
    residency: TenantResidency | None = None

    def fingerprint(self) -> str:
        """Identifies this desired state; a node reports it back once it serves it. Without a
        split it is what it was before splits existed (older nodes agree on it)."""
        data = self.model_dump()
        if data["split"] is None:
            del data["split"]
        return digest(json.dumps(_compat(data), sort_keys=True))

    def base_fingerprint(self) -> str:
        """The fingerprint without the split: equal when only rollout weights changed, which
        a node applies without re-applying the tenant."""
        return digest(json.dumps(_compat(self.model_dump(exclude={"split"})), sort_keys=True))

    def bundles(self) -> list[BundleRef]:
        refs = {b.ref: b for b in self.models.values()}
        for pins in self.scenario_models.values():
            refs.update({b.ref: b for b in pins.values()})
        if self.split is not None:
            refs.update({b.ref: b for b in self.split.canary.values()})
        return [refs[k] for k in sorted(refs)]


# ------------------------------------------------------------------------- observed


class ObservedTenant(_Doc):
    #: ``serving`` = the desired fingerprint is applied; ``refused`` = the node rejected it
    #: (``error`` says why) and keeps serving ``fingerprint`` (its last-known-good).
    state: Literal["serving", "refused", "pending", "removed"] = "pending"
    fingerprint: str = ""
    config_version: int = 0
    models: dict[str, str] = Field(default_factory=dict)
    refused_fingerprint: str = ""
    error: str = ""
    #: The rollout split this node applied ("" = none) and its weight on this node.
    rollout_id: str = ""
    canary_weight: float = 0.0
    #: Live sessions per arm of that rollout, and sessions a rollback moved off the canary.
    sessions_canary: int = 0
    sessions_baseline: int = 0
    switched: int = 0


class GuardRevert(_Doc):
    """A node-local guard decision: a version the node applied failed its turns during the
    probation window, so the node went back to its last-known-good by itself (and does not
    re-apply that version until the desired state names another). Reported in the node status
    until it rolls out of the node's short history; ``id`` is stable (alert deduplication)."""

    id: str
    tenant: str
    #: What changed in the failing apply: model slots (``intent``…, ``scenario/slot``) and/or
    #: ``config``.
    slot: str
    #: The failing version(s) (``name@version``, ``config v3``) and what serves again.
    bad_version: str
    reverted_to: str
    #: Requests in the probation window and how many of them failed.
    turns: int
    errors: int
    #: When the failing version was applied, and when the node reverted (epoch s).
    applied_at: float
    at: float
    #: Fingerprint of the refused desired document (the one the node will not re-apply).
    bad_fingerprint: str = ""


class NodeStatus(_Doc):
    node_id: str
    region: str
    software_version: str = ""
    providers: list[str] = Field(default_factory=list)
    gpu: bool = False
    #: What this node's software can apply (``split-v1``: the sticky rollout split).
    capabilities: list[str] = Field(default_factory=list)
    listen: str = ""
    started_at: float = Field(default_factory=now)
    heartbeat_at: float = Field(default_factory=now)
    tenants: dict[str, ObservedTenant] = Field(default_factory=dict)
    models_loaded: list[str] = Field(default_factory=list)
    telemetry_dropped: int = 0
    telemetry_buffered: int = 0
    #: Why the node's last reconcile could not finish (e.g. a bundle it may not download);
    #: "" when it applied its whole desired state. ``reconcile_error_at`` = when (epoch s).
    reconcile_error: str = ""
    reconcile_error_at: float = 0.0
    #: How many times this node's agent has started on its data directory (1 = first start);
    #: a count that keeps changing is a crash loop (the control plane's steady-state guard).
    boots: int = 0
    #: Recent node-local guard reverts (newest last, a few at most).
    guard: list[GuardRevert] = Field(default_factory=list)
    #: Filled in by the control plane when it lists nodes (a node never sets it): why its
    #: steady-state guard marked this node drained ("" = not drained).
    drained: str = ""
    #: Replicated sessions (node.yaml ``replication:``): how long the oldest committed change
    #: not yet acknowledged by the region's turns stream has waited (0 = none waiting), how
    #: many wait, and per replica stream its messages, source lag (messages) and error.
    replication_lag_s: float = 0.0
    replication_backlog: int = 0
    replication_streams: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Lease(_Doc):
    holder: str
    expires_at: float
    term: int = 0


# ---------------------------------------------------------------------------- events


class AuditEvent(_Doc):
    at: float = Field(default_factory=now)
    actor: str
    action: str
    resource: str
    tenant: str = ""
    before: str = ""  # digest of the resource before the change ("" = did not exist)
    after: str = ""  # digest after ("" = deleted)
    detail: str = ""
    #: What the client claimed in `x-kefu-actor` (a note only; `actor` is the token's name).
    actor_note: str = ""
    seq: int = 0  # stream sequence, filled when read back


class TelemetryAggregate(_Doc):
    """One interval of one tenant × scenario × model version on one node. No text."""

    tenant: str
    scenario: str
    model_version: str
    window_start: float
    window_s: float
    turns: int = 0
    errors: int = 0
    latency_buckets: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))
    latency_sum_ms: float = 0.0
    fallbacks: int = 0
    handoffs: int = 0
    confidence_sum: float = 0.0
    feedback: int = 0
    rating_sum: int = 0
    #: Feedback that carried a 1–5 rating (feedback without one adds nothing to the mean).
    rated: int = 0
    ratings: list[int] = Field(default_factory=lambda: [0] * 5)  # 1★ … 5★
    resolved_yes: int = 0
    resolved_no: int = 0
    corrections: int = 0  # feedback naming the right intent
    corrected_wrong: int = 0  # … where the model's intent was not that one

    def merge(self, other: TelemetryAggregate) -> None:
        self.turns += other.turns
        self.errors += other.errors
        self.latency_buckets = [
            a + b for a, b in zip(self.latency_buckets, other.latency_buckets, strict=False)
        ]
        self.latency_sum_ms += other.latency_sum_ms
        self.fallbacks += other.fallbacks
        self.handoffs += other.handoffs
        self.confidence_sum += other.confidence_sum
        self.feedback += other.feedback
        self.rating_sum += other.rating_sum
        self.rated += other.rated
        self.ratings = [a + b for a, b in zip(self.ratings, other.ratings, strict=False)]
        self.resolved_yes += other.resolved_yes
        self.resolved_no += other.resolved_no
        self.corrections += other.corrections
        self.corrected_wrong += other.corrected_wrong


class NodeAuditEvent(_Doc):
    """One node audit-log record as the control plane receives it: who, what, when, the ids
    acted on, and its place in the node's hash chain (``seq``, ``prev``, ``hash``), so the
    control plane holds an independent copy of every chain head. Never conversation text."""

    seq: int
    ts: float
    actor: str
    role: str = ""
    action: str
    tenant: str = ""
    target: str = ""
    outcome: str = "ok"
    detail: str = "{}"
    prev: str = ""
    hash: str = ""


class TelemetryBatch(_Doc):
    node_id: str
    region: str
    #: Per agent run (``started_at``), so (node_id, started_at, seq) identifies a batch.
    seq: int
    started_at: float = 0.0
    sent_at: float = Field(default_factory=now)
    aggregates: list[TelemetryAggregate] = Field(default_factory=list)
    #: Intervals this node had to drop (buffer full while offline), cumulative.
    dropped: int = 0
    #: Node audit-log records written in this interval (redacted: ids and counts only).
    audit: list[NodeAuditEvent] = Field(default_factory=list)
    #: Audit records not shipped because a window held more than the recorder keeps
    #: (cumulative; they stay in the node's own log).
    audit_dropped: int = 0
    #: Per rollout × arm counts of this interval (sessions pinned to a rollout only).
    arms: list[ArmCounts] = Field(default_factory=list)
