"""Per-tenant session storage: the domain records, the ``SessionStore`` seam, an in-memory double.

The dialog core keeps structured multi-turn state (sessions, turns, slots, hand-offs to human
agents, customer feedback) behind :class:`SessionStore`. A store serves exactly one tenant:
isolation is structural (the SQLite adapter opens one database file per tenant), so a session
id from another tenant simply does not exist in this store.

Rules every implementation follows (the contract tests run against both):

* ``ENDED`` and ``EXPIRED`` sessions are read-only: appending turns, setting slots, touching,
  changing fields or opening a hand-off raise :class:`StateConflict`. Feedback may still be
  added (it usually arrives after the end); re-setting the same status is a no-op.
* ``append_turn`` assigns ``seq`` (1, 2, …) and bumps ``turn_count``/``last_active_at`` in one
  transaction; once it returns, the turn is durable.
* ``update_session`` is not activity (a timeout job marking a session EXPIRED must not delay
  its purge); ``touch_session`` and ``append_turn`` are.
* At most one hand-off per session is not CLOSED; opening one marks the session HANDED_OFF.
  Closing it leaves the session status to the dialog core (back to OPEN, or ENDED).
* ``purge_expired`` deletes sessions idle longer than the retention period with their turns,
  slots and feedback. Hand-off records are kept for the agent-workload audit trail (who claimed
  what, when), but their ``summary`` (the only part that may quote the customer) is wiped and
  any still-active hand-off is closed.
* JSON-valued fields (attributes, entities, slot values, summaries) round-trip through JSON in
  both stores, so tuples come back as lists and a non-JSON value is an :class:`InvalidRecord`.
* Collection getters (``get_turns``, ``get_slots``, ``list_feedback``) return empty results for
  an unknown session; mutations raise :class:`RecordNotFound`.

This module is pure: no sqlite3, no I/O.

The errors, statuses and checks are in :mod:`kefu.node.sessions.session_rules` and re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from kefu.node.sessions.session_rules import (
    _HANDOFF_MOVES,
    MAX_COMMENT_CHARS,
    MAX_PAGE_SIZE,
    MAX_TEXT_CHARS,
    TERMINAL_STATUSES,
    DuplicateRequest,
    HandoffStatus,
    InvalidRecord,
    InvalidTenant,
    RecordNotFound,
    SessionStatus,
    StateConflict,
    StorageBusy,
    StorageCorrupt,
    StorageUnavailable,
    TurnRole,
    as_utc,
    check_limit,
    check_retention,
    check_session_move,
    check_text,
    decode_cursor,
    encode_cursor,
    from_iso,
    json_clone,
    json_dumps,
    new_record_id,
    to_iso,
    utc_now,
    validate_tenant_id,
)


def ensure_writable(session: Session) -> None:
    if session.status in TERMINAL_STATUSES:
        zh = "已结束" if session.status == SessionStatus.ENDED else "已过期"
        raise StateConflict(
            f"session {session.id!r} is {session.status} and read-only / "
            f"会话 {session.id!r} {zh}，只读"
        )


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, kw_only=True, slots=True)
class NewSession:
    """What the caller chooses when opening a session; the store adds id, tenant, times."""

    channel: str = "web"  # web, app, mini_program, social, … (the access layer owns the list)
    user_id: str | None = None
    language: str | None = None
    scenario: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_text("channel", self.channel, 64, required=True)
        check_text("user_id", self.user_id, 256)
        check_text("language", self.language, 32)
        check_text("scenario", self.scenario, 128)


@dataclass(frozen=True, kw_only=True, slots=True)
class Session(NewSession):
    id: str
    tenant: str
    created_at: datetime
    last_active_at: datetime
    status: SessionStatus = SessionStatus.OPEN
    turn_count: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class NewTurn:
    """A turn to append; the store assigns ``seq`` and ``created_at`` (see :class:`Turn`)."""

    session_id: str
    role: TurnRole
    text: str
    language: str | None = None
    intent: str | None = None
    confidence: float | None = None
    sentiment: str | None = None  # negative / neutral / positive
    scenario: str | None = None
    entities: dict[str, Any] = field(default_factory=dict)
    handoff: bool = False
    handoff_reason: str | None = None  # a short code, never customer text
    model_versions: dict[str, str] = field(default_factory=dict)  # component → version
    latency_ms: float | None = None
    request_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.role, TurnRole):
            raise InvalidRecord(f"role must be one of {[r.value for r in TurnRole]}")
        check_text("text", self.text, MAX_TEXT_CHARS)
        if self.confidence is not None and not 0.0 <= self.confidence <= 1.0:
            raise InvalidRecord("confidence must be within 0..1 / 置信度须在 0 到 1 之间")
        if self.latency_ms is not None and self.latency_ms < 0:
            raise InvalidRecord("latency_ms must not be negative / 延迟不能为负")


@dataclass(frozen=True, kw_only=True, slots=True)
class Turn(NewTurn):
    seq: int  # 1-based position within the session
    created_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class Slot:
    session_id: str
    key: str
    value: Any  # any JSON value
    updated_at: datetime

    def __post_init__(self) -> None:
        check_text("slot key", self.key, 128, required=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Handoff:
    id: str
    session_id: str
    reason: str  # a short code such as "customer_request", "negative_sentiment"
    summary: dict[str, Any] = field(default_factory=dict)  # context for the agent; purge wipes it
    status: HandoffStatus = HandoffStatus.OPEN
    agent_id: str | None = None
    created_at: datetime
    claimed_at: datetime | None = None
    closed_at: datetime | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class NewFeedback:
    session_id: str
    turn_seq: int | None = None  # None: about the whole session
    rating: int | None = None  # 1-5
    resolved: bool | None = None
    corrected_intent: str | None = None  # an operator's correction, for retraining
    comment: str | None = None  # free text from the customer or reviewer

    def __post_init__(self) -> None:
        if self.rating is not None and (isinstance(self.rating, bool) or not 1 <= self.rating <= 5):
            raise InvalidRecord("rating must be 1-5 / 评分须为 1-5")
        if (
            self.rating is None
            and self.resolved is None
            and self.corrected_intent is None
            and not self.comment
        ):
            raise InvalidRecord("feedback is empty / 反馈内容为空")
        if self.turn_seq is not None and self.turn_seq < 1:
            raise InvalidRecord("turn_seq must be >= 1 / 轮次序号须 >= 1")
        check_text("corrected_intent", self.corrected_intent, 128)
        check_text("comment", self.comment, MAX_COMMENT_CHARS)


@dataclass(frozen=True, kw_only=True, slots=True)
class Feedback(NewFeedback):
    id: int
    created_at: datetime


T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class Page(Generic[T]):
    items: list[T] = field(default_factory=list)
    next_cursor: str | None = None  # pass back to get the following page; None: no more


@dataclass(frozen=True, kw_only=True, slots=True)
class HandoffRequest:
    reason: str  # a short code, never customer text
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class TurnRecord:
    """Everything one customer turn writes, committed in one transaction: all of it or none.

    A turn used to be five transactions (customer turn, slots, hand-off, bot turn, session);
    now it is one, and the SQLite store commits several concurrent turns with one fsync.
    """

    session_id: str
    #: The session this turn opens (built with :func:`start_session`); inserted first.
    new_session: Session | None = None
    turns: tuple[NewTurn, ...] = ()
    slots: Mapping[str, Any] = field(default_factory=dict)  # upserted, JSON values
    language: str | None = None  # session fields to change; None = leave as is
    scenario: str | None = None
    #: Opened unless the session already has an active hand-off (then it is not repeated).
    handoff: HandoffRequest | None = None

    def __post_init__(self) -> None:
        if self.new_session is not None and self.new_session.id != self.session_id:
            raise InvalidRecord("new_session.id differs from session_id")
        if any(t.session_id != self.session_id for t in self.turns):
            raise InvalidRecord("every turn of a TurnRecord belongs to its session")
        for key in self.slots:
            check_text("slot key", key, 128, required=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordedTurn:
    session: Session  # as it is after the record
    turns: list[Turn]
    handoff: Handoff | None = None  # the hand-off this record opened, if any


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionContext:
    """What a turn needs to read first: the session and its slots, from one consistent read."""

    session: Session
    slots: dict[str, Slot]


def apply_turn_record(
    session: Session, record: TurnRecord, *, now: datetime, has_active_handoff: bool
) -> tuple[Session, list[Turn], Handoff | None]:
    """The pure part of recording a turn, shared by both stores: checks, seqs, the new session."""
    ensure_writable(session)
    turns = [
        stored_turn(t, seq=session.turn_count + i, now=now) for i, t in enumerate(record.turns, 1)
    ]
    handoff = None
    if record.handoff is not None and not has_active_handoff:
        handoff = open_handoff(
            session.id, reason=record.handoff.reason, summary=record.handoff.summary, now=now
        )
    check_text("language", record.language, 32)
    check_text("scenario", record.scenario, 128)
    after = replace(
        session,
        turn_count=session.turn_count + len(turns),
        last_active_at=now if turns else session.last_active_at,
        language=session.language if record.language is None else record.language,
        scenario=session.scenario if record.scenario is None else record.scenario,
        status=SessionStatus.HANDED_OFF if handoff is not None else session.status,
    )
    return after, turns, handoff


# Constructors both stores use, so stored records are built (and JSON-normalised) one way.


def start_session(
    new: NewSession, *, tenant: str, now: datetime, session_id: str | None = None
) -> Session:
    """A new session; ``session_id`` when the caller announced the id already (a stream)."""
    attributes = json_clone(new.attributes, what="attributes")
    base = {f.name: getattr(new, f.name) for f in fields(NewSession)} | {"attributes": attributes}
    sid = session_id or new_record_id()
    return Session(**base, id=sid, tenant=tenant, created_at=now, last_active_at=now)


def stored_turn(new: NewTurn, *, seq: int, now: datetime) -> Turn:
    base = {f.name: getattr(new, f.name) for f in fields(NewTurn)}
    base["entities"] = json_clone(new.entities, what="entities")
    base["model_versions"] = json_clone(new.model_versions, what="model_versions")
    return Turn(**base, seq=seq, created_at=now)


def stored_feedback(new: NewFeedback, *, feedback_id: int, now: datetime) -> Feedback:
    base = {f.name: getattr(new, f.name) for f in fields(NewFeedback)}
    return Feedback(**base, id=feedback_id, created_at=now)


def open_handoff(
    session_id: str, *, reason: str, summary: Mapping[str, Any] | None, now: datetime
) -> Handoff:
    check_text("reason", reason, 128, required=True)
    return Handoff(
        id=new_record_id(),
        session_id=session_id,
        reason=reason,
        created_at=now,
        summary=json_clone(dict(summary or {}), what="summary"),
    )


def move_handoff(
    handoff: Handoff, status: HandoffStatus, agent_id: str | None, now: datetime
) -> Handoff:
    """The hand-off after a checked status change."""
    if status not in _HANDOFF_MOVES[handoff.status]:
        raise StateConflict(
            f"hand-off cannot go from {handoff.status} to {status} / "
            f"转人工记录不能从 {handoff.status} 变为 {status}"
        )
    if status == HandoffStatus.CLAIMED:
        check_text("agent_id", agent_id, 128, required=True)
        return replace(handoff, status=status, agent_id=agent_id, claimed_at=now)
    if status == HandoffStatus.OPEN:  # released back to the queue
        return replace(handoff, status=status, agent_id=None, claimed_at=None)
    return replace(handoff, status=status, agent_id=agent_id or handoff.agent_id, closed_at=now)


def patch_session(
    session: Session,
    *,
    status: SessionStatus | None,
    language: str | None,
    scenario: str | None,
    attributes: Mapping[str, Any] | None,
) -> Session | None:
    """The session after ``update_session``, or None when nothing changes."""
    check_text("language", language, 32)
    check_text("scenario", scenario, 128)
    if status is not None:
        check_session_move(session.status, status)
    if (
        language is None
        and scenario is None
        and attributes is None
        and (status is None or status == session.status)
    ):
        return None
    ensure_writable(session)
    return replace(
        session,
        status=status or session.status,
        language=session.language if language is None else language,
        scenario=session.scenario if scenario is None else scenario,
        attributes=(
            session.attributes
            if attributes is None
            else json_clone(dict(attributes), what="attributes")
        ),
    )


# --------------------------------------------------------------------------- the seam


@runtime_checkable
class SessionStore(Protocol):
    """Everything the node needs from session storage, for one tenant.

    ``list_sessions`` is newest first, ``list_handoffs`` oldest first (an agent queue); both
    are keyset-paged through ``Page.next_cursor``. ``get_turns`` returns turns with
    ``seq > after_seq`` in order, and ``tail`` keeps only the last N of them.
    ``update_session``'s ``attributes`` replaces the whole dict. ``purge_expired`` deletes
    sessions whose last activity is before ``now - retention`` and returns how many.
    ``close`` is idempotent.

    A request id is unique per session and role: ``record_turn`` and ``append_turn`` raise
    :class:`DuplicateRequest` (writing nothing) when the session already has a turn of that
    role with that ``request_id``; ``find_request`` returns the turns carrying it, by seq.
    """

    @property
    def tenant(self) -> str: ...
    async def create_session(self, new: NewSession) -> Session: ...
    async def get_session(self, session_id: str) -> Session | None: ...
    async def list_sessions(
        self,
        *,
        status: SessionStatus | None = None,
        user_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Session]: ...
    async def touch_session(self, session_id: str) -> Session: ...
    async def update_session(
        self,
        session_id: str,
        *,
        status: SessionStatus | None = None,
        language: str | None = None,
        scenario: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Session: ...
    async def append_turn(self, turn: NewTurn) -> Turn: ...
    async def get_turns(
        self, session_id: str, *, after_seq: int = 0, tail: int | None = None
    ) -> list[Turn]: ...
    async def find_request(self, session_id: str, request_id: str) -> list[Turn]: ...
    async def set_slot(self, session_id: str, key: str, value: Any) -> Slot: ...
    async def get_slots(self, session_id: str) -> dict[str, Slot]: ...
    async def create_handoff(
        self, session_id: str, *, reason: str, summary: Mapping[str, Any] | None = None
    ) -> Handoff: ...
    async def get_handoff(self, handoff_id: str) -> Handoff | None: ...
    async def update_handoff(
        self, handoff_id: str, *, status: HandoffStatus, agent_id: str | None = None
    ) -> Handoff: ...
    async def list_handoffs(
        self,
        *,
        status: HandoffStatus | None = None,
        session_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Handoff]: ...
    async def add_feedback(self, new: NewFeedback) -> Feedback: ...
    async def list_feedback(self, session_id: str) -> list[Feedback]: ...
    async def load_context(self, session_id: str) -> SessionContext | None: ...
    async def record_turn(self, record: TurnRecord) -> RecordedTurn: ...
    async def purge_expired(self, now: datetime, retention: timedelta) -> int: ...
    async def close(self) -> None: ...


__all__ = [
    "MAX_PAGE_SIZE",
    "MAX_TEXT_CHARS",
    "TERMINAL_STATUSES",
    "DuplicateRequest",
    "Feedback",
    "Handoff",
    "HandoffRequest",
    "HandoffStatus",
    "InvalidRecord",
    "InvalidTenant",
    "NewFeedback",
    "NewSession",
    "NewTurn",
    "Page",
    "RecordNotFound",
    "RecordedTurn",
    "Session",
    "SessionContext",
    "SessionStatus",
    "SessionStore",
    "Slot",
    "StateConflict",
    "StorageBusy",
    "StorageCorrupt",
    "StorageUnavailable",
    "Turn",
    "TurnRecord",
    "TurnRole",
    "apply_turn_record",
    "as_utc",
    "check_limit",
    "check_retention",
    "decode_cursor",
    "encode_cursor",
    "from_iso",
    "json_dumps",
    "new_record_id",
    "to_iso",
    "utc_now",
    "validate_tenant_id",
]
