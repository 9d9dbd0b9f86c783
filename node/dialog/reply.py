"""The per-turn reply decision: hand off, answer from the KB, fill a template, or clarify.

:func:`decide_reply` is pure: it takes what the NLU components and the knowledge base found
for one customer turn, the scenario chosen by :func:`kefu.node.dialog.scenario.select_scenario`, a
:class:`TurnHistory` summary of the session so far and the tenant config, and returns a
:class:`ReplyDecision` (the text to send, where it came from, and whether to hand over to a
human). It never invents an answer: when nothing fits it asks or offers a person.

Order of precedence
    1. **Hand-off conditions** of the scenario's session policy, first that holds wins:
       explicit request (a confident ``human_agent`` intent, a phrase such as "转人工" or
       "agent", or a "yes" to a human offered on the previous turn) → complaint (a confident
       ``complaint`` intent) → negative sentiment for N consecutive turns → low confidence for
       N consecutive turns → VIP customer → plugin failure. An explicit request always
       transfers. For the others the policy's ``offer_human`` decides: ``False`` transfers at
       once; ``True`` asks first: the reply below is kept and an offer of a human is added
       (for low confidence the clarifying question is *replaced* by the offer, since asking
       again is what failed). ``handoff_reason`` names the condition either way.
    2. **Personal template**: the scenario's template for a confident intent whose
       placeholders are all filled by this turn's entities and the caller's ``values``
       (plugin results, session slots), at least one of them: "订单 SO-88231 当前状态：已发货"
       is worth more than a generic FAQ answer.
    3. **Knowledge base**: a :class:`~kefu.node.dialog.knowledge.KBAnswer` whose entry is in the
       scenario's KB scopes, with confidence at or above the policy's
       ``kb_confidence_threshold``, re-read in the customer's language.
    4. **Intent template** for a confident intent: rendered when nothing is missing; an
       optional aside in parentheses whose fields are missing is dropped ("（工单号 {ticket_id}）").
       Otherwise a placeholder never leaks to the customer: when no lookup key
       (:data:`LOOKUP_KEYS`: order or tracking number) is known, the customer is asked for one
       (the tenant's ``ask_<key>`` template, else a built-in question) and the next turn that
       gives it resumes the intent (:attr:`TurnHistory.pending_intent`); missing back-end data
       (``status``, ``eta``) gives a safe "cannot look this up now" wording with an offer of a
       human.
    5. **Clarification**: the KB's "did you mean …?" candidates in scope, or a request to
       rephrase; once ``clarify_attempts`` clarifying questions in a row have been asked, the
       tenant's ``no_answer`` text (or a built-in one) with an offer of a human instead.

Soothing
    When the sentiment is ``negative`` with a score at or above the tenant's
    ``soothing.negative_threshold`` and the scenario has ``soothing: true``, one of the
    tenant's empathetic prefixes opens the reply (skipped when the reply already apologises)
    and the tenant's ``handoff_offer`` closes it (unless the reply already offers a human or
    is a transfer). The prefix is picked deterministically from the text and the streak.

Language
    Every text is in the customer's language: ``lang`` when the tenant supports it, else the
    tenant's default language. A KB entry without an answer in that language is not used.

The wordings, template filling and soothing live in :mod:`kefu.node.dialog.reply_text`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from kefu.config import Scenario, SessionPolicy, Template, TenantConfig
from kefu.node.dialog.knowledge import Clarification, KBAnswer, KnowledgeBase
from kefu.node.dialog.reply_text import (
    _LABELS,
    _OFFERS_HUMAN,
    _TEXT,
    _fill,
    _Filled,
    _is_affirmative,
    _join,
    _present,
    _raw,
    _soothe,
    is_explicit_human_request,
)
from kefu.node.dialog.scenario import ScenarioChoice, intent_threshold
from kefu.node.nlu.entities import Entity

__all__ = [
    "HANDOFF_REASONS",
    "LOOKUP_KEYS",
    "RECENT_TURNS",
    "ReplyDecision",
    "ReplySource",
    "TurnHistory",
    "decide_reply",
    "is_explicit_human_request",
    "kb_answer_for",
]

ReplySource = Literal["template", "kb", "clarify", "handoff", "fallback", "flow"]
HandoffReason = Literal[
    "explicit_request",
    "complaint",
    "negative_sentiment",
    "low_confidence",
    "vip",
    "plugin_failure",
    "flow_handoff",  # a task flow ends in a hand-off (e.g. account frozen → security team)
    "max_turns",  # the business line's max_turns is reached
]
#: In order of precedence.
HANDOFF_REASONS: tuple[HandoffReason, ...] = get_args(HandoffReason)
#: How many recent intents and sentiments a :class:`TurnHistory` keeps.
RECENT_TURNS = 5
#: Fields a customer is asked for when a template needs them: the keys the back end looks
#: everything else up by. Preferred in this order.
LOOKUP_KEYS = ("order_number", "tracking_number")

# Entity values shown in their canonical form (squashed, upper-cased); others as typed.
_CANONICAL_DISPLAY = frozenset({"order_number", "tracking_number"})

# ------------------------------------------------------------------------------ records


@dataclass(frozen=True, kw_only=True)
class ReplyDecision:
    """What to send for one turn and why.

    ``handoff`` means "transfer to a human now"; ``offer_human`` that the text offers one
    (after a condition-driven offer a "yes" transfers: :attr:`TurnHistory.human_offered`).
    ``handoff_reason`` is set whenever a hand-off condition held, transferred or offered.
    ``low_confidence`` and ``negative`` say whether this turn counts towards the consecutive
    counters (feed the decision to :meth:`TurnHistory.advance`). ``missing_fields`` are the
    template fields that had no value; ``asked_for`` the lookup key the reply asks for, on
    behalf of ``intent``. ``reason`` explains the decision for logs.
    """

    text: str
    lang: str
    source: ReplySource
    kb_entry_id: str | None = None
    template_id: str | None = None
    handoff: bool = False
    handoff_reason: HandoffReason | None = None
    offer_human: bool = False
    clarify: bool = False
    soothing: bool = False
    low_confidence: bool = False
    negative: bool = False
    missing_fields: tuple[str, ...] = ()
    intent: str | None = None  # the intent the reply serves (set when it asks for a key)
    asked_for: str | None = None  # the lookup key the reply asks the customer for
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class TurnHistory:
    """What :func:`decide_reply` needs to know about the session's earlier turns.

    Counters count *earlier* turns only; the decision adds the current one. Keep one per
    session (e.g. in a session slot via :meth:`to_dict`) and move it on with :meth:`advance`.
    """

    recent_intents: tuple[str, ...] = ()
    recent_sentiments: tuple[str, ...] = ()
    consecutive_low_confidence: int = 0
    consecutive_negative: int = 0
    consecutive_clarifications: int = 0
    vip: bool = False
    human_offered: bool = False  # the previous reply offered a human because a condition held
    pending_intent: str | None = None  # the previous reply asked for a key on its behalf

    def advance(
        self, decision: ReplyDecision, *, intent: str | None, sentiment: str | None
    ) -> TurnHistory:
        """The history after a turn answered with ``decision``."""
        intents = (*self.recent_intents, intent) if intent else self.recent_intents
        sentiments = (*self.recent_sentiments, sentiment) if sentiment else self.recent_sentiments
        return replace(
            self,
            recent_intents=intents[-RECENT_TURNS:],
            recent_sentiments=sentiments[-RECENT_TURNS:],
            consecutive_low_confidence=(
                self.consecutive_low_confidence + 1 if decision.low_confidence else 0
            ),
            consecutive_negative=self.consecutive_negative + 1 if decision.negative else 0,
            consecutive_clarifications=(
                self.consecutive_clarifications + 1 if decision.clarify else 0
            ),
            # Only an offer made because a hand-off condition held is a question that "yes"
            # answers; after "did you mean …? (or reply 'agent')", "yes" confirms the guess.
            human_offered=(
                decision.offer_human
                and not decision.handoff
                and decision.handoff_reason is not None
            ),
            pending_intent=decision.intent if decision.asked_for else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "recent_intents": list(self.recent_intents),
            "recent_sentiments": list(self.recent_sentiments),
            "consecutive_low_confidence": self.consecutive_low_confidence,
            "consecutive_negative": self.consecutive_negative,
            "consecutive_clarifications": self.consecutive_clarifications,
            "vip": self.vip,
            "human_offered": self.human_offered,
            "pending_intent": self.pending_intent,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TurnHistory:
        """Inverse of :meth:`to_dict`. Lenient: a malformed field takes its default, since a
        damaged session slot must not break the conversation."""
        data = data or {}
        pending = data.get("pending_intent")

        def strings(key: str) -> tuple[str, ...]:
            v = data.get(key)
            return tuple(str(x) for x in v)[-RECENT_TURNS:] if isinstance(v, list | tuple) else ()

        def count(key: str) -> int:
            v = data.get(key)
            return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0

        return cls(
            recent_intents=strings("recent_intents"),
            recent_sentiments=strings("recent_sentiments"),
            consecutive_low_confidence=count("consecutive_low_confidence"),
            consecutive_negative=count("consecutive_negative"),
            consecutive_clarifications=count("consecutive_clarifications"),
            vip=data.get("vip") is True,
            human_offered=data.get("human_offered") is True,
            pending_intent=pending if isinstance(pending, str) and pending else None,
        )


def _entity_values(entities: Sequence[Entity]) -> dict[str, object]:
    out: dict[str, object] = {}
    for e in entities:  # the first mention of a type wins
        if e.type in out:
            continue
        shown = e.normalized if e.type in _CANONICAL_DISPLAY else e.value
        out[e.type] = shown if isinstance(shown, str) else e.value
    return out


# --------------------------------------------------------------------------- assembling


def _supported_lang(config: TenantConfig, lang: str) -> str:
    return lang if lang in config.languages.supported else config.languages.default


def kb_answer_for(
    kb: KnowledgeBase, config: TenantConfig, scenario_id: str, *, text: str, lang: str
) -> KBAnswer | Clarification:
    """Query ``kb`` the way :func:`decide_reply` expects: the scenario's KB scopes and the
    ``kb_confidence_threshold`` of its session policy."""
    scenario = _scenario(config, scenario_id)
    return kb.answer(
        text,
        lang=_supported_lang(config, lang),
        scopes=scenario.kb_scopes,
        threshold=config.policy_for(scenario.id).kb_confidence_threshold,
    )


def _scenario(config: TenantConfig, scenario: str | ScenarioChoice) -> Scenario:
    sid = scenario.scenario_id if isinstance(scenario, ScenarioChoice) else scenario
    try:
        return config.scenario(sid)
    except KeyError:  # a scenario removed by a config reload: answer as the fallback does
        return config.fallback_scenario


def _in_scope(entry_scopes: Sequence[str], scenario: Scenario) -> bool:
    return "*" in entry_scopes or bool(set(entry_scopes) & set(scenario.kb_scopes))


@dataclass(frozen=True, kw_only=True)
class _Turn:
    """Everything derived once per call, shared by the steps."""

    config: TenantConfig
    scenario: Scenario
    policy: SessionPolicy
    lang: str
    text: str
    intent: str | None
    confident: bool
    values: Mapping[str, object]
    kb_result: KBAnswer | Clarification | None


def _words(t: _Turn, key: str) -> str:
    return _TEXT[t.lang][key]


def _template(t: _Turn, intent: str) -> tuple[str, Template] | None:
    for s in (t.scenario, t.config.fallback_scenario):
        if intent in s.templates:
            tid = s.templates[intent]
            return tid, t.config.templates[tid]
    return None


def _transfer(t: _Turn, reason: HandoffReason) -> ReplyDecision:
    intents = ("complaint", "human_agent") if reason == "complaint" else ("human_agent",)
    for intent in intents:
        found = _template(t, intent)
        if found is None:
            continue
        filled = _fill(found[1], t.lang, t.values)
        if filled.text:
            return ReplyDecision(
                text=filled.text,
                lang=t.lang,
                source="handoff",
                template_id=found[0],
                handoff=True,
                handoff_reason=reason,
                missing_fields=filled.missing,
                reason=f"handoff ({reason}): transfer with template {found[0]}",
            )
    return ReplyDecision(
        text=_words(t, "transfer"),
        lang=t.lang,
        source="handoff",
        handoff=True,
        handoff_reason=reason,
        reason=f"handoff ({reason}): transfer with the built-in wording",
    )


def _kb_usable(t: _Turn) -> tuple[str, str, float] | None:
    """(entry id, answer text, confidence) of a KB answer this scenario may give."""
    r = t.kb_result
    if not isinstance(r, KBAnswer) or r.confidence < t.policy.kb_confidence_threshold:
        return None
    if not _in_scope(r.entry.scopes, t.scenario):
        return None
    body, got = r.entry.answer_in(t.lang)
    return (r.entry.id, body, r.confidence) if got == t.lang else None


def _intent_template(t: _Turn) -> tuple[str, Template] | None:
    # The human_agent template announces a transfer: only the hand-off step may send it.
    if not t.confident or t.intent is None or t.intent == "human_agent":
        return None
    return _template(t, t.intent)


def _template_reply(tid: str, filled: _Filled, t: _Turn) -> ReplyDecision:
    assert filled.text is not None
    return ReplyDecision(
        text=filled.text,
        lang=t.lang,
        source="template",
        template_id=tid,
        missing_fields=filled.missing,
        reason=f"template {tid}"
        + (f" filled with {', '.join(filled.used)}" if filled.used else ""),
    )


def _unfillable(tid: str, filled: _Filled, t: _Turn) -> ReplyDecision:
    """Step 4 when a required field has no value: ask for a lookup key, or say so honestly."""
    ask = _lookup_key_to_ask(t, filled.missing)
    if ask is not None:
        own = t.config.templates.get(f"ask_{ask}")
        usable = own is not None and not own.placeholders
        label = _LABELS[ask][0 if t.lang == "zh" else 1]
        return ReplyDecision(
            text=_raw(own, t.lang)
            if own is not None and usable
            else _words(t, "ask").format(label=label),
            lang=t.lang,
            source="template" if usable else "fallback",
            template_id=f"ask_{ask}" if usable else None,
            intent=t.intent,
            asked_for=ask,
            missing_fields=filled.missing,
            reason=f"template {tid} needs {ask}: asked for it",
        )
    subject = _words(t, "subject")
    for key in LOOKUP_KEYS:
        if _present(t.values.get(key)):
            subject = _words(t, f"subject_{key}").format(value=str(t.values[key]).strip())
            break
    return ReplyDecision(
        text=_words(t, "lookup").format(subject=subject).replace("  ", " "),
        lang=t.lang,
        source="fallback",
        offer_human=True,
        missing_fields=filled.missing,
        reason=f"template {tid} lacks {', '.join(filled.missing)}: lookup-unavailable wording",
    )


def _lookup_key_to_ask(t: _Turn, missing: Sequence[str]) -> str | None:
    """The lookup key to ask the customer for, or None when one is known or none is needed.

    Only :data:`LOOKUP_KEYS` are asked for: other fields (status, eta, courier, ...) come from
    the back end once it has a key. The first key the tenant has an ``ask_<key>`` template for
    is preferred (the demo asks for the order number even when the template shows a tracking
    number: customers know the former, the logistics back end finds the latter).
    """
    if not any(f in LOOKUP_KEYS for f in missing):
        return None
    if any(_present(t.values.get(k)) for k in LOOKUP_KEYS):
        return None
    for key in LOOKUP_KEYS:
        if f"ask_{key}" in t.config.templates:
            return key
    return next(f for f in missing if f in LOOKUP_KEYS)


def _clarification(t: _Turn) -> Clarification:
    r = t.kb_result
    if isinstance(r, Clarification):
        shown = tuple(h for h in r.candidates if _in_scope(h.entry.scopes, t.scenario))
        return replace(r, lang=t.lang, candidates=shown)
    if isinstance(r, KBAnswer) and _in_scope(r.entry.scopes, t.scenario):
        return Clarification(
            query=t.text, lang=t.lang, reason="low_confidence", candidates=(r.hit,)
        )
    reason: Literal["empty", "no_match"] = "no_match" if t.text.strip() else "empty"
    return Clarification(query=t.text, lang=t.lang, reason=reason)


def _clarify_or_give_up(t: _Turn, clarifications: int) -> ReplyDecision:
    if clarifications >= t.policy.clarify_attempts:
        own = t.config.templates.get("no_answer")
        usable = own is not None and not own.placeholders
        return ReplyDecision(
            text=_raw(own, t.lang) if own is not None and usable else _words(t, "no_answer"),
            lang=t.lang,
            source="template" if usable else "fallback",
            template_id="no_answer" if usable else None,
            offer_human=True,
            reason=f"no answer after {clarifications} clarifying question(s): offered a human",
        )
    c = _clarification(t)
    return ReplyDecision(
        text=c.prompt(t.lang, offer_human=t.policy.offer_human),
        lang=t.lang,
        source="clarify",
        clarify=True,
        offer_human=t.policy.offer_human,
        reason=f"clarification ({c.reason}, {len(c.candidates)} candidate(s))",
    )


def _answer(t: _Turn, history: TurnHistory) -> ReplyDecision:
    """Steps 2-5 of the precedence (no hand-off)."""
    found = _intent_template(t)
    filled = _fill(found[1], t.lang, t.values) if found is not None else None
    if found is not None and filled is not None and filled.text and filled.used:
        return _template_reply(found[0], filled, t)  # a personal answer
    kb = _kb_usable(t)
    if kb is not None:
        entry_id, body, confidence = kb
        return ReplyDecision(
            text=body,
            lang=t.lang,
            source="kb",
            kb_entry_id=entry_id,
            reason=f"kb entry {entry_id} ({confidence:.2f} ≥ {t.policy.kb_confidence_threshold})",
        )
    if found is not None and filled is not None:
        if filled.text:
            return _template_reply(found[0], filled, t)
        return _unfillable(found[0], filled, t)
    return _clarify_or_give_up(t, history.consecutive_clarifications)


# ------------------------------------------------------------------------------ decision


def decide_reply(
    *,
    config: TenantConfig,
    scenario: str | ScenarioChoice,
    intent: str | None,
    intent_confidence: float,
    sentiment: str | None,
    sentiment_score: float,
    lang: str,
    text: str,
    entities: Sequence[Entity] = (),
    kb_result: KBAnswer | Clarification | None = None,
    history: TurnHistory | None = None,
    values: Mapping[str, object] | None = None,
    plugin_failed: bool = False,
    threshold: float | None = None,
    preset: str | None = None,
) -> ReplyDecision:
    """Decide the reply for one customer turn (precedence: see the module docstring).

    ``kb_result`` is the knowledge base's result for ``text`` (see :func:`kb_answer_for`);
    None when it was not queried. ``values`` are fields for templates from plugins and session
    slots; an entity found in this turn's text overrides a value of the same name (the
    customer's latest words win). ``sentiment_score`` is the probability of ``sentiment``.
    ``threshold`` overrides the scenario policy's intent-confidence threshold. ``preset`` is
    a reply already decided by a task flow (:mod:`kefu.node.dialog.flow`): it replaces steps
    2-5, the turn counts as understood, and a "yes" answers the flow's question, not an
    earlier offer of a human; hand-off conditions and soothing still apply.
    """
    history = history or TurnHistory()
    chosen = _scenario(config, scenario)
    policy = config.policy_for(chosen.id)
    limit = intent_threshold(config, chosen.id) if threshold is None else threshold
    reply_lang = _supported_lang(config, lang)
    merged: dict[str, object] = dict(values or {})
    given = _entity_values(entities)
    merged.update(given)
    confident = intent is not None and intent_confidence >= limit
    # The customer answers the key we asked for ("2024112512345678"): that turn carries no
    # intent of its own, so it continues the one that asked.
    resumed = (
        not confident
        and history.pending_intent is not None
        and any(_present(given.get(k)) for k in LOOKUP_KEYS)
    )
    if resumed:
        intent, confident = history.pending_intent, True
    t = _Turn(
        config=config,
        scenario=chosen,
        policy=policy,
        lang=reply_lang,
        text=text,
        intent=intent,
        confident=confident,
        values=merged,
        kb_result=kb_result,
    )

    negative = sentiment == "negative" and sentiment_score >= config.soothing.negative_threshold
    low_confidence = not t.confident and _kb_usable(t) is None and preset is None
    hand = policy.handoff

    explicit = (t.confident and intent == "human_agent") or is_explicit_human_request(text)
    explicit = explicit or (history.human_offered and preset is None and _is_affirmative(text))
    conditions: list[tuple[HandoffReason, bool]] = [
        ("explicit_request", hand.explicit_request and explicit),
        ("complaint", hand.complaint and t.confident and intent == "complaint"),
        (
            "negative_sentiment",
            negative
            and hand.negative_sentiment_turns > 0
            and history.consecutive_negative + 1 >= hand.negative_sentiment_turns,
        ),
        (
            "low_confidence",
            low_confidence
            and not explicit
            and hand.low_confidence_turns > 0
            and history.consecutive_low_confidence + 1 >= hand.low_confidence_turns,
        ),
        ("vip", hand.vip and history.vip),
        ("plugin_failure", hand.plugin_failure and plugin_failed),
    ]
    held = next((reason for reason, holds in conditions if holds), None)

    if held is not None and (held == "explicit_request" or not policy.offer_human):
        decision = _transfer(t, held)
    else:
        if preset is not None:
            decision = ReplyDecision(text=preset, lang=reply_lang, source="flow", reason="flow")
        elif held != "low_confidence":
            decision = _answer(t, history)
        else:  # asking again is what failed: offer a person instead
            decision = ReplyDecision(
                text=_words(t, "offer_low_confidence"),
                lang=reply_lang,
                source="handoff",
                reason=f"low confidence for {history.consecutive_low_confidence + 1} turn(s)",
            )
        if held is not None:
            decision = replace(decision, handoff_reason=held, offer_human=True)

    soothe = negative and chosen.soothing
    body = decision.text
    if soothe:
        body = _soothe(config, body, reply_lang, text, history.consecutive_negative)
    wants_offer = (soothe or (held is not None and decision.offer_human)) and not decision.handoff
    if wants_offer and not _OFFERS_HUMAN.search(body):
        offer = config.soothing.handoff_offer.get(reply_lang) if soothe else _words(t, "offer")
        body = _join(body, offer, reply_lang)
    if resumed:
        decision = replace(decision, reason=f"{decision.reason}; resumed intent {intent}")
    return replace(
        decision,
        text=body,
        soothing=soothe,
        offer_human=decision.offer_human or (wants_offer and not decision.handoff),
        low_confidence=low_confidence and not explicit,
        negative=negative,
    )
