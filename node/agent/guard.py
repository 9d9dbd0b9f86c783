"""Pure core of the node-local guard: a version this node just applied that then fails its
turns is reverted to the last-known-good by the node itself, with or without its control plane.

When the agent applies a desired document whose versions differ from the one it served (a model
version in any slot, or the config version), it opens a :class:`Probation` that remembers the
previous document. Every request of that tenant is counted (:func:`count`); a request fails when
the node answered it with an internal error or its model failed at inference (:func:`is_failure`;
shedding, rate limits and bad input are not the version's fault). :func:`decide` says, after each
count, whether to keep watching, end the probation (the window passed without enough failures)
or **revert**: at least ``min_turns`` requests in the window and a failed share of at least
``max_error_share``. A revert holds the failing version (:func:`held`): the agent's planner skips
a desired document naming it until the desired state names a different one.

:class:`GuardState` is what the agent persists in ``<data-dir>/agent/guard.json`` so a restart
keeps the hold, an open probation and the reverts not yet seen by the control plane. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kefu.wire import DesiredTenant, GuardRevert

__all__ = [
    "FAILURE_CAUSES",
    "FAILURE_CODES",
    "GuardPolicy",
    "GuardState",
    "Probation",
    "Verdict",
    "changes",
    "count",
    "decide",
    "held",
    "is_failure",
    "open_probation",
    "release_holds",
    "revert_record",
    "version_key",
    "with_revert",
]

#: gRPC status names that count as a failed turn (the node could not answer).
FAILURE_CODES = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS"})
#: Error types that count as a failed turn although their status is UNAVAILABLE: the model
#: raised at inference (an overloaded node also answers UNAVAILABLE, but that is not the version's
#: fault and does not count).
FAILURE_CAUSES = frozenset({"InferenceFailed"})

#: Reverts kept in the state and the node status (newest last).
MAX_REVERTS = 20


@dataclass(frozen=True, kw_only=True)
class GuardPolicy:
    """The knobs (node.yaml ``guard:``)."""

    enabled: bool = True
    #: How long after an apply its requests are watched.
    probation_s: float = 600.0
    #: Requests in the window before any verdict (a few unlucky turns never revert).
    min_turns: int = 20
    #: Failed share of those requests at which the node reverts.
    max_error_share: float = 0.5


class Probation(BaseModel):
    """A tenant whose new version is being watched."""

    model_config = ConfigDict(extra="ignore")

    tenant: str
    #: :func:`version_key` of the applied (watched) document, and its fingerprint.
    key: str
    fingerprint: str
    started_at: float
    #: The document served before: what a revert goes back to.
    previous: DesiredTenant
    #: slot → (previous, new) of what changed.
    changed: dict[str, tuple[str, str]] = Field(default_factory=dict)
    turns: int = 0
    errors: int = 0


class GuardState(BaseModel):
    """Everything the guard persists."""

    model_config = ConfigDict(extra="ignore")

    probations: dict[str, Probation] = Field(default_factory=dict)
    #: tenant → :func:`version_key` the node will not apply again.
    holds: dict[str, str] = Field(default_factory=dict)
    reverts: list[GuardRevert] = Field(default_factory=list)


Verdict = Literal["watch", "passed", "revert"]


def _versions(doc: DesiredTenant) -> dict[str, str]:
    out = {slot: b.ref for slot, b in doc.models.items()}
    for scenario, pins in doc.scenario_models.items():
        out |= {f"{scenario}/{slot}": b.ref for slot, b in pins.items()}
    out["config"] = f"config v{doc.config_version}"
    return out


def version_key(doc: DesiredTenant) -> str:
    """What a guard decision names: every assigned version and the config version (a rollout
    split or an API key change leaves it unchanged)."""
    return ";".join(f"{k}={v}" for k, v in sorted(_versions(doc).items()))


def changes(previous: DesiredTenant, new: DesiredTenant) -> dict[str, tuple[str, str]]:
    """slot → (previous, new) for every version that differs (``-`` = absent)."""
    old, cur = _versions(previous), _versions(new)
    return {
        k: (old.get(k, "-"), cur.get(k, "-"))
        for k in sorted(old.keys() | cur.keys())
        if old.get(k) != cur.get(k)
    }


def open_probation(
    previous: DesiredTenant | None, new: DesiredTenant, now: float
) -> Probation | None:
    """The probation an apply of ``new`` over ``previous`` opens: none for a first apply (no
    last-known-good to go back to) or when no version changed."""
    if previous is None or previous.tenant != new.tenant:
        return None
    changed = changes(previous, new)
    if not changed:
        return None
    return Probation(
        tenant=new.tenant,
        key=version_key(new),
        fingerprint=new.fingerprint(),
        started_at=now,
        previous=previous,
        changed=changed,
    )


def is_failure(code: str, cause: str = "") -> bool:
    """Whether a failed request counts against the version that served it."""
    return code in FAILURE_CODES or cause in FAILURE_CAUSES


def count(p: Probation, *, failed: bool) -> Probation:
    return p.model_copy(update={"turns": p.turns + 1, "errors": p.errors + int(failed)})


def decide(p: Probation, now: float, policy: GuardPolicy) -> Verdict:
    if not policy.enabled:
        return "passed"
    if now - p.started_at > policy.probation_s:
        return "passed"
    if p.turns >= policy.min_turns and p.errors >= policy.max_error_share * p.turns:
        return "revert"
    return "watch"


def revert_record(p: Probation, *, node_id: str, now: float) -> GuardRevert:
    """The report of a revert (its id is stable: node, tenant and the second it happened)."""
    slots = list(p.changed)
    return GuardRevert(
        id=f"guard-{node_id}-{p.tenant}-{int(now * 1000)}",
        tenant=p.tenant,
        slot=",".join(slots),
        bad_version=", ".join(p.changed[s][1] for s in slots),
        reverted_to=", ".join(p.changed[s][0] for s in slots),
        turns=p.turns,
        errors=p.errors,
        applied_at=p.started_at,
        at=now,
        bad_fingerprint=p.fingerprint,
    )


def held(holds: Mapping[str, str], doc: DesiredTenant) -> bool:
    """Whether ``doc`` names a version the guard reverted (the planner skips it)."""
    return holds.get(doc.tenant) == version_key(doc)


def release_holds(holds: Mapping[str, str], desired: Mapping[str, DesiredTenant]) -> dict[str, str]:
    """The holds still needed: one ends when the desired state names different versions (or
    drops the tenant); while it names the reverted ones, the hold stays."""
    return {t: key for t, key in holds.items() if t in desired and version_key(desired[t]) == key}


def with_revert(state: GuardState, record: GuardRevert, key: str) -> GuardState:
    """``state`` after a revert: the probation closed, the version held, the record kept."""
    probations = {t: p for t, p in state.probations.items() if t != record.tenant}
    reverts = [*state.reverts, record][-MAX_REVERTS:]
    return GuardState(
        probations=probations, holds={**state.holds, record.tenant: key}, reverts=reverts
    )
