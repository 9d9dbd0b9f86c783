"""Glue between one conversation turn and the task machinery: flows, plugins, hand-off.

:class:`~kefu.node.dialog.conversation.ConversationService` calls these few functions at
fixed points of a turn, so the flow engine (:mod:`kefu.node.dialog.flow`), the plugins and
the hand-off rules stay out of the turn pipeline itself:

* :func:`flow_step` — after NLU, scenario and KB: one step of the tenant's flow engine;
* :func:`with_flow` — after the reply decision: the flow's hand-off, ``max_turns``, and the
  reminder of an open flow;
* :func:`flow_slot_writes` — the slot writes of the turn (flow state, remembered values, the
  plugin-call log), committed with the turn in one transaction;
* :func:`human_owned_turn` — instead of the pipeline while a person owns the session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kefu.node.dialog.flow import FLOW_SLOT, FlowOutcome, FlowState, FlowTurn
from kefu.node.dialog.knowledge import KBAnswer
from kefu.node.dialog.reply import HandoffReason, ReplyDecision
from kefu.node.dialog.tenant import Tenant
from kefu.node.nlu.entities import Entity
from kefu.node.nlu.language import detect_language
from kefu.node.sessions.store import (
    HandoffStatus,
    NewTurn,
    Session,
    SessionStore,
    Turn,
    TurnRole,
    utc_now,
)

__all__ = [
    "MAX_RECORDED_CALLS",
    "PLUGIN_CALLS_SLOT",
    "HumanTurn",
    "flow_slot_writes",
    "flow_step",
    "human_owned_turn",
    "is_vip",
    "plugin_call_log",
    "turn_preview",
    "with_flow",
]

#: Session slot with the last plugin calls (plugin, time, outcome, code, latency, attempts).
PLUGIN_CALLS_SLOT = "_plugin_calls"
MAX_RECORDED_CALLS = 50

_HOLD = {
    "zh": "已为您转接人工客服，正在排队，请稍候，人工客服接入后会马上回复您。",
    "en": "You're in the queue for a human agent; they'll reply here as soon as they join.",
}


def is_vip(attributes: Mapping[str, Any]) -> bool:
    """The session's ``vip`` attribute (set by the channel from its verified membership)."""
    v = attributes.get("vip")
    return v is True or (isinstance(v, str) and v.strip().lower() in ("true", "1", "yes"))


async def flow_step(
    tenant: Tenant,
    slots: Mapping[str, Any],
    values: Mapping[str, Any],
    *,
    lang: str,
    text: str,
    intent: str,
    confidence: float,
    entities: Sequence[Entity],
    kb: object,
    kb_threshold: float,
    scenario: str | None = None,
) -> FlowOutcome:
    """One step of the tenant's flow engine (a no-op outcome when it has no flows)."""
    state = FlowState.from_dict(slots[FLOW_SLOT].value if FLOW_SLOT in slots else None)
    if tenant.flows is None:
        return FlowOutcome(state=state)
    turn = FlowTurn(
        text=text,
        lang=lang if lang in ("zh", "en") else tenant.config.languages.default,
        intent=intent,
        confidence=confidence,
        entities=entities,
        kb_usable=isinstance(kb, KBAnswer) and kb.confidence >= kb_threshold,
        scenario=scenario,
    )
    return await tenant.flows.step(state, turn, values)


def with_flow(
    decision: ReplyDecision, flow: FlowOutcome, session: Session, max_turns: int
) -> ReplyDecision:
    """The reply decision with the flow's hand-off, the business line's turn limit and the
    reminder of an open flow."""
    reason: HandoffReason | None = decision.handoff_reason
    handoff = decision.handoff
    if not handoff and flow.handoff:
        handoff, reason = True, "flow_handoff"
    if not handoff and session.turn_count >= 2 * max_turns:
        handoff, reason = True, "max_turns"
    text = decision.text
    if flow.resume and not handoff:
        text = f"{text} {flow.resume}" if decision.lang == "en" else f"{text}{flow.resume}"
    return replace(decision, text=text, handoff=handoff, handoff_reason=reason)


def plugin_call_log(slots: Mapping[str, Any], flow: FlowOutcome) -> list[dict[str, Any]]:
    """The session's plugin-call log with this turn's calls (the last 50)."""
    old = slots[PLUGIN_CALLS_SLOT].value if PLUGIN_CALLS_SLOT in slots else []
    old = old if isinstance(old, list) else []
    return [*old, *(c.to_dict() for c in flow.calls)][-MAX_RECORDED_CALLS:]


def flow_slot_writes(
    slots: Mapping[str, Any], flow: FlowOutcome, *, handed_off: bool
) -> dict[str, Any]:
    """The slot writes of this turn's flow: flow state, remembered / forgotten values (None)
    and the plugin-call log. Apply them after the turn's entity memory: a forgotten value
    also undoes that."""
    writes: dict[str, Any] = {}
    state = FlowState() if handed_off else flow.state  # a returned session starts afresh
    data = state.to_dict()
    old = slots[FLOW_SLOT].value if FLOW_SLOT in slots else None
    if data != old and not (old is None and state == FlowState()):
        writes[FLOW_SLOT] = data
    for key, value in flow.remember.items():
        known = slots[key].value if key in slots else None
        if value is None or known != value:
            writes[key] = value
    if flow.calls:
        writes[PLUGIN_CALLS_SLOT] = plugin_call_log(slots, flow)
    return writes


def turn_preview(session_id: str, text: str, role: TurnRole = TurnRole.BOT) -> Turn:
    """A turn for a hand-off summary written before the turn itself is stored."""
    return Turn(session_id=session_id, role=role, text=text, seq=0, created_at=utc_now())


@dataclass(frozen=True, kw_only=True)
class HumanTurn:
    seq: int
    reply: str  # empty: an agent holds the session and the bot stays silent
    lang: str
    handoff_id: str


async def human_owned_turn(
    store: SessionStore, session: Session, text: str, *, request_id: str | None
) -> HumanTurn:
    """A customer turn while the session is handed off: stored for the agent; "please hold"
    while the hand-off waits, silence once an agent has claimed it."""
    was = session.language
    detected = detect_language(text, prior="zh" if was == "zh" else "en" if was == "en" else None)
    lang = detected.lang if detected.lang != "und" else (was or "zh")
    customer = await store.append_turn(
        NewTurn(
            session_id=session.id,
            role=TurnRole.CUSTOMER,
            text=text,
            language=lang,
            scenario=session.scenario,
            request_id=request_id,
        )
    )
    page = await store.list_handoffs(session_id=session.id, limit=50)
    active = [h for h in page.items if h.status is not HandoffStatus.CLOSED]
    claimed = bool(active) and active[-1].status is HandoffStatus.CLAIMED
    reply = "" if claimed else _HOLD["en" if lang == "en" else "zh"]
    if reply:
        await store.append_turn(
            NewTurn(
                session_id=session.id,
                role=TurnRole.BOT,
                text=reply,
                language=lang,
                scenario=session.scenario,
                request_id=request_id,
            )
        )
    return HumanTurn(
        seq=customer.seq, reply=reply, lang=lang, handoff_id=active[-1].id if active else ""
    )
