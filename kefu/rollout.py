"""Staged rollouts, the shared part: the rollout document, its validation, and the sticky split.

A :class:`Rollout` lives in the ``kefu_rollouts`` key-value bucket (key
``r.<tenant>.<rollout id>``, every transition a new revision kept by the bucket's history; the
key ``active.<tenant>`` names the one rollout of a tenant that is not finished). It says what
to roll out (:class:`RolloutTarget`: model versions per slot), where and how fast
(:class:`Wave`: regions and the share of each region's nodes — a region may come back in a
later wave with a larger share; :class:`Step`: in-node traffic
weights with a minimum bake time), the **baseline captured at start** (per region, so a
rollback never depends on key-value history), and where it stands (``phase``, ``wave``,
``step``, ``step_started_at``).

Inside a node the split is per conversation: :func:`arm_for` hashes (rollout salt, session
id) to a point in [0, 1) and compares it with the node's weight, so the same session always
lands on the same arm, and widening a step only moves new sessions (a point below 5 % is also
below 25 %). The compiled desired document carries a :class:`CanarySplit` per region.

Pure: no I/O. The planner that moves a rollout is :mod:`kefu.control_plane.rollout_plan`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kefu.errors import KefuError
from kefu.model_ref import MODEL_SLOTS, VersionRef
from kefu.wire import CanarySplit, WireError, check_id

__all__ = [
    "ACTIVE_PHASES",
    "ARMS",
    "BUCKET_ROLLOUTS",
    "CAPABILITY_SPLIT",
    "DEFAULT_STEPS",
    "FINAL_PHASES",
    "Arm",
    "CanarySplit",
    "Member",
    "Phase",
    "RegionBaseline",
    "Rollout",
    "RolloutTarget",
    "Step",
    "Wave",
    "active_key",
    "arm_for",
    "new_rollout_id",
    "parse_weight",
    "rollout_key",
    "split_point",
    "target_text",
]

BUCKET_ROLLOUTS = "kefu_rollouts"
#: What a node advertises in its status when it applies :class:`CanarySplit`.
CAPABILITY_SPLIT = "split-v1"

Phase = Literal["pending", "running", "paused", "promoted", "rolled_back", "aborted"]
#: A tenant has at most one rollout in these phases.
ACTIVE_PHASES: tuple[str, ...] = ("pending", "running", "paused")
FINAL_PHASES: tuple[str, ...] = ("promoted", "rolled_back", "aborted")
Arm = Literal["canary", "baseline"]
ARMS: tuple[str, ...] = ("canary", "baseline")

_ROLLOUT_ID = re.compile(r"^ro-[a-z0-9]{6,32}$")
#: Most waves, steps and regions a rollout may name (a bound on the document's size).
MAX_WAVES = 16
MAX_STEPS = 16
MAX_BAKE_S = 7 * 86400.0


def new_rollout_id() -> str:
    return "ro-" + secrets.token_hex(5)


def rollout_key(tenant: str, rollout_id: str) -> str:
    return f"r.{check_id(tenant, 'tenant')}.{rollout_id}"


def active_key(tenant: str) -> str:
    return f"active.{check_id(tenant, 'tenant')}"


def split_point(salt: str, session_id: str) -> float:
    """A stable point in [0, 1) for (salt, session id): the same on every node and run."""
    h = hashlib.sha256(f"{salt}\x00{session_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def arm_for(salt: str, session_id: str, weight: float) -> Arm:
    """The arm of a new session at ``weight`` (0..1): canary iff its point lies below it."""
    return "canary" if split_point(salt, session_id) < weight else "baseline"


def _valid(check: Callable[[str, str], str], value: str, what: str) -> str:
    """A wire check inside a pydantic validator (which reports ValueErrors only)."""
    try:
        return check(value, what)
    except KefuError as exc:
        raise ValueError(str(exc)) from None


class _Doc(BaseModel):
    # Rollouts are written by the control plane only; an unknown field is a mistake.
    model_config = ConfigDict(extra="forbid")


class Wave(_Doc):
    """Regions and the share (0 < share ≤ 1) of each region's capable nodes taking part."""

    regions: list[str] = Field(min_length=1, max_length=64)
    node_share: float = Field(default=1.0, gt=0.0, le=1.0)

    @field_validator("regions")
    @classmethod
    def _regions(cls, v: list[str]) -> list[str]:
        for r in v:
            _valid(check_id, r, "region")
        if len(set(v)) != len(v):
            raise ValueError("a region is named twice in one wave / 同一批次区域重复")
        return v


class Step(_Doc):
    """An in-node traffic weight (0 < weight ≤ 1) held for at least ``bake_s`` seconds."""

    weight: float = Field(gt=0.0, le=1.0)
    bake_s: float = Field(default=300.0, ge=0.0, le=MAX_BAKE_S)


#: 1 % → 5 % → 25 % → 50 % → 100 %, five minutes each.
DEFAULT_STEPS: tuple[Step, ...] = tuple(
    Step(weight=w, bake_s=300.0) for w in (0.01, 0.05, 0.25, 0.5, 1.0)
)


class RolloutTarget(_Doc):
    """What the canary runs: slot → ``name@version`` (concrete versions) and/or a tenant
    config version (0 = the baseline's config)."""

    models: dict[str, str] = Field(default_factory=dict)
    config_version: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _something(self) -> RolloutTarget:
        if not self.models and not self.config_version:
            raise ValueError("name a model (slot=name@version) or a config version")
        return self

    @field_validator("models")
    @classmethod
    def _models(cls, v: dict[str, str]) -> dict[str, str]:
        for slot, ref in v.items():
            if slot not in MODEL_SLOTS:
                raise ValueError(f"unknown model slot {slot!r} (use {', '.join(MODEL_SLOTS)})")
            try:
                VersionRef.parse(ref, require_version=True)
            except KefuError as exc:
                raise ValueError(str(exc)) from None
        return v


class RegionBaseline(_Doc):
    """What one region served when the rollout started (its assignment's models)."""

    models: dict[str, str] = Field(default_factory=dict)
    config_version: int = 0


class Member(_Doc):
    node_id: str
    region: str
    wave: int


class Rollout(_Doc):
    id: str
    tenant: str
    target: RolloutTarget
    waves: list[Wave] = Field(min_length=1, max_length=MAX_WAVES)
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)
    #: region → what it served at start; a rollback writes exactly this back.
    baseline: dict[str, RegionBaseline] = Field(default_factory=dict)
    #: Hashed with each session id to pick its arm; fixed for the rollout's life.
    salt: str = Field(default_factory=lambda: secrets.token_hex(8))
    phase: Phase = "pending"
    wave: int = 0
    step: int = 0
    step_started_at: float = 0.0
    created_at: float = Field(default_factory=time.time)
    created_by: str = ""
    updated_at: float = Field(default_factory=time.time)
    #: Who or what decided the last transition, and why (also in the audit stream).
    updated_by: str = ""
    reason: str = ""
    #: Leader term of the controller write that produced this revision (0 = an API write).
    term: int = 0
    #: Nodes admitted to the rollout, each with the wave that admitted it (chosen when the
    #: wave begins; a node joining its region later serves the baseline).
    members: list[Member] = Field(default_factory=list)
    #: When every member reported the current step's weight (bake time counts from it).
    converged_at: float = 0.0
    #: A final phase whose assignments the controller has written (then ``active.<tenant>``
    #: is released).
    finalized: bool = False
    #: Nodes kept out of a wave because they do not advertise the split (reported).
    excluded_nodes: list[str] = Field(default_factory=list)
    #: Sessions moved off the canary by a rollback, as nodes reported them.
    switched_sessions: int = 0
    #: Canary-analysis policy name (``kefu cp rollout policy list``); "" = steps advance on
    #: bake time alone, no statistics.
    policy: str = ""
    history: list[str] = Field(default_factory=list, max_length=256)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ROLLOUT_ID.fullmatch(v):
            raise ValueError(f"invalid rollout id {v!r} (ro-<6-32 of a-z0-9>) / 灰度发布编号无效")
        return v

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str) -> str:
        return _valid(check_id, v, "tenant")

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[Step]) -> list[Step]:
        weights = [s.weight for s in v]
        if weights != sorted(weights) or len(set(weights)) != len(weights):
            raise ValueError("step weights must increase / 各步流量比例必须递增")
        return v

    @model_validator(mode="after")
    def _shape(self) -> Rollout:
        share: dict[str, float] = {}
        for i, w in enumerate(self.waves):
            for r in w.regions:
                if w.node_share <= share.get(r, 0.0):
                    raise ValueError(
                        f"wave {i + 1} takes no more of region {r!r} than an earlier wave / "
                        "后续批次须扩大区域节点比例"
                    )
                share[r] = w.node_share
        if not 0 <= self.wave < len(self.waves) or not 0 <= self.step < len(self.steps):
            raise ValueError("wave or step out of range / 批次或步骤超出范围")
        return self

    # ------------------------------------------------------------------ reading

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    @property
    def regions(self) -> list[str]:
        """Every region of the rollout, once each, in wave order."""
        return list(dict.fromkeys(r for w in self.waves for r in w.regions))

    @property
    def weight(self) -> float:
        return self.steps[self.step].weight

    @property
    def final_weight(self) -> float:
        return self.steps[-1].weight

    def node_weight(self, m: Member) -> float:
        """The canary weight a member node runs: earlier waves hold the last step's weight."""
        if self.phase not in ("running", "paused"):
            return 0.0
        return self.final_weight if m.wave < self.wave else self.weight

    def weights(self, region: str) -> dict[str, float]:
        return {m.node_id: self.node_weight(m) for m in self.members if m.region == region}

    def describe(self) -> str:
        return (
            f"{self.id} {self.tenant} {self.phase} wave {self.wave + 1}/{len(self.waves)} "
            f"step {self.step + 1}/{len(self.steps)} weight {self.weight:.0%}"
        )


def target_text(models: Mapping[str, str], config_version: int = 0) -> str:
    """A rollout's target in one line: ``intent=name@version, config=v3``."""
    parts = [f"{k}={v}" for k, v in sorted(models.items())]
    return ", ".join(parts + ([f"config=v{config_version}"] if config_version else []))


def parse_weight(text: str) -> float:
    """``"5%"``, ``"5"`` (percent) or ``"0.05"`` → 0.05; raises WireError."""
    raw = text.strip().rstrip("%")
    try:
        value = float(raw)
    except ValueError as exc:
        raise WireError(f"invalid weight {text!r} / 流量比例无效") from exc
    if text.strip().endswith("%") or value > 1.0:
        value /= 100.0
    if not 0.0 < value <= 1.0:
        raise WireError(f"weight {text!r} is not in (0, 100 %] / 流量比例超出范围")
    return value
