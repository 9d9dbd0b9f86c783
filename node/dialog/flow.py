"""The flow engine: multi-turn task execution (slot filling, validation, confirmation, action).

Pure: no I/O of its own. :meth:`FlowEngine.step` takes the session's :class:`FlowState`, what
the NLU found in this turn (:class:`FlowTurn`) and the session's remembered values, calls
plugins through the injected ``call`` function, and returns a :class:`FlowOutcome`: the reply
(or None when the normal reply path should answer), the next state, values to remember or
forget, the plugin calls made and whether to hand off.

Per turn, in order:

1. **Cancel** ("算了", "never mind") ends the active flow; a suspended one resumes.
2. **Confirmation** pending: yes → the action; no → nothing changes; anything else may be a
   topic switch, else the question is asked again.
3. **Awaiting a slot**: a value from this turn (an entity of the slot's type, or the whole
   text for ``text`` slots) fills it, after validation (a ``check`` plugin answering "not
   found" → say so, forget it, ask again).
4. **Topic switch**: a confident intent that starts another flow suspends this one (resumed
   when the other ends); a confident question outside the flows is answered by the normal
   path with a reminder of the open flow appended (``resume``).
5. **Start**: a confident intent starting a flow. Slots are pre-filled from this turn's
   entities and from session memory (an order number given once is not asked again).

Short answers ("是的", "2024112512345678") are classified unreliably by the intent and
sentiment models; :attr:`FlowOutcome.consumed` tells the caller the turn was such an answer,
so it counts neither as low confidence nor as negative sentiment.

The records (:class:`FlowState`, :class:`FlowTurn`, :class:`FlowOutcome`) are in
:mod:`kefu.node.dialog.flow_state` and re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from kefu.config import Template, TenantConfig
from kefu.config.flows import FlowSpec, SlotSpec
from kefu.node.dialog.flow_state import (
    FLOW_SLOT,
    MAX_SUSPENDED,
    ActiveFlow,
    FlowOutcome,
    FlowState,
    FlowTurn,
)
from kefu.node.dialog.flow_words import ASKS, REQUEST, TEXT, fold, is_cancel, yes_or_no
from kefu.node.dialog.plugin_api import PluginCall, PluginOutcome, PluginResult

__all__ = [
    "FLOW_SLOT",
    "SWITCH_CONFIDENCE",
    "FlowEngine",
    "FlowOutcome",
    "FlowState",
    "FlowTurn",
    "PluginCaller",
    "is_cancel",
    "yes_or_no",
]

#: Intent confidence needed to leave the open flow for another topic (higher than the one to
#: start a flow: answers inside a flow are short, and short texts get confident nonsense).
SWITCH_CONFIDENCE = 0.8
START_CONFIDENCE = 0.6
MAX_REPROMPTS = 2
_CONFIRM = "__confirm__"
_JUNK_INTENTS = frozenset({"greeting", "goodbye", "out_of_scope"})
# Words around a bare entity that do not make it a request of its own.
_FILLER = re.compile(
    r"[\s\W_]+|订单号?|单号|编号|号码|是|查|一下|帮我|请|您好|你好|order|number|no|my|is|the|please|hi"
)

PluginCaller = Callable[[str, Mapping[str, str], str], Awaitable[tuple[PluginResult, PluginCall]]]


# --------------------------------------------------------------------- the engine


class FlowEngine:
    """The flows of one tenant."""

    def __init__(self, config: TenantConfig, call: PluginCaller):
        self.config = config
        self.call = call
        self.flows = {f.id: f for f in config.flows}
        self.by_intent = {i: f for f in config.flows for i in f.intents}
        self.entity_types = set(config.entities.types)

    # ------------------------------------------------------------------ helpers

    def _words(self, lang: str, key: str, **kw: object) -> str:
        return TEXT["en" if lang == "en" else "zh"][key].format(**kw)

    def _template(self, tid: str | None, lang: str, values: Mapping[str, str]) -> str | None:
        if tid is None:
            return None
        tpl: Template | None = self.config.templates.get(tid)
        if tpl is None:
            return None
        try:
            return tpl.render(lang, values)
        except (KeyError, IndexError, ValueError):
            return None

    def _name(self, flow: FlowSpec, lang: str) -> str:
        return flow.names.get(lang)

    def _value_from(self, slot: SlotSpec, turn: FlowTurn, *, awaited: bool) -> str | None:
        """The slot's value in this turn's words, if any."""
        if slot.type in self.entity_types:
            for e in turn.entities:
                if e.type == slot.type:
                    norm = e.normalized
                    return norm if isinstance(norm, str) and norm else e.value
            return None
        if not awaited:
            return None  # free text only answers the question we asked
        if slot.type == "choice":
            folded = fold(turn.text)
            for key, words in slot.choices.items():
                if any(fold(w) in folded for w in (*words, key)):
                    return key
            return None
        return turn.text.strip()

    def _text_ok(self, slot: SlotSpec, value: str) -> bool:
        return slot.type != "text" or slot.min_length <= len(value) <= slot.max_length

    def _switch_target(self, turn: FlowTurn, current: FlowSpec | None) -> FlowSpec | None:
        flow = self._serving(self.by_intent.get(turn.intent or ""), turn)
        if flow is None or turn.confidence < SWITCH_CONFIDENCE:
            return None
        if current is not None and flow.id == current.id:
            return None
        return flow

    # ------------------------------------------------------------------ step

    async def step(
        self, state: FlowState, turn: FlowTurn, memory: Mapping[str, object]
    ) -> FlowOutcome:
        active = state.active
        flow = self.flows.get(active.flow) if active else None
        if active is None or flow is None:
            return await self._maybe_start(replace(state, active=None), turn, memory)
        if is_cancel(turn.text):
            text = self._words(turn.lang, "cancelled", name=self._name(flow, turn.lang))
            return await self._after(
                state, turn, memory, text, event="cancelled", flow=flow.id, consumed=True
            )
        if active.awaiting == _CONFIRM:
            answer = yes_or_no(turn.text)
            if answer is True:
                return await self._act(state, flow, active, turn, memory)
            if answer is False:
                text = self._template(flow.declined, turn.lang, active.values) or self._words(
                    turn.lang, "declined", name=self._name(flow, turn.lang)
                )
                return await self._after(
                    state, turn, memory, text, event="declined", flow=flow.id, consumed=True
                )
            return await self._off_script(state, flow, active, turn, memory)
        slot = next((s for s in flow.slots if s.name == active.awaiting), None)
        if slot is not None:
            # Free text answers the question unless it is itself a confident question or
            # request about something else ("wrong size" is a return reason, not a new task).
            value = self._value_from(slot, turn, awaited=True)
            leaves = (
                slot.type not in self.entity_types
                and bool(ASKS.search(turn.text))
                and turn.confidence >= SWITCH_CONFIDENCE
                and turn.intent not in flow.intents
            )
            if value is not None and not leaves:
                values = {**active.values}
                remember: dict[str, str | None] = {}
                return await self._fill(
                    state,
                    flow,
                    replace(active, values=values),
                    slot,
                    value,
                    turn,
                    memory,
                    remember,
                )
        return await self._off_script(state, flow, active, turn, memory)

    async def _off_script(
        self,
        state: FlowState,
        flow: FlowSpec,
        active: ActiveFlow,
        turn: FlowTurn,
        memory: Mapping[str, object],
    ) -> FlowOutcome:
        """The turn does not answer the open question: switch topic, pass through, or re-ask."""
        target = self._switch_target(turn, flow)
        if target is not None:
            suspended = (*state.suspended, active)[-MAX_SUSPENDED:]
            return await self._start(
                FlowState(active=None, suspended=suspended), target, turn, memory
            )
        confident = turn.confidence >= SWITCH_CONFIDENCE and turn.intent not in _JUNK_INTENTS
        if confident and turn.intent not in flow.intents and yes_or_no(turn.text) is None:
            # A question outside the flow: the normal path answers, the flow waits.
            question = self._question(flow, active, turn.lang)
            aside = self._words(turn.lang, "aside", name=self._name(flow, turn.lang)) + question
            return FlowOutcome(state=state, resume=aside, flow=flow.id, event="aside")
        if active.reprompts + 1 > MAX_REPROMPTS:
            text = self._words(turn.lang, "give_up", name=self._name(flow, turn.lang))
            return await self._after(state, turn, memory, text, event="gave_up", flow=flow.id)
        question = self._question(flow, active, turn.lang)
        if active.awaiting == _CONFIRM:
            question = _join(question, self._words(turn.lang, "confirm_hint"), turn.lang)
        nxt = replace(active, reprompts=active.reprompts + 1)
        return FlowOutcome(
            state=replace(state, active=nxt),
            text=question,
            flow=flow.id,
            event="reasked",
            consumed=True,
        )

    def _question(self, flow: FlowSpec, active: ActiveFlow, lang: str) -> str:
        if active.awaiting == _CONFIRM:
            return self._template(flow.confirm, lang, active.values) or ""
        slot = next((s for s in flow.slots if s.name == active.awaiting), None)
        if slot is None:
            return ""
        return self._template(slot.prompt, lang, active.values) or ""

    async def _maybe_start(
        self, state: FlowState, turn: FlowTurn, memory: Mapping[str, object]
    ) -> FlowOutcome:
        flow = self._serving(self.by_intent.get(turn.intent or ""), turn)
        if flow is None or turn.confidence < START_CONFIDENCE:
            bare = self._bare_entity_flow(turn)
            if bare is None:
                return FlowOutcome(state=state)
            return replace(await self._start(state, bare, turn, memory), consumed=True)
        if flow.kb_first and turn.kb_usable and not REQUEST.search(turn.text):
            gives = any(self._value_from(s, turn, awaited=False) is not None for s in flow.slots)
            if not gives:
                return FlowOutcome(state=state)  # a how-to question: the KB answers it
        return await self._start(state, flow, turn, memory)

    @staticmethod
    def _serving(flow: FlowSpec | None, turn: FlowTurn) -> FlowSpec | None:
        """``flow`` if it serves the turn's scenario."""
        if flow is None or not flow.scenarios or turn.scenario is None:
            return flow
        return flow if turn.scenario in flow.scenarios else None

    def _bare_entity_flow(self, turn: FlowTurn) -> FlowSpec | None:
        """The flow an entity alone starts ("2024112512345678" → order lookup), if the text is
        little more than that entity."""
        for flow in self.flows.values():
            if flow.entity_trigger is None:
                continue
            for e in turn.entities:
                if e.type == flow.entity_trigger:
                    rest = turn.text[: e.start] + turn.text[e.end :]
                    rest = _FILLER.sub("", fold(rest))
                    if len(rest) <= 4:
                        return flow
        return None

    async def _start(
        self, state: FlowState, flow: FlowSpec, turn: FlowTurn, memory: Mapping[str, object]
    ) -> FlowOutcome:
        active = ActiveFlow(flow=flow.id)
        return await self._advance(state, flow, active, turn, memory, {}, (), prefix="")

    async def _fill(
        self,
        state: FlowState,
        flow: FlowSpec,
        active: ActiveFlow,
        slot: SlotSpec,
        value: str,
        turn: FlowTurn,
        memory: Mapping[str, object],
        remember: dict[str, str | None],
        calls: tuple[PluginCall, ...] = (),
        prefix: str = "",
    ) -> FlowOutcome:
        """Validate ``value`` for ``slot``; on success keep going, else ask again."""
        if not self._text_ok(slot, value):
            text = self._words(turn.lang, "invalid_text", min=slot.min_length, max=slot.max_length)
            question = self._template(slot.prompt, turn.lang, active.values) or ""
            nxt = replace(active, awaiting=slot.name)
            return FlowOutcome(
                state=replace(state, active=nxt),
                text=f"{text} {question}".strip(),
                flow=flow.id,
                event="invalid",
                consumed=True,
                calls=calls,
            )
        values = {**active.values, slot.name: value}
        if slot.check is not None:
            result, call = await self.call(slot.check, values, turn.lang)
            calls = (*calls, call)
            if result.outcome is PluginOutcome.NOT_FOUND:
                if slot.remember and slot.type in self.entity_types:
                    remember[slot.name] = None
                own = self._template(slot.invalid, turn.lang, {slot.name: value})
                text = own or self._words(turn.lang, "invalid", value=value)
                question = self._template(slot.prompt, turn.lang, active.values) or ""
                nxt = replace(active, values=dict(active.values), awaiting=slot.name)
                return FlowOutcome(
                    state=replace(state, active=nxt),
                    text=_join(text, question, turn.lang),
                    remember=remember,
                    calls=calls,
                    flow=flow.id,
                    event="invalid",
                    consumed=True,
                )
            if result.outcome is not PluginOutcome.OK:
                return await self._failed(state, flow, turn, memory, calls, remember)
            values.update(result.values)
        if slot.remember and slot.type in self.entity_types:
            remember[slot.name] = value
        nxt = replace(active, values=values, awaiting=None, reprompts=0)
        return await self._advance(state, flow, nxt, turn, memory, remember, calls, prefix=prefix)

    async def _advance(
        self,
        state: FlowState,
        flow: FlowSpec,
        active: ActiveFlow,
        turn: FlowTurn,
        memory: Mapping[str, object],
        remember: dict[str, str | None],
        calls: tuple[PluginCall, ...],
        *,
        prefix: str,
    ) -> FlowOutcome:
        """Fill what can be filled without asking; ask for the first missing slot, or confirm,
        or act."""
        for slot in flow.slots:
            if slot.name in active.values:
                continue
            value = self._value_from(slot, turn, awaited=False)
            if value is None and slot.remember:
                known = memory.get(slot.name)
                value = str(known) if isinstance(known, str | int) and str(known) else None
            if value is not None:
                return await self._fill(
                    state, flow, active, slot, value, turn, memory, remember, calls, prefix
                )
            question = self._template(slot.prompt, turn.lang, active.values) or ""
            nxt = replace(active, awaiting=slot.name)
            return FlowOutcome(
                state=replace(state, active=nxt),
                text=_join(prefix, question, turn.lang),
                remember=remember,
                calls=calls,
                flow=flow.id,
                event="asked",
                consumed=bool(active.values),
            )
        if flow.confirm is not None:
            question = self._template(flow.confirm, turn.lang, active.values) or ""
            nxt = replace(active, awaiting=_CONFIRM)
            return FlowOutcome(
                state=replace(state, active=nxt),
                text=_join(prefix, question, turn.lang),
                remember=remember,
                calls=calls,
                flow=flow.id,
                event="confirm",
                consumed=bool(active.values),
            )
        return await self._act(state, flow, active, turn, memory, remember, calls, prefix=prefix)

    async def _act(
        self,
        state: FlowState,
        flow: FlowSpec,
        active: ActiveFlow,
        turn: FlowTurn,
        memory: Mapping[str, object],
        remember: dict[str, str | None] | None = None,
        calls: tuple[PluginCall, ...] = (),
        *,
        prefix: str = "",
    ) -> FlowOutcome:
        remember = remember if remember is not None else {}
        result, call = await self.call(flow.action, active.values, turn.lang)
        calls = (*calls, call)
        values = {**active.values, **result.values}
        if result.outcome is PluginOutcome.OK:
            text = self._template(flow.success, turn.lang, values) or ""
            if flow.then == "handoff":
                text = _join(text, self._words(turn.lang, "handoff"), turn.lang)
            return await self._after(
                state,
                turn,
                memory,
                _join(prefix, text, turn.lang),
                event="done",
                flow=flow.id,
                remember=remember,
                calls=calls,
                consumed=True,
                handoff=flow.then == "handoff",
            )
        if result.outcome in (PluginOutcome.REJECTED, PluginOutcome.NOT_FOUND):
            tid = flow.rejected.get(result.code) or flow.rejected.get("*")
            text = self._template(tid, turn.lang, values) or self._words(
                turn.lang, "rejected", name=self._name(flow, turn.lang), code=result.code
            )
            return await self._after(
                state,
                turn,
                memory,
                _join(prefix, text, turn.lang),
                event="rejected",
                flow=flow.id,
                remember=remember,
                calls=calls,
                consumed=True,
            )
        return await self._failed(state, flow, turn, memory, calls, remember)

    async def _failed(
        self,
        state: FlowState,
        flow: FlowSpec,
        turn: FlowTurn,
        memory: Mapping[str, object],
        calls: tuple[PluginCall, ...],
        remember: dict[str, str | None],
    ) -> FlowOutcome:
        text = self._template(flow.failure, turn.lang, {}) or self._words(
            turn.lang, "failure", name=self._name(flow, turn.lang)
        )
        out = FlowOutcome(
            state=FlowState(active=None, suspended=state.suspended),
            text=text,
            remember=remember,
            calls=calls,
            plugin_failed=True,
            flow=flow.id,
            event="failed",
            consumed=True,
        )
        return out

    async def _after(
        self,
        state: FlowState,
        turn: FlowTurn,
        memory: Mapping[str, object],
        text: str,
        *,
        event: str,
        flow: str,
        remember: dict[str, str | None] | None = None,
        calls: tuple[PluginCall, ...] = (),
        consumed: bool = False,
        handoff: bool = False,
    ) -> FlowOutcome:
        """The active flow is over: resume the most recently suspended one, if any."""
        remember = remember if remember is not None else {}
        if not state.suspended or handoff:
            return FlowOutcome(
                state=FlowState(active=None, suspended=() if handoff else state.suspended),
                text=text,
                remember=remember,
                calls=calls,
                flow=flow,
                event=event,
                consumed=consumed,
                handoff=handoff,
            )
        resumed, rest = state.suspended[-1], state.suspended[:-1]
        spec = self.flows.get(resumed.flow)
        if spec is None:
            return FlowOutcome(
                state=FlowState(suspended=rest),
                text=text,
                remember=remember,
                calls=calls,
                flow=flow,
                event=event,
                consumed=consumed,
            )
        merged = {**memory, **{k: v for k, v in remember.items() if v is not None}}
        for k, v in remember.items():
            if v is None:
                merged.pop(k, None)
        quiet = FlowTurn(text="", lang=turn.lang, intent=None, confidence=0.0)
        lead = _join(
            text, self._words(turn.lang, "resume", name=spec.names.get(turn.lang)), turn.lang
        )
        nxt = await self._advance(
            FlowState(suspended=rest),
            spec,
            replace(resumed, awaiting=None, reprompts=0),
            quiet,
            merged,
            remember,
            calls,
            prefix=lead,
        )
        return replace(nxt, event=f"{event}+resumed", consumed=consumed)


def _join(first: str, second: str, lang: str) -> str:
    first, second = first.strip(), second.strip()
    if not first or not second:
        return first or second
    if lang == "en" or first[-1] in ":：":
        return f"{first} {second}" if lang == "en" else f"{first}{second}"
    return f"{first}{second}"
