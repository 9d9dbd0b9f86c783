"""The :class:`~kefu.node.sessions.store.SessionStore` contract in plain dicts: the unit-test
double.

It follows every rule the SQLite store follows (the contract tests in tests/test_sessions.py
run against both), so the pure core can be tested without files.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from kefu.node.sessions.store import (
    DuplicateRequest,
    Feedback,
    Handoff,
    HandoffStatus,
    NewFeedback,
    NewSession,
    NewTurn,
    Page,
    RecordedTurn,
    RecordNotFound,
    Session,
    SessionContext,
    SessionStatus,
    Slot,
    StateConflict,
    StorageUnavailable,
    Turn,
    TurnRecord,
    apply_turn_record,
    as_utc,
    check_limit,
    check_retention,
    decode_cursor,
    encode_cursor,
    ensure_writable,
    json_clone,
    move_handoff,
    open_handoff,
    patch_session,
    start_session,
    stored_feedback,
    stored_turn,
    to_iso,
    utc_now,
    validate_tenant_id,
)

__all__ = ["InMemorySessionStore"]


class InMemorySessionStore:
    """The :class:`SessionStore` contract in plain dicts, for unit tests of the pure core."""

    def __init__(self, tenant: str = "demo-shop", *, clock: Callable[[], datetime] = utc_now):
        self._tenant = validate_tenant_id(tenant)
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._turns: dict[str, list[Turn]] = {}
        self._slots: dict[str, dict[str, Slot]] = {}
        self._handoffs: dict[str, Handoff] = {}
        self._feedback: dict[str, list[Feedback]] = {}
        self._feedback_ids = 0
        self._closed = False

    @property
    def tenant(self) -> str:
        return self._tenant

    async def __aenter__(self) -> InMemorySessionStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _now(self) -> datetime:
        if self._closed:
            raise StorageUnavailable("session store is closed / 会话存储已关闭")
        return as_utc(self._clock())

    def _session(self, session_id: str, *, writable: bool = True) -> Session:
        self._now()
        if session_id not in self._sessions:
            raise RecordNotFound("session", session_id)
        if writable:
            ensure_writable(self._sessions[session_id])
        return self._sessions[session_id]

    def _put(self, session: Session) -> Session:
        self._sessions[session.id] = session
        return copy.deepcopy(session)

    async def create_session(self, new: NewSession) -> Session:
        return self._put(start_session(new, tenant=self._tenant, now=self._now()))

    async def get_session(self, session_id: str) -> Session | None:
        self._now()
        return copy.deepcopy(self._sessions.get(session_id))

    async def list_sessions(
        self,
        *,
        status: SessionStatus | None = None,
        user_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Session]:
        self._now()
        rows = [
            s
            for s in self._sessions.values()
            if status in (None, s.status) and user_id in (None, s.user_id)
        ]
        return _page(rows, limit=limit, cursor=cursor, newest_first=True)

    async def touch_session(self, session_id: str) -> Session:
        session = self._session(session_id)
        return self._put(replace(session, last_active_at=self._now()))

    async def update_session(
        self,
        session_id: str,
        *,
        status: SessionStatus | None = None,
        language: str | None = None,
        scenario: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Session:
        session = self._session(session_id, writable=False)
        patched = patch_session(
            session, status=status, language=language, scenario=scenario, attributes=attributes
        )
        return copy.deepcopy(session) if patched is None else self._put(patched)

    async def append_turn(self, turn: NewTurn) -> Turn:
        session = self._session(turn.session_id)
        stored = stored_turn(turn, seq=session.turn_count + 1, now=self._now())
        self._check_new_requests([stored])
        self._turns.setdefault(session.id, []).append(stored)
        self._put(replace(session, turn_count=stored.seq, last_active_at=stored.created_at))
        return copy.deepcopy(stored)

    def _check_new_requests(self, turns: list[Turn]) -> None:
        for t in turns:
            if t.request_id is not None and any(
                old.role is t.role and old.request_id == t.request_id
                for old in self._turns.get(t.session_id, [])
            ):
                raise DuplicateRequest(t.session_id, t.request_id)

    async def find_request(self, session_id: str, request_id: str) -> list[Turn]:
        return copy.deepcopy(
            [t for t in self._turns.get(session_id, []) if t.request_id == request_id]
        )

    async def get_turns(
        self, session_id: str, *, after_seq: int = 0, tail: int | None = None
    ) -> list[Turn]:
        self._now()
        turns = [t for t in self._turns.get(session_id, []) if t.seq > after_seq]
        if tail is not None:
            turns = turns[len(turns) - max(tail, 0) :]
        return copy.deepcopy(turns)

    async def set_slot(self, session_id: str, key: str, value: Any) -> Slot:
        self._session(session_id)
        slot = Slot(
            session_id=session_id,
            key=key,
            value=json_clone(value, what="slot value"),
            updated_at=self._now(),
        )
        self._slots.setdefault(session_id, {})[key] = slot
        return copy.deepcopy(slot)

    async def get_slots(self, session_id: str) -> dict[str, Slot]:
        self._now()
        return copy.deepcopy(dict(sorted(self._slots.get(session_id, {}).items())))

    async def create_handoff(
        self, session_id: str, *, reason: str, summary: Mapping[str, Any] | None = None
    ) -> Handoff:
        session = self._session(session_id)
        handoff = open_handoff(session_id, reason=reason, summary=summary, now=self._now())
        if any(
            h.session_id == session_id and h.status != HandoffStatus.CLOSED
            for h in self._handoffs.values()
        ):
            raise StateConflict(
                f"session {session_id!r} already has an active hand-off / 该会话已有进行中的转人工"
            )
        self._handoffs[handoff.id] = handoff
        self._put(replace(session, status=SessionStatus.HANDED_OFF))
        return copy.deepcopy(handoff)

    async def get_handoff(self, handoff_id: str) -> Handoff | None:
        self._now()
        return copy.deepcopy(self._handoffs.get(handoff_id))

    async def update_handoff(
        self, handoff_id: str, *, status: HandoffStatus, agent_id: str | None = None
    ) -> Handoff:
        now = self._now()
        if handoff_id not in self._handoffs:
            raise RecordNotFound("handoff", handoff_id)
        updated = move_handoff(self._handoffs[handoff_id], status, agent_id, now)
        self._handoffs[handoff_id] = updated
        return copy.deepcopy(updated)

    async def list_handoffs(
        self,
        *,
        status: HandoffStatus | None = None,
        session_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Handoff]:
        self._now()
        rows = [
            h
            for h in self._handoffs.values()
            if status in (None, h.status) and session_id in (None, h.session_id)
        ]
        return _page(rows, limit=limit, cursor=cursor, newest_first=False)

    async def add_feedback(self, new: NewFeedback) -> Feedback:
        session = self._session(new.session_id, writable=False)
        if new.turn_seq is not None and new.turn_seq > session.turn_count:
            raise RecordNotFound("turn", f"{new.session_id}#{new.turn_seq}")
        self._feedback_ids += 1
        stored = stored_feedback(new, feedback_id=self._feedback_ids, now=self._now())
        self._feedback.setdefault(new.session_id, []).append(stored)
        return copy.deepcopy(stored)

    async def list_feedback(self, session_id: str) -> list[Feedback]:
        self._now()
        return copy.deepcopy(self._feedback.get(session_id, []))

    async def load_context(self, session_id: str) -> SessionContext | None:
        self._now()
        session = self._sessions.get(session_id)
        if session is None:
            return None
        slots = dict(sorted(self._slots.get(session_id, {}).items()))
        return SessionContext(session=copy.deepcopy(session), slots=copy.deepcopy(slots))

    async def record_turn(self, record: TurnRecord) -> RecordedTurn:
        now = self._now()
        if record.new_session is not None:
            if record.session_id in self._sessions:
                raise StateConflict(f"session {record.session_id!r} already exists")
            session = record.new_session
        else:
            session = self._session(record.session_id)
        active = any(
            h.session_id == session.id and h.status != HandoffStatus.CLOSED
            for h in self._handoffs.values()
        )
        after, turns, handoff = apply_turn_record(
            session, record, now=now, has_active_handoff=active
        )
        self._check_new_requests(turns)
        slots = {
            key: Slot(
                session_id=session.id,
                key=key,
                value=json_clone(value, what="slot value"),
                updated_at=now,
            )
            for key, value in record.slots.items()
        }
        # Everything above can fail; nothing below can: the record lands whole or not at all.
        self._turns.setdefault(session.id, []).extend(turns)
        self._slots.setdefault(session.id, {}).update(slots)
        if handoff is not None:
            self._handoffs[handoff.id] = handoff
        return RecordedTurn(
            session=self._put(after), turns=copy.deepcopy(turns), handoff=copy.deepcopy(handoff)
        )

    async def purge_expired(self, now: datetime, retention: timedelta) -> int:
        self._now()
        now = as_utc(now)
        cutoff = now - check_retention(retention)
        gone = {s.id for s in self._sessions.values() if s.last_active_at < cutoff}
        for sid in gone:
            del self._sessions[sid]
            self._turns.pop(sid, None)
            self._slots.pop(sid, None)
            self._feedback.pop(sid, None)
        for hid, h in self._handoffs.items():
            if h.session_id in gone:
                self._handoffs[hid] = replace(
                    h, summary={}, status=HandoffStatus.CLOSED, closed_at=h.closed_at or now
                )
        return len(gone)

    async def close(self) -> None:
        self._closed = True


_Keyed = TypeVar("_Keyed", Session, Handoff)


def _page(
    rows: list[_Keyed], *, limit: int, cursor: str | None, newest_first: bool
) -> Page[_Keyed]:
    check_limit(limit)

    def key(r: _Keyed) -> tuple[str, str]:
        return to_iso(r.created_at), r.id

    rows.sort(key=key, reverse=newest_first)
    if cursor is not None:
        after = decode_cursor(cursor)
        rows = [r for r in rows if (key(r) < after if newest_first else key(r) > after)]
    items = copy.deepcopy(rows[:limit])
    more = len(rows) > limit
    return Page(
        items=items, next_cursor=encode_cursor(items[-1].created_at, items[-1].id) if more else None
    )
