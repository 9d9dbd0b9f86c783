"""The sticky in-node rollout split: which model versions a conversation's turns use.

While a rollout runs, the control plane gives each node of its waves a weight (the share of
new sessions on the canary). A **new** session's arm is decided once, by a stable hash of
(rollout salt, session id) against that weight (:func:`kefu.rollout.arm_for`), and the
concrete versions its first turn used are kept with the session (the ``_rollout`` slot, stored
in the session's SQLite row with the turn). Later turns use those versions for as long as they
are loaded, so widening a step never moves an existing conversation:

* a **canary** session whose rollout is no longer split on the node and whose version is not
  the tenant's current one was **rolled back**: it switches to the current version (counted);
* a **baseline** session keeps its version after a promote while the node keeps it loaded
  (:class:`SplitBoard.live_refs` tells the agent which versions live sessions still need);
* a session started while no rollout ran has no pin and follows the tenant's versions.

Pure: no I/O; the clock is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kefu.rollout import arm_for

__all__ = ["PIN_SLOT", "NodeSplit", "SessionPin", "SplitBoard", "config_for", "resolve_ref"]

#: The session slot holding the pin (slots starting with "_" are the node's own).
PIN_SLOT = "_rollout"
#: A session not seen for this long no longer keeps its versions loaded.
DEFAULT_PIN_IDLE_S = 1800.0


@dataclass(frozen=True, kw_only=True)
class NodeSplit:
    """The split of one tenant on this node: the rollout, its salt, this node's weight and
    the canary's versions (model name → version)."""

    rollout_id: str
    salt: str
    weight: float
    canary: Mapping[str, str] = field(default_factory=dict)
    #: A config canary: the version and the tenant built from it (opaque here) that the
    #: canary arm's turns run; 0 / None = the tenant's own config.
    config_version: int = 0
    config: Any = None


@dataclass(frozen=True, kw_only=True)
class SplitTag:
    """Which rollout arm served a turn (for telemetry): the rollout, the arm, the node's
    weight when the session started and whether this turn started it."""

    rollout_id: str
    arm: str
    weight: float = 0.0
    new_session: bool = False


@dataclass(kw_only=True)
class SessionPin:
    rollout_id: str
    arm: str  # "canary" | "baseline"
    #: model name → the version this session's turns use.
    versions: dict[str, str] = field(default_factory=dict)
    #: The canary config version this session's turns run (0 = the tenant's own config).
    config_version: int = 0

    @classmethod
    def new(cls, split: NodeSplit, session_id: str) -> SessionPin:
        return cls(rollout_id=split.rollout_id, arm=arm_for(split.salt, session_id, split.weight))

    @classmethod
    def from_slot(cls, value: Any) -> SessionPin | None:
        if not isinstance(value, dict):
            return None
        versions = value.get("versions")
        if not isinstance(versions, dict):
            return None
        return cls(
            rollout_id=str(value.get("rollout", "")),
            arm=str(value.get("arm", "")),
            versions={str(k): str(v) for k, v in versions.items()},
            config_version=int(value.get("config", 0) or 0),
        )

    def to_slot(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rollout": self.rollout_id,
            "arm": self.arm,
            "versions": dict(self.versions),
        }
        if self.config_version:
            out["config"] = self.config_version
        return out


def config_for(pin: SessionPin | None, split: NodeSplit | None) -> tuple[Any, bool]:
    """The canary tenant (opaque) a turn runs, or None for the tenant's own config, and
    whether the session was switched off the canary config (a rollback, or the canary config
    replaced by another version)."""
    if pin is None or pin.arm != "canary":
        return None, False
    live = (
        split is not None
        and split.rollout_id == pin.rollout_id
        and split.config is not None
        and split.config_version
    )
    if pin.config_version:
        if live and split is not None and split.config_version == pin.config_version:
            return split.config, False
        return None, True
    if live and split is not None:  # a new canary session: it takes the canary config
        pin.config_version = split.config_version
        return split.config, False
    return None, False


def resolve_ref(
    name: str,
    configured: str,
    pin: SessionPin | None,
    split: NodeSplit | None,
    loaded: Callable[[str], bool],
) -> tuple[str, bool]:
    """The model reference a turn uses for model ``name`` (``configured`` = the tenant
    config's reference) and whether the session was switched off its pinned version."""
    if pin is None:
        return configured, False
    version = pin.versions.get(name)
    if version is not None:
        ref = f"{name}@{version}"
        rolled_back = pin.arm == "canary" and (split is None or split.rollout_id != pin.rollout_id)
        if ref == configured or (not rolled_back and loaded(ref)):
            return ref, False
        return configured, True
    if (
        pin.arm == "canary"
        and split is not None
        and split.rollout_id == pin.rollout_id
        and name in split.canary
    ):
        return f"{name}@{split.canary[name]}", False
    return configured, False


@dataclass
class _Live:
    rollout_id: str
    arm: str
    refs: frozenset[str]
    seen: float


@dataclass
class SplitBoard:
    """Per tenant: the node's split, the live pinned sessions and the switches counted.
    Shared by the conversation service (writes) and the agent's target (reads)."""

    idle_s: float = DEFAULT_PIN_IDLE_S
    splits: dict[str, NodeSplit] = field(default_factory=dict)
    switched: dict[str, int] = field(default_factory=dict)
    _live: dict[str, dict[str, _Live]] = field(default_factory=dict)

    def set_split(self, tenant: str, split: NodeSplit | None) -> None:
        if split is None:
            self.splits.pop(tenant, None)
        else:
            self.splits[tenant] = split

    def note(self, tenant: str, session_id: str, pin: SessionPin, now: float) -> None:
        refs = frozenset(f"{n}@{v}" for n, v in pin.versions.items())
        self._live.setdefault(tenant, {})[session_id] = _Live(pin.rollout_id, pin.arm, refs, now)

    def count_switch(self, tenant: str) -> None:
        self.switched[tenant] = self.switched.get(tenant, 0) + 1

    def _prune(self, now: float) -> None:
        for sessions in self._live.values():
            for sid in [s for s, live in sessions.items() if now - live.seen > self.idle_s]:
                del sessions[sid]

    def live_refs(self, now: float) -> set[str]:
        """Versions some live pinned session still uses (kept loaded)."""
        self._prune(now)
        return {
            r for sessions in self._live.values() for live in sessions.values() for r in live.refs
        }

    def sessions_per_arm(self, tenant: str, rollout_id: str, now: float) -> dict[str, int]:
        """Live sessions of ``rollout_id`` per arm on this node."""
        self._prune(now)
        out = {"canary": 0, "baseline": 0}
        for live in self._live.get(tenant, {}).values():
            if live.rollout_id == rollout_id and live.arm in out:
                out[live.arm] += 1
        return out

    def forget_tenant(self, tenant: str) -> None:
        self.splits.pop(tenant, None)
        self._live.pop(tenant, None)
