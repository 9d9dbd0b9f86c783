"""Human hand-off: the summary an agent sees, the console service, session-policy renewal.

* :func:`build_summary` — what an agent needs at a glance when a session is handed over:
  reason, scenario, intent history, slots, sentiment trend, open flow, failed plugin calls and
  the last messages. It may quote the customer, so it lives only in the tenant's own database
  (the retention purge wipes it).
* :class:`HandoffConsole` — the service layer behind ListHandoffs / ClaimHandoff / AgentReply /
  CloseHandoff: claim (one agent at a time, re-claiming one's own is a no-op), reply (stored as
  an AGENT turn; the bot stays silent while a human owns the session), close (back to the bot,
  or the session ends).
* :func:`renew_if_idle` — session policy per business line: a session idle past its
  scenario's ``inactivity_timeout_seconds`` expires and the customer continues in a new one
  that carries a summary of the old one's context (and the remembered order number, ...).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kefu.config import TenantConfig
from kefu.node.sessions.store import (
    DuplicateRequest,
    Handoff,
    HandoffStatus,
    InvalidRecord,
    NewSession,
    NewTurn,
    Page,
    RecordNotFound,
    Session,
    SessionStatus,
    SessionStore,
    StateConflict,
    Turn,
    TurnRole,
    utc_now,
)

__all__ = [
    "CLOSE_SLOT",
    "HandoffConsole",
    "HandoffResolution",
    "HandoffView",
    "build_summary",
    "renew_if_idle",
    "sentiment_trend",
]

#: Session slot with the closing resolution and note of each hand-off (the store's hand-off
#: record has no columns for them).
CLOSE_SLOT = "_handoff_close"
LAST_MESSAGES = 6
#: Slots carried into the new session when an idle session is renewed.
CARRIED_SLOTS = ("order_number", "tracking_number", "phone", "email")


class HandoffResolution(enum.StrEnum):
    RESOLVED = "resolved"
    UNRESOLVED = "unresolved"
    RETURNED_TO_BOT = "returned_to_bot"
    ABANDONED = "abandoned"


def sentiment_trend(sentiments: Sequence[str]) -> str:
    """ "worsening", "improving" or "steady" from the recent sentiment labels."""
    score = {"negative": -1, "neutral": 0, "positive": 1}
    vals = [score.get(s, 0) for s in sentiments]
    if len(vals) < 2:
        return "steady"
    half = len(vals) // 2
    before = sum(vals[:half]) / half
    after = sum(vals[half:]) / (len(vals) - half)
    if after < before - 0.25:
        return "worsening"
    if after > before + 0.25:
        return "improving"
    return "steady"


def build_summary(
    *,
    reason: str,
    scenario: str,
    language: str,
    intents: Sequence[str],
    sentiments: Sequence[str],
    slots: Mapping[str, Any],
    turns: Sequence[Turn],
    open_flow: str | None = None,
    plugin_calls: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The hand-off summary record (JSON-ready)."""
    return {
        "reason": reason,
        "scenario": scenario,
        "language": language,
        "intents": list(intents),
        "sentiments": list(sentiments),
        "sentiment_trend": sentiment_trend(sentiments),
        "slots": {k: str(v) for k, v in sorted(slots.items()) if not k.startswith("_")},
        "open_flow": open_flow or "",
        "plugin_failures": [
            f"{c.get('plugin')}:{c.get('code') or c.get('outcome')}"
            for c in plugin_calls
            if c.get("outcome") == "failed"
        ][-5:],
        "last_messages": [
            {"role": t.role.value, "text": t.text} for t in list(turns)[-LAST_MESSAGES:]
        ],
    }


@dataclass(frozen=True, kw_only=True)
class HandoffView:
    """A hand-off with what the console shows beside it."""

    handoff: Handoff
    session: Session | None
    last_user_text: str = ""
    resolution: str = ""
    note: str = ""


class HandoffConsole:
    """The agent console's operations on one tenant's store."""

    def __init__(self, store: SessionStore):
        self.store = store

    async def _view(self, h: Handoff) -> HandoffView:
        session = await self.store.get_session(h.session_id)
        last = ""
        if session is not None:
            for t in reversed(await self.store.get_turns(h.session_id, tail=LAST_MESSAGES * 2)):
                if t.role is TurnRole.CUSTOMER:
                    last = t.text
                    break
        closed: dict[str, Any] = {}
        if h.status is HandoffStatus.CLOSED:
            slots = await self.store.get_slots(h.session_id)
            raw = slots[CLOSE_SLOT].value if CLOSE_SLOT in slots else {}
            closed = raw.get(h.id, {}) if isinstance(raw, dict) else {}
        return HandoffView(
            handoff=h,
            session=session,
            last_user_text=last,
            resolution=str(closed.get("resolution", "")),
            note=str(closed.get("note", "")),
        )

    async def _get(self, handoff_id: str) -> Handoff:
        h = await self.store.get_handoff(handoff_id) if handoff_id else None
        if h is None:
            raise RecordNotFound("handoff", handoff_id)
        return h

    async def list(
        self, *, status: HandoffStatus | None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[HandoffView], str | None]:
        """``status`` None: the open ones (waiting and claimed), oldest first."""
        if status is not None:
            page: Page[Handoff] = await self.store.list_handoffs(
                status=status, limit=limit, cursor=cursor
            )
            items, nxt = page.items, page.next_cursor
        else:
            items, nxt = [], cursor
            while len(items) < limit:
                # never fetch more than still fits: the cursor must not skip open ones
                page = await self.store.list_handoffs(limit=limit - len(items), cursor=nxt)
                items += [h for h in page.items if h.status is not HandoffStatus.CLOSED]
                nxt = page.next_cursor
                if nxt is None:
                    break
        return [await self._view(h) for h in items[:limit]], nxt

    async def claim(self, handoff_id: str, agent_id: str) -> HandoffView:
        if not agent_id.strip():
            raise InvalidRecord("agent_id is required / 缺少坐席 ID")
        h = await self._get(handoff_id)
        if h.status is HandoffStatus.CLAIMED and h.agent_id == agent_id:
            return await self._view(h)  # claiming one's own hand-off again is a no-op
        if h.status is not HandoffStatus.OPEN:
            who = f" by {h.agent_id}" if h.agent_id else ""
            raise StateConflict(f"handoff is {h.status}{who} / 该转人工记录已被处理（{h.status}）")
        return await self._view(
            await self.store.update_handoff(h.id, status=HandoffStatus.CLAIMED, agent_id=agent_id)
        )

    async def reply(
        self,
        *,
        agent_id: str,
        text: str,
        handoff_id: str = "",
        session_id: str = "",
        request_id: str | None = None,
    ) -> Turn:
        if not text.strip():
            raise InvalidRecord("text is empty / 消息内容为空")
        if not agent_id.strip():
            raise InvalidRecord("agent_id is required / 缺少坐席 ID")
        if handoff_id:
            h = await self._get(handoff_id)
        else:
            page = await self.store.list_handoffs(session_id=session_id or "-", limit=50)
            active = [x for x in page.items if x.status is not HandoffStatus.CLOSED]
            if not active:
                raise RecordNotFound("handoff", f"session {session_id}")
            h = active[-1]
        if h.status is not HandoffStatus.CLAIMED or h.agent_id != agent_id:
            raise StateConflict(
                "the handoff must be claimed by this agent first / 请先认领该转人工会话"
            )
        # A retried request returns the turn it already stored.
        if request_id and (done := await self._agent_turn(h.session_id, request_id)):
            return done
        try:
            return await self.store.append_turn(
                NewTurn(
                    session_id=h.session_id,
                    role=TurnRole.AGENT,
                    text=text.strip(),
                    model_versions={"agent": agent_id},
                    request_id=request_id,
                )
            )
        except DuplicateRequest:  # a concurrent retry stored it first
            assert request_id is not None
            done = await self._agent_turn(h.session_id, request_id)
            if done is None:
                raise
            return done

    async def _agent_turn(self, session_id: str, request_id: str) -> Turn | None:
        found = await self.store.find_request(session_id, request_id)
        return next((t for t in found if t.role is TurnRole.AGENT), None)

    async def close(
        self, handoff_id: str, *, resolution: HandoffResolution, agent_id: str, note: str = ""
    ) -> HandoffView:
        h = await self._get(handoff_id)
        if h.status is HandoffStatus.CLOSED:
            raise StateConflict("handoff is already closed / 该转人工已结束")
        waiting_abandoned = (
            h.status is HandoffStatus.OPEN and resolution is HandoffResolution.ABANDONED
        )
        if not waiting_abandoned and (
            h.status is not HandoffStatus.CLAIMED or h.agent_id != agent_id
        ):
            raise StateConflict(
                "only the agent holding the handoff can close it / 只有认领该会话的坐席可以结束它"
            )
        session = await self.store.get_session(h.session_id)
        writable = session is not None and session.status not in (
            SessionStatus.ENDED,
            SessionStatus.EXPIRED,
        )
        if writable:
            slots = await self.store.get_slots(h.session_id)
            record = dict(slots[CLOSE_SLOT].value) if CLOSE_SLOT in slots else {}
            record[h.id] = {"resolution": resolution.value, "note": note[:2000]}
            await self.store.set_slot(h.session_id, CLOSE_SLOT, record)
        closed = await self.store.update_handoff(
            h.id, status=HandoffStatus.CLOSED, agent_id=agent_id or None
        )
        if writable:
            back = resolution is HandoffResolution.RETURNED_TO_BOT
            await self.store.update_session(
                h.session_id, status=SessionStatus.OPEN if back else SessionStatus.ENDED
            )
        return await self._view(closed)


async def renew_if_idle(
    store: SessionStore, session: Session, config: TenantConfig, *, now: datetime | None = None
) -> Session:
    """``session``, or — when it sat idle past its business line's timeout — a new session
    carrying a summary of the old one (the old one is marked EXPIRED)."""
    if session.status is not SessionStatus.OPEN:
        return session
    policy = config.policy_for(session.scenario)
    now = now or utc_now()
    if now - session.last_active_at <= timedelta(seconds=policy.inactivity_timeout_seconds):
        return session
    slots = await store.get_slots(session.id)
    history = slots["_history"].value if "_history" in slots else {}
    carried = {k: slots[k].value for k in CARRIED_SLOTS if k in slots and slots[k].value}
    context = {
        "previous_session_id": session.id,
        "previous_scenario": session.scenario or "",
        "intents": list(history.get("recent_intents", [])) if isinstance(history, dict) else [],
        "slots": {k: str(v) for k, v in carried.items()},
        "turns": session.turn_count,
    }
    await store.update_session(session.id, status=SessionStatus.EXPIRED)
    fresh = await store.create_session(
        NewSession(
            channel=session.channel,
            user_id=session.user_id,
            language=session.language,
            attributes={**session.attributes, "previous_context": context},
        )
    )
    for key, value in carried.items():
        await store.set_slot(fresh.id, key, value)
    return fresh
