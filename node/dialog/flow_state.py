"""What a task flow keeps and exchanges per turn: the active flow with its filled slots and
pending question, the flows suspended by a topic switch (:class:`FlowState`, stored in the
session slot :data:`FLOW_SLOT`), what the NLU found in a turn (:class:`FlowTurn`) and what
the engine decided (:class:`FlowOutcome`).

The engine that moves between them is :class:`kefu.node.dialog.flow.FlowEngine`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kefu.node.dialog.plugin_api import PluginCall
from kefu.node.nlu.entities import Entity

__all__ = ["FLOW_SLOT", "MAX_SUSPENDED", "ActiveFlow", "FlowOutcome", "FlowState", "FlowTurn"]

#: Session slot holding the :class:`FlowState`.
FLOW_SLOT = "_flow"
#: Flows kept suspended under a topic switch; older ones are dropped.
MAX_SUSPENDED = 3


@dataclass(frozen=True, kw_only=True)
class ActiveFlow:
    flow: str
    values: dict[str, str] = field(default_factory=dict)
    awaiting: str | None = None  # a slot name, or the engine's confirmation marker
    reprompts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "values": dict(self.values),
            "awaiting": self.awaiting,
            "reprompts": self.reprompts,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ActiveFlow | None:
        if not isinstance(d, Mapping) or not isinstance(d.get("flow"), str):
            return None
        values = d.get("values")
        awaiting = d.get("awaiting")
        reprompts = d.get("reprompts")
        return cls(
            flow=d["flow"],
            values={str(k): str(v) for k, v in values.items()} if isinstance(values, dict) else {},
            awaiting=awaiting if isinstance(awaiting, str) else None,
            reprompts=reprompts if isinstance(reprompts, int) else 0,
        )


@dataclass(frozen=True, kw_only=True)
class FlowState:
    """The active flow and the ones suspended by a topic switch (most recent last)."""

    active: ActiveFlow | None = None
    suspended: tuple[ActiveFlow, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active.to_dict() if self.active else None,
            "suspended": [a.to_dict() for a in self.suspended],
        }

    @classmethod
    def from_dict(cls, data: Any) -> FlowState:
        """Lenient: a damaged slot gives an empty state rather than a broken conversation."""
        if not isinstance(data, Mapping):
            return cls()
        active = ActiveFlow.from_dict(data.get("active") or {})
        raw = data.get("suspended")
        suspended = tuple(
            a
            for a in (ActiveFlow.from_dict(x) for x in (raw if isinstance(raw, list) else []))
            if a is not None
        )
        return cls(active=active, suspended=suspended[-MAX_SUSPENDED:])


@dataclass(frozen=True, kw_only=True)
class FlowTurn:
    text: str
    lang: str
    intent: str | None
    confidence: float
    entities: Sequence[Entity] = ()
    kb_usable: bool = False  # the knowledge base has a confident in-scope answer
    scenario: str | None = None  # the scenario the turn was routed to (None: any)


@dataclass(frozen=True, kw_only=True)
class FlowOutcome:
    state: FlowState
    text: str | None = None  # None: the normal reply path answers
    resume: str | None = None  # appended to the normal reply: the open flow's question
    remember: dict[str, str | None] = field(default_factory=dict)  # None: forget it
    calls: tuple[PluginCall, ...] = ()
    plugin_failed: bool = False
    handoff: bool = False
    consumed: bool = False  # the text was a mechanical answer (slot value, yes/no, cancel)
    flow: str | None = None  # the flow that acted this turn
    event: str = ""  # started, asked, confirmed, done, rejected, failed, cancelled, ... (logs)

    @property
    def handled(self) -> bool:
        return self.text is not None
