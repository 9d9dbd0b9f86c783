"""One customer turn, end to end: the node's service layer (no gRPC, no SQLite here).

``ConversationService.converse`` runs, in order: text validation → per-tenant rate limit →
admission control → load or create the session → language → intent and sentiment (ONNX
bundles through the batching runtime, concurrently) → entities → scenario → knowledge base →
reply decision → persist both turns (the customer's and the bot's) → result. The adapters
(gRPC, CLI) translate its exceptions; nothing here knows about status codes. What happened is
emitted as typed events (:mod:`kefu.node.dialog.events`) on :attr:`ConversationService.events`
for metrics and telemetry to subscribe to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from kefu.node.dialog.events import EventHub, FeedbackGiven, HandoffStarted, TurnServed
from kefu.node.dialog.handoff import build_summary, renew_if_idle
from kefu.node.dialog.reply import TurnHistory, decide_reply, kb_answer_for
from kefu.node.dialog.scenario import select_scenario
from kefu.node.dialog.split import (
    PIN_SLOT,
    NodeSplit,
    SessionPin,
    SplitBoard,
    SplitTag,
    config_for,
    resolve_ref,
)
from kefu.node.dialog.tasks import (
    flow_slot_writes,
    flow_step,
    human_owned_turn,
    is_vip,
    plugin_call_log,
    turn_preview,
    with_flow,
)
from kefu.node.dialog.tenant import Tenant, TenantRegistry
from kefu.node.dialog.turns import (
    InvalidTurn,
    RateLimited,
    SessionNotFound,
    TurnRequest,
    TurnResult,
    validate_text,
)
from kefu.node.nlu.language import detect_language
from kefu.node.nlu.predictions import Classification, ModelNotLoaded, ModelRuntime
from kefu.node.serving.admission import AdmissionController, RateLimit, RateLimiter
from kefu.node.serving.limits import MAX_TEXT_BYTES
from kefu.node.sessions.store import (
    DuplicateRequest,
    HandoffRequest,
    NewSession,
    NewTurn,
    Session,
    SessionStatus,
    Slot,
    TurnRecord,
    TurnRole,
    new_record_id,
    start_session,
    utc_now,
)

# The turn's request, result and errors live in turns.py; they stay importable from here.
__all__ = [
    "MAX_TEXT_BYTES",
    "ConversationService",
    "InvalidTurn",
    "RateLimited",
    "SessionNotFound",
    "TurnRequest",
    "TurnResult",
    "validate_text",
]

log = logging.getLogger("kefu.node.turn")

HISTORY_SLOT = "_history"
#: Entity types kept in the session so later turns can use them (written only when changed).
REMEMBERED_ENTITIES = frozenset({"order_number", "tracking_number", "phone", "email"})


CHANNEL_NAMES = ("web", "app", "mini_program", "social", "api")


def tenant_rate_limits(tenant: Tenant) -> dict[str, RateLimit]:
    """The tenant config's limit for each channel."""
    limits = tenant.config.rate_limits
    return {
        ch: RateLimit(
            rate=limits.for_channel(ch).rate_per_second, burst=float(limits.for_channel(ch).burst)
        )
        for ch in CHANNEL_NAMES
    }


class ConversationService:
    def __init__(
        self,
        *,
        registry: TenantRegistry,
        runtime: ModelRuntime,
        admission: AdmissionController,
        limiter: RateLimiter | None = None,
        events: EventHub | None = None,
        splits: SplitBoard | None = None,
    ):
        self.registry = registry
        #: Where turns, hand-offs and feedback are announced (metrics, telemetry subscribe).
        self.events = events or EventHub()
        self.runtime = runtime
        self.admission = admission
        self.limiter = limiter or RateLimiter(RateLimit(rate=100.0, burst=200.0))
        #: Rollout splits and the sessions pinned to versions (see node/dialog/split.py).
        self.splits = splits or SplitBoard()
        if limiter is None:
            for t in registry.tenants.values():
                self.limiter.set_tenant(t.id, tenant_rate_limits(t))
        # Tenants added, changed or removed later (a managed node starts with none).
        registry.listeners.append(self._tenant_changed)
        #: Imports a session this node does not have from the zone's replicas (tenant id,
        #: session id → found); set when the node replicates sessions (docs/failover.md).
        self.importer: Callable[[str, str], Awaitable[bool]] | None = None

    async def import_session(self, tenant: Tenant, session_id: str) -> bool:
        """A session unknown here: imported from the replicas (a failed-over conversation)?"""
        return self.importer is not None and await self.importer(tenant.id, session_id)

    def _tenant_changed(self, tenant_id: str, tenant: Tenant | None) -> None:
        if tenant is None:
            self.limiter.forget_tenant(tenant_id)
        else:
            self.limiter.set_tenant(tenant_id, tenant_rate_limits(tenant))

    async def converse(self, tenant: Tenant, req: TurnRequest) -> TurnResult:
        result = await self._converse(tenant, req)
        if not result.replayed:  # a retry answered from the stored reply ran no turn
            self.events.emit(TurnServed(tenant=tenant.id, result=result))
            if result.handoff:
                self.events.emit(
                    HandoffStarted(
                        tenant=tenant.id,
                        session_id=result.session_id,
                        handoff_id=result.handoff_id,
                        reason=result.handoff_reason,
                    )
                )
        return result

    async def feedback_given(
        self,
        tenant: Tenant,
        *,
        session_id: str,
        turn_seq: int | None,
        rating: int,
        corrected_intent: str,
        resolved: bool | None = None,
    ) -> None:
        """Announce stored feedback, attributed to the rated turn's scenario and model version
        (the rated turn, else the session's latest turn that has an intent). Reads the turns
        only when someone subscribed."""
        if not self.events.wants(FeedbackGiven):
            return
        turns = await tenant.store.get_turns(
            session_id, after_seq=max(0, turn_seq - 2) if turn_seq else 0,
            tail=None if turn_seq else 20,
        )  # fmt: skip
        rated = [t for t in turns if t.intent and (turn_seq is None or t.seq <= turn_seq)]
        turn = rated[-1] if rated else None
        self.events.emit(
            FeedbackGiven(
                tenant=tenant.id,
                rating=rating,
                corrected_intent=corrected_intent,
                predicted_intent=(turn.intent or "") if turn else "",
                scenario=(turn.scenario or "") if turn else "",
                model_version=turn.model_versions.get("intent", "") if turn else "",
                session_id=session_id,
                resolved=resolved,
            )
        )

    async def _converse(self, tenant: Tenant, req: TurnRequest) -> TurnResult:
        started = time.perf_counter()
        text = validate_text(req.text)
        retry = bool(req.request_id and req.session_id)
        req = replace(
            req,
            channel=await self._channel(tenant, req),
            request_id=req.request_id or new_record_id(),  # the node assigns one
        )
        assert req.channel is not None and req.request_id is not None
        ok, retry_after = self.limiter.try_acquire(tenant.id, req.channel)
        if not ok:
            raise RateLimited(retry_after)
        async with self.admission.admit():
            # A retry (same request_id, same session) gets the stored reply: the turn never
            # runs twice. The store refuses a duplicate at commit too (a concurrent retry).
            if retry and (done := await self._replay(tenant, req, started)) is not None:
                return done
            try:
                return await self._turn(tenant, req, text, started)
            except DuplicateRequest:
                if (done := await self._replay(tenant, req, started)) is None:
                    raise
                return done

    async def _channel(self, tenant: Tenant, req: TurnRequest) -> str:
        if req.channel is not None:
            return req.channel
        if not req.session_id:
            raise InvalidTurn("channel is required for a new session / 新会话须指定渠道 (channel)")
        session = await tenant.store.get_session(req.session_id)
        if session is None and await self.import_session(tenant, req.session_id):
            session = await tenant.store.get_session(req.session_id)
        if session is None:
            raise SessionNotFound(f"session {req.session_id!r} not found / 会话不存在")
        return session.channel

    async def _replay(self, tenant: Tenant, req: TurnRequest, started: float) -> TurnResult | None:
        """The reply stored for ``req.request_id`` in ``req.session_id``, if any."""
        assert req.session_id and req.request_id
        turns = await tenant.store.find_request(req.session_id, req.request_id)
        customer = next((t for t in turns if t.role is TurnRole.CUSTOMER), None)
        if customer is None:
            return None
        bot = next((t for t in turns if t.role is TurnRole.BOT), None)
        handoff_id = ""
        if bot is not None and bot.handoff:
            page = await tenant.store.list_handoffs(session_id=req.session_id, limit=50)
            handoff_id = page.items[-1].id if page.items else ""
        log.info(
            "turn replayed",
            extra={
                "fields": {
                    "tenant": tenant.id,
                    "session_id": req.session_id,
                    "request_id": req.request_id,
                    "seq": customer.seq,
                }
            },
        )
        return TurnResult(
            session_id=req.session_id,
            seq=customer.seq,
            reply=bot.text if bot is not None else "",
            language=(bot.language if bot is not None else customer.language) or "",
            intent=customer.intent or "",
            confidence=customer.confidence or 0.0,
            sentiment=customer.sentiment or "",
            sentiment_score=0.0,
            scenario=customer.scenario or "",
            entities=[],
            handoff=bot.handoff if bot is not None else False,
            handoff_reason=(bot.handoff_reason if bot is not None else None) or "",
            handoff_id=handoff_id,
            clarify=False,
            kb_entry_id="",
            model_versions=dict(customer.model_versions),
            latency_us=int((time.perf_counter() - started) * 1e6),
            request_id=req.request_id,
            replayed=True,
        )

    async def _context(
        self, tenant: Tenant, req: TurnRequest
    ) -> tuple[Session, dict[str, Slot], bool]:
        """The session and its slots; a new session is built here and stored with the turn."""
        if req.session_id:
            context = await tenant.store.load_context(req.session_id)
            if context is None and await self.import_session(tenant, req.session_id):
                context = await tenant.store.load_context(req.session_id)
            if context is None:
                raise SessionNotFound(f"session {req.session_id!r} not found / 会话不存在")
            if req.channel != context.session.channel:
                raise InvalidTurn(
                    f"channel {req.channel} differs from the session's ({context.session.channel})"
                    " / 渠道与会话的渠道不一致"
                )
            session = await renew_if_idle(tenant.store, context.session, tenant.config)
            if session.id != context.session.id:  # idle too long: a fresh session carries on
                context = await tenant.store.load_context(session.id)
                if context is None:
                    raise SessionNotFound(f"session {session.id!r} not found / 会话不存在")
            return context.session, context.slots, False
        assert req.channel is not None  # converse() resolved it
        session = start_session(
            NewSession(
                channel=req.channel,
                user_id=req.user_id or None,
                language=req.language or None,
                attributes=dict(req.metadata),
            ),
            tenant=tenant.id,
            now=utc_now(),
            session_id=req.new_session_id,
        )
        return session, {}, True

    async def _turn(
        self, tenant: Tenant, req: TurnRequest, text: str, started: float
    ) -> TurnResult:
        session, slots, is_new = await self._context(tenant, req)
        if session.status is SessionStatus.HANDED_OFF:
            return await self._human_owned(tenant, req, session, text, started)
        # While a rollout splits the tenant, a session keeps the versions (and the config) it
        # started with; a config canary's sessions run the canary's tenant, same store.
        split = self.splits.splits.get(tenant.id)
        pin = SessionPin.from_slot(slots[PIN_SLOT].value) if PIN_SLOT in slots else None
        if pin is None and is_new and split is not None:
            pin = SessionPin.new(split, session.id)
        pinned = pin.to_slot() if pin is not None and PIN_SLOT in slots else None
        canary_tenant, switched = config_for(pin, split)
        if switched and pin is not None:
            pin.config_version = 0
        tenant = canary_tenant or tenant
        cfg, store = tenant.config, tenant.store
        history = TurnHistory.from_dict(
            slots[HISTORY_SLOT].value if HISTORY_SLOT in slots else None
        )
        prior = req.language or session.language
        detected = detect_language(
            text, prior="zh" if prior == "zh" else "en" if prior == "en" else None
        )
        lang = (
            detected.lang if detected.lang != "und" else (session.language or cfg.languages.default)
        )

        # The scenario is chosen from the intent, so a scenario's pinned models serve the
        # session's turns once it is in that scenario (from its second turn there on).
        intent_model, sentiment_model = cfg.models_for(session.scenario)
        (intent, intent_switched), (sentiment, sentiment_switched) = await asyncio.gather(
            self._classify(intent_model.name, intent_model.ref, pin, split, text),
            self._classify(sentiment_model.name, sentiment_model.ref, pin, split, text),
        )
        if pin is not None and (switched or intent_switched or sentiment_switched):
            self.splits.count_switch(tenant.id)  # once per session switched, not per model
            pin.arm = "baseline" if pin.arm == "canary" else pin.arm
        entities = tenant.entities.extract(text, lang=lang)
        attributes = {**session.attributes, **req.metadata}
        choice = select_scenario(
            cfg,
            intent=intent.label,
            intent_confidence=intent.probability,
            text=text,
            lang=lang,
            channel=req.channel,
            entry_path=req.entry_path,
            user_attributes=attributes,
            recent_intents=history.recent_intents,
            current_scenario=session.scenario,
        )
        kb = kb_answer_for(tenant.kb, cfg, choice.scenario_id, text=text, lang=lang)
        values = {k: s.value for k, s in slots.items() if not k.startswith("_")}
        flow = await flow_step(
            tenant,
            slots,
            values,
            lang=lang,
            text=text,
            intent=intent.label,
            confidence=intent.probability,
            entities=entities,
            kb=kb,
            kb_threshold=cfg.policy_for(choice.scenario_id).kb_confidence_threshold,
            scenario=choice.scenario_id,
        )
        history = replace(history, vip=history.vip or is_vip(attributes))
        decision = decide_reply(
            config=cfg,
            scenario=choice,
            # A mechanical answer inside a flow ("是的", an order number) carries no intent or
            # sentiment of its own: the models' guesses on such short texts are noise.
            intent=None if flow.consumed else intent.label,
            intent_confidence=intent.probability,
            sentiment="neutral" if flow.consumed else sentiment.label,
            sentiment_score=sentiment.probability,
            lang=lang,
            text=text,
            entities=entities,
            kb_result=kb,
            history=history,
            values=values,
            plugin_failed=flow.plugin_failed,
            preset=flow.text,
        )
        decision = with_flow(decision, flow, session, cfg.policy_for(choice.scenario_id).max_turns)
        versions = {"intent": intent.ref, "sentiment": sentiment.ref}
        entity_dict = {e.type: e.normalized for e in entities}
        customer_turn = NewTurn(
            session_id=session.id,
            role=TurnRole.CUSTOMER,
            text=text,
            language=lang,
            intent=intent.label,
            confidence=round(intent.probability, 6),
            sentiment=sentiment.label,
            scenario=choice.scenario_id,
            entities=entity_dict,
            model_versions=versions,
            request_id=req.request_id,
        )
        # Slot memory: the customer need not repeat an order number (written only when changed).
        slot_writes: dict[str, Any] = {
            e.type: e.value
            for e in entities
            if e.type in REMEMBERED_ENTITIES
            and (e.type not in slots or slots[e.type].value != e.value)
        }
        if pin is not None:
            pin.versions.update({intent.model: intent.version, sentiment.model: sentiment.version})
            if pin.to_slot() != pinned:
                slot_writes[PIN_SLOT] = pin.to_slot()
            self.splits.note(tenant.id, session.id, pin, time.monotonic())
        slot_writes[HISTORY_SLOT] = history.advance(
            decision, intent=intent.label, sentiment=sentiment.label
        ).to_dict()
        # After the entity memory: a value the flow forgets also undoes it.
        slot_writes.update(flow_slot_writes(slots, flow, handed_off=decision.handoff))
        handoff = None
        if decision.handoff and session.status is SessionStatus.OPEN:
            handoff = HandoffRequest(
                reason=decision.handoff_reason or "policy",
                summary=build_summary(
                    reason=decision.handoff_reason or "policy",
                    scenario=choice.scenario_id,
                    language=lang,
                    intents=[*history.recent_intents, intent.label],
                    sentiments=[*history.recent_sentiments, sentiment.label],
                    slots={**values, **{k: v for k, v in flow.remember.items() if v}},
                    turns=[
                        *([] if is_new else await store.get_turns(session.id, tail=4)),
                        turn_preview(session.id, text, TurnRole.CUSTOMER),
                        turn_preview(session.id, decision.text),
                    ],
                    open_flow=flow.flow,
                    plugin_calls=plugin_call_log(slots, flow),
                ),
            )
        latency_ms = (time.perf_counter() - started) * 1000.0
        bot_turn = NewTurn(
            session_id=session.id,
            role=TurnRole.BOT,
            text=decision.text,
            language=decision.lang,
            intent=intent.label,
            scenario=choice.scenario_id,
            handoff=decision.handoff,
            handoff_reason=decision.handoff_reason,
            model_versions=versions,
            latency_ms=round(latency_ms, 3),
            request_id=req.request_id,
        )
        # One transaction for the whole turn, group-committed with concurrent turns: once it
        # returns, both turns, the slots and any hand-off are on disk together.
        recorded = await store.record_turn(
            TurnRecord(
                session_id=session.id,
                new_session=session if is_new else None,
                turns=(customer_turn, bot_turn),
                slots=slot_writes,
                language=lang if session.language != lang else None,
                scenario=choice.scenario_id if session.scenario != choice.scenario_id else None,
                handoff=handoff,
            )
        )
        customer = recorded.turns[0]
        handoff_id = recorded.handoff.id if recorded.handoff is not None else ""
        # Ids and labels only: the conversation text stays in the tenant's database.
        log.info(
            "turn",
            extra={
                "fields": {
                    "tenant": tenant.id,
                    "session_id": session.id,
                    "request_id": req.request_id or "",
                    "seq": customer.seq,
                    "lang": lang,
                    "intent": intent.label,
                    "confidence": round(intent.probability, 3),
                    "sentiment": sentiment.label,
                    "scenario": choice.scenario_id,
                    "source": decision.source,
                    "handoff": decision.handoff,
                    "latency_ms": round(latency_ms, 2),
                }
            },
        )
        return TurnResult(
            session_id=session.id,
            seq=customer.seq,
            reply=decision.text,
            language=decision.lang,
            intent=intent.label,
            confidence=intent.probability,
            sentiment=sentiment.label,
            sentiment_score=sentiment.probability,
            scenario=choice.scenario_id,
            entities=list(entities),
            handoff=decision.handoff,
            handoff_reason=decision.handoff_reason or "",
            handoff_id=handoff_id,
            clarify=decision.clarify,
            kb_entry_id=decision.kb_entry_id or "",
            model_versions=versions,
            latency_us=int((time.perf_counter() - started) * 1e6),
            request_id=req.request_id or "",
            plugin_calls=flow.calls,
            flow=flow.flow or "",
            flow_event=flow.event,
            latency_objective_ms=cfg.scenario(choice.scenario_id).latency_objective_ms or 0.0,
            split=None
            if pin is None
            else SplitTag(
                rollout_id=pin.rollout_id,
                arm=pin.arm,
                weight=split.weight if split is not None and is_new else 0.0,
                new_session=is_new,
            ),
        )

    async def _classify(
        self,
        name: str,
        configured: str,
        pin: SessionPin | None,
        split: NodeSplit | None,
        text: str,
    ) -> tuple[Classification, bool]:
        """Classify with the session's pinned version, and whether the session was switched:
        a version no longer loaded (or a rolled-back canary) gives the configured one."""
        ref, switched = resolve_ref(name, configured, pin, split, lambda _ref: True)
        try:
            result = (await self.runtime.classify(ref, [text]))[0]
        except ModelNotLoaded:
            if ref == configured:
                raise
            switched = True
            result = (await self.runtime.classify(configured, [text]))[0]
        return result, switched and pin is not None

    async def _human_owned(
        self, tenant: Tenant, req: TurnRequest, session: Session, text: str, started: float
    ) -> TurnResult:
        """A turn while a human owns the session (see :func:`human_owned_turn`)."""
        turn = await human_owned_turn(tenant.store, session, text, request_id=req.request_id)
        return TurnResult(
            session_id=session.id,
            seq=turn.seq,
            reply=turn.reply,
            language=turn.lang,
            intent="",
            confidence=0.0,
            sentiment="",
            sentiment_score=0.0,
            scenario=session.scenario or "",
            entities=[],
            handoff=False,
            handoff_reason="",
            handoff_id=turn.handoff_id,
            clarify=False,
            kb_entry_id="",
            model_versions={},
            latency_us=int((time.perf_counter() - started) * 1e6),
            request_id=req.request_id or "",
        )
