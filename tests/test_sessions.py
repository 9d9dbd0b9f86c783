"""Session storage: one contract run against the in-memory double and real SQLite files, plus the
SQLite adapter's durability, isolation, locking and disk-full behaviour."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kefu.errors import PermanentError, TemporaryError
from kefu.node.sessions.memory_store import InMemorySessionStore
from kefu.node.sessions.sqlite_store import SCHEMA_VERSION, SQLiteSessionStore, SQLiteStoreOptions
from kefu.node.sessions.store import (
    HandoffRequest,
    HandoffStatus,
    InvalidRecord,
    InvalidTenant,
    NewFeedback,
    NewSession,
    NewTurn,
    RecordNotFound,
    Session,
    SessionStatus,
    SessionStore,
    StateConflict,
    StorageBusy,
    StorageCorrupt,
    StorageUnavailable,
    TurnRecord,
    TurnRole,
    start_session,
)

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


class Clock:
    """A controllable clock; the stores take it instead of reading the wall clock."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> datetime:
        self.now += timedelta(**kw)
        return self.now


StoreFactory = Callable[[], Awaitable[SessionStore]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite", "sqlite-encrypted"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> AsyncIterator:
    if request.param == "memory":
        s: SessionStore = InMemorySessionStore("acme", clock=clock)
    elif request.param == "sqlite":
        s = await SQLiteSessionStore.open(tmp_path, "acme", clock=clock)
    else:  # the same contract with encryption at rest (docs/security.md)
        from kefu.node.sessions.sealing import FieldCipher, new_data_key

        cipher = FieldCipher(tenant="acme", keys={"k1": new_data_key()}, current="k1")
        s = await SQLiteSessionStore.open(tmp_path, "acme", clock=clock, cipher=cipher)
    yield s
    await s.close()


async def _open(tmp_path: Path, tenant: str = "acme", **opts: Any) -> SQLiteSessionStore:
    return await SQLiteSessionStore.open(tmp_path, tenant, options=SQLiteStoreOptions(**opts))


async def _get(store: SessionStore, session_id: str) -> Session:
    session = await store.get_session(session_id)
    assert session is not None
    return session


def _turn(session_id: str, text: str = "我的订单什么时候到", **kw: Any) -> NewTurn:
    return NewTurn(session_id=session_id, role=kw.pop("role", TurnRole.CUSTOMER), text=text, **kw)


# --------------------------------------------------------------------------- the contract


async def test_store_satisfies_protocol(store: SessionStore) -> None:
    assert isinstance(store, SessionStore)
    assert store.tenant == "acme"


async def test_session_crud_and_status_rules(store: SessionStore, clock: Clock) -> None:
    new = NewSession(
        channel="mini_program",
        user_id="u-1",
        language="zh",
        scenario="logistics",
        attributes={"vip": True, "tags": ("a", "b"), "城市": "上海"},
    )
    s = await store.create_session(new)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", s.id)
    assert (s.tenant, s.status, s.turn_count) == ("acme", SessionStatus.OPEN, 0)
    assert s.created_at == s.last_active_at == T0
    assert s.attributes == {"vip": True, "tags": ["a", "b"], "城市": "上海"}  # JSON round trip
    assert await store.get_session(s.id) == s
    assert await store.get_session("no-such-session") is None

    clock.advance(minutes=5)
    moved = await store.update_session(
        s.id, status=SessionStatus.HANDED_OFF, scenario="payment", attributes={"vip": False}
    )
    assert (moved.status, moved.scenario, moved.language) == ("handed_off", "payment", "zh")
    assert moved.attributes == {"vip": False}
    assert moved.last_active_at == T0  # an update is not customer activity
    assert await store.get_session(s.id) == moved

    touched = await store.touch_session(s.id)
    assert touched.last_active_at == clock.now
    assert await store.get_session(s.id) == touched

    ended = await store.update_session(s.id, status=SessionStatus.ENDED)
    assert ended.status == SessionStatus.ENDED
    assert await store.update_session(s.id, status=SessionStatus.ENDED) == ended  # no-op
    for attempt in (
        store.update_session(s.id, status=SessionStatus.OPEN),
        store.update_session(s.id, language="en"),
        store.touch_session(s.id),
        store.append_turn(_turn(s.id)),
        store.set_slot(s.id, "order_id", "A1"),
        store.create_handoff(s.id, reason="customer_request"),
    ):
        with pytest.raises(StateConflict):
            await attempt
    with pytest.raises(RecordNotFound):
        await store.touch_session("no-such-session")
    with pytest.raises(InvalidRecord):
        await store.create_session(NewSession(channel="web", attributes={"x": object()}))


async def test_session_ids_are_random_and_unique(store: SessionStore) -> None:
    ids = {(await store.create_session(NewSession())).id for _ in range(100)}
    assert len(ids) == 100


async def test_list_sessions_pages_newest_first_with_filters(
    store: SessionStore, clock: Clock
) -> None:
    made = []
    for i in range(7):
        made.append(await store.create_session(NewSession(user_id=f"u{i % 2}")))
        if i != 3:  # sessions 3 and 4 share a timestamp: the id breaks the tie
            clock.advance(seconds=1)
    await store.update_session(made[0].id, status=SessionStatus.ENDED)

    seen, cursor = [], None
    while True:
        page = await store.list_sessions(limit=3, cursor=cursor)
        seen += page.items
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == 7 == len({s.id for s in seen})
    assert [s.created_at for s in seen] == sorted((s.created_at for s in made), reverse=True)

    open_u0 = await store.list_sessions(status=SessionStatus.OPEN, user_id="u0")
    assert {s.id for s in open_u0.items} == {made[2].id, made[4].id, made[6].id}
    assert open_u0.next_cursor is None
    ended = await store.list_sessions(status=SessionStatus.ENDED)
    assert [s.id for s in ended.items] == [made[0].id]
    with pytest.raises(InvalidRecord):
        await store.list_sessions(cursor="not a cursor")
    with pytest.raises(InvalidRecord):
        await store.list_sessions(limit=0)


async def test_append_turn_orders_turns_and_bumps_session(
    store: SessionStore, clock: Clock
) -> None:
    s = await store.create_session(NewSession(language="zh"))
    clock.advance(seconds=3)
    first = await store.append_turn(
        _turn(
            s.id,
            language="zh",
            intent="delivery_tracking",
            confidence=0.93,
            sentiment="neutral",
            scenario="logistics",
            entities={"order_id": "A1001", "spans": [[3, 5]]},
            model_versions={"intent": "demo-shop-intent@3"},
            latency_ms=12.5,
            request_id="req-1",
        )
    )
    clock.advance(seconds=2)
    second = await store.append_turn(_turn(s.id, "您的包裹明天送达。", role=TurnRole.BOT))
    third = await store.append_turn(
        _turn(s.id, "Let me help.", role=TurnRole.AGENT, handoff=True, handoff_reason="complaint")
    )
    assert [first.seq, second.seq, third.seq] == [1, 2, 3]
    assert first.created_at == T0 + timedelta(seconds=3)
    assert first.entities == {"order_id": "A1001", "spans": [[3, 5]]}

    turns = await store.get_turns(s.id)
    assert turns == [first, second, third]
    assert [t.role for t in turns] == [TurnRole.CUSTOMER, TurnRole.BOT, TurnRole.AGENT]
    assert turns[2].handoff is True and turns[2].handoff_reason == "complaint"
    assert await store.get_turns(s.id, after_seq=1) == [second, third]
    assert await store.get_turns(s.id, tail=2) == [second, third]
    assert await store.get_turns(s.id, after_seq=2, tail=5) == [third]
    assert await store.get_turns("no-such-session") == []

    session = await store.get_session(s.id)
    assert session is not None
    assert session.turn_count == 3 and session.last_active_at == third.created_at
    with pytest.raises(RecordNotFound):
        await store.append_turn(_turn("no-such-session"))
    with pytest.raises(InvalidRecord):
        await store.append_turn(_turn(s.id, entities={"bad": {1, 2}}))
    with pytest.raises(InvalidRecord):
        _turn(s.id, confidence=1.5)
    assert (await _get(store, s.id)).turn_count == 3


async def test_concurrent_appends_get_distinct_gapless_seqs(store: SessionStore) -> None:
    import asyncio

    s = await store.create_session(NewSession())
    done = await asyncio.gather(*(store.append_turn(_turn(s.id, f"m{i}")) for i in range(40)))
    assert sorted(t.seq for t in done) == list(range(1, 41))
    stored = await store.get_turns(s.id)
    assert [t.seq for t in stored] == list(range(1, 41))
    assert {t.text for t in stored} == {f"m{i}" for i in range(40)}
    assert (await _get(store, s.id)).turn_count == 40


async def test_slots_overwrite(store: SessionStore, clock: Clock) -> None:
    s = await store.create_session(NewSession())
    await store.set_slot(s.id, "order_id", "A1")
    await store.set_slot(s.id, "refund", {"amount": 12.5, "items": ("sku-1",)})
    clock.advance(seconds=30)
    again = await store.set_slot(s.id, "order_id", "A2")
    slots = await store.get_slots(s.id)
    assert list(slots) == ["order_id", "refund"]
    assert slots["order_id"] == again
    assert (slots["order_id"].value, slots["order_id"].updated_at) == ("A2", clock.now)
    assert slots["refund"].value == {"amount": 12.5, "items": ["sku-1"]}
    assert await store.get_slots("no-such-session") == {}
    with pytest.raises(RecordNotFound):
        await store.set_slot("no-such-session", "k", 1)
    with pytest.raises(InvalidRecord):
        await store.set_slot(s.id, "k", float("nan"))
    with pytest.raises(InvalidRecord):
        await store.set_slot(s.id, "", 1)


async def test_handoff_lifecycle(store: SessionStore, clock: Clock) -> None:
    s = await store.create_session(NewSession())
    other = await store.create_session(NewSession())
    h = await store.create_handoff(
        s.id, reason="negative_sentiment", summary={"intent": "complaint"}
    )
    assert (h.status, h.agent_id, h.summary) == (HandoffStatus.OPEN, None, {"intent": "complaint"})
    assert (await _get(store, s.id)).status == SessionStatus.HANDED_OFF
    assert await store.get_handoff(h.id) == h
    with pytest.raises(StateConflict):  # one active hand-off per session
        await store.create_handoff(s.id, reason="customer_request")
    clock.advance(seconds=1)
    h2 = await store.create_handoff(other.id, reason="customer_request")

    with pytest.raises(InvalidRecord):
        await store.update_handoff(h.id, status=HandoffStatus.CLAIMED)  # no agent
    claimed = await store.update_handoff(h.id, status=HandoffStatus.CLAIMED, agent_id="agent-7")
    assert (claimed.agent_id, claimed.claimed_at) == ("agent-7", clock.now)
    with pytest.raises(StateConflict):  # a second agent loses the race
        await store.update_handoff(h.id, status=HandoffStatus.CLAIMED, agent_id="agent-8")
    released = await store.update_handoff(h.id, status=HandoffStatus.OPEN)
    assert (released.agent_id, released.claimed_at) == (None, None)
    await store.update_handoff(h.id, status=HandoffStatus.CLAIMED, agent_id="agent-8")
    clock.advance(minutes=4)
    closed = await store.update_handoff(h.id, status=HandoffStatus.CLOSED)
    assert (closed.agent_id, closed.closed_at) == ("agent-8", clock.now)
    assert await store.get_handoff(h.id) == closed
    with pytest.raises(StateConflict):
        await store.update_handoff(h.id, status=HandoffStatus.OPEN)
    with pytest.raises(RecordNotFound):
        await store.update_handoff("nope", status=HandoffStatus.CLOSED)

    queue = await store.list_handoffs(status=HandoffStatus.OPEN)
    assert [x.id for x in queue.items] == [h2.id]
    everything = await store.list_handoffs(limit=1)
    assert [x.id for x in everything.items] == [h.id]  # oldest first
    rest = await store.list_handoffs(limit=1, cursor=everything.next_cursor)
    assert [x.id for x in rest.items] == [h2.id] and rest.next_cursor is None
    third = await store.create_handoff(s.id, reason="customer_request")  # previous one closed
    by_session = await store.list_handoffs(session_id=s.id)
    assert [x.id for x in by_session.items] == [h.id, third.id]


def _record(session_id: str, *, new: Session | None = None, **kw: Any) -> TurnRecord:
    return TurnRecord(
        session_id=session_id,
        new_session=new,
        turns=(
            _turn(session_id, "我的订单 20241125001 什么时候到"),
            _turn(session_id, "预计明天送达 / arriving tomorrow", role=TurnRole.BOT),
        ),
        **kw,
    )


async def test_record_turn_writes_a_whole_turn_at_once(store: SessionStore, clock: Clock) -> None:
    fresh = start_session(NewSession(channel="app"), tenant="acme", now=clock.now)
    assert await store.load_context(fresh.id) is None  # not stored before its first turn
    clock.advance(seconds=5)
    done = await store.record_turn(
        _record(fresh.id, new=fresh, slots={"order_number": "20241125001"}, scenario="logistics")
    )
    assert [t.seq for t in done.turns] == [1, 2] and done.handoff is None
    assert (done.session.turn_count, done.session.scenario) == (2, "logistics")
    assert done.session.last_active_at == clock.now
    context = await store.load_context(fresh.id)
    assert context is not None and context.session == done.session
    assert {k: v.value for k, v in context.slots.items()} == {"order_number": "20241125001"}
    assert [t.text for t in await store.get_turns(fresh.id)][1].startswith("预计明天送达")

    clock.advance(seconds=5)
    angry = HandoffRequest(reason="complaint", summary={"intents": ["complaint"]})
    second = await store.record_turn(_record(fresh.id, handoff=angry, language="zh"))
    assert [t.seq for t in second.turns] == [3, 4]
    assert second.handoff is not None and second.session.status == SessionStatus.HANDED_OFF
    third = await store.record_turn(_record(fresh.id, handoff=angry))
    assert third.handoff is None  # one active hand-off per session: not opened twice
    assert len((await store.list_handoffs(session_id=fresh.id)).items) == 1

    with pytest.raises(StateConflict):  # the same new session twice
        await store.record_turn(_record(fresh.id, new=fresh))
    await store.update_session(fresh.id, status=SessionStatus.ENDED)
    with pytest.raises(StateConflict):
        await store.record_turn(_record(fresh.id, slots={"x": 1}))
    context = await store.load_context(fresh.id)
    assert context is not None and context.session.turn_count == 6 and "x" not in context.slots
    with pytest.raises(RecordNotFound):
        await store.record_turn(_record("no-such-session"))


async def test_group_commit_shares_fsyncs_and_isolates_failures(tmp_path: Path) -> None:
    import asyncio

    store = await _open(tmp_path)
    try:
        ended = await store.create_session(NewSession())
        await store.update_session(ended.id, status=SessionStatus.ENDED)
        fresh = [start_session(NewSession(), tenant="acme", now=T0) for _ in range(40)]
        before = store.stats.groups
        results = await asyncio.gather(
            *(store.record_turn(_record(s.id, new=s)) for s in fresh[:20]),
            store.record_turn(_record(ended.id)),  # fails inside a group of good records
            *(store.record_turn(_record(s.id, new=s)) for s in fresh[20:]),
            return_exceptions=True,
        )
        assert isinstance(results[20], StateConflict)
        good = results[:20] + results[21:]
        assert all(not isinstance(r, BaseException) for r in good)
        assert store.stats.groups - before < 41  # commits were shared
        for s in fresh:
            assert (await _get(store, s.id)).turn_count == 2
        assert await store.get_turns(ended.id) == []
    finally:
        await store.close()


async def test_feedback(store: SessionStore) -> None:
    s = await store.create_session(NewSession())
    await store.append_turn(_turn(s.id))
    await store.update_session(s.id, status=SessionStatus.ENDED)  # feedback arrives after
    whole = await store.add_feedback(NewFeedback(session_id=s.id, rating=5, resolved=True))
    on_turn = await store.add_feedback(
        NewFeedback(session_id=s.id, turn_seq=1, rating=2, corrected_intent="order_query")
    )
    assert on_turn.id > whole.id
    assert (whole.turn_seq, whole.rating, whole.resolved) == (None, 5, True)
    assert await store.list_feedback(s.id) == [whole, on_turn]
    assert await store.list_feedback("no-such-session") == []
    with pytest.raises(RecordNotFound):
        await store.add_feedback(NewFeedback(session_id=s.id, turn_seq=9, rating=3))
    with pytest.raises(RecordNotFound):
        await store.add_feedback(NewFeedback(session_id="nope", rating=3))
    for bad in ({"rating": 6}, {"rating": 0}, {"rating": True}, {}):
        with pytest.raises(InvalidRecord):
            NewFeedback(session_id=s.id, **bad)


async def test_purge_honours_retention(store: SessionStore, clock: Clock) -> None:
    old = await store.create_session(NewSession())
    await store.append_turn(_turn(old.id))
    await store.set_slot(old.id, "order_id", "A1")
    await store.add_feedback(NewFeedback(session_id=old.id, rating=1))
    handoff = await store.create_handoff(old.id, reason="complaint", summary={"text": "差评"})
    revived = await store.create_session(NewSession())
    expired = await store.create_session(NewSession())
    clock.advance(days=10)
    young = await store.create_session(NewSession())
    await store.touch_session(revived.id)  # activity, not creation, counts
    await store.update_session(expired.id, status=SessionStatus.EXPIRED)  # not activity

    retention = timedelta(days=30)
    assert await store.purge_expired(T0 + timedelta(days=29), retention) == 0
    assert await store.purge_expired(T0 + timedelta(days=31), retention) == 2
    assert await store.get_session(old.id) is None
    assert await store.get_session(expired.id) is None
    assert await store.get_turns(old.id) == []
    assert await store.get_slots(old.id) == {}
    assert await store.list_feedback(old.id) == []
    kept = await store.get_handoff(handoff.id)  # audit trail survives, without customer text
    assert kept is not None
    assert (kept.summary, kept.status, kept.reason) == ({}, HandoffStatus.CLOSED, "complaint")
    assert kept.closed_at == T0 + timedelta(days=31)
    assert {s.id for s in (await store.list_sessions()).items} == {revived.id, young.id}
    assert await store.purge_expired(T0 + timedelta(days=31), retention) == 0
    with pytest.raises(InvalidRecord):
        await store.purge_expired(T0, timedelta(0))


async def test_closed_store_refuses_calls_and_closes_twice(store: SessionStore) -> None:
    await store.close()
    await store.close()
    with pytest.raises(StorageUnavailable):
        await store.create_session(NewSession())
    assert issubclass(StorageUnavailable, TemporaryError)


# --------------------------------------------------------------------------- SQLite specifics


async def test_one_wal_file_per_tenant_and_schema_is_idempotent(tmp_path: Path) -> None:
    store = await _open(tmp_path, "acme")
    await store.create_session(NewSession())
    await store.close()
    again = await _open(tmp_path, "acme")  # reopening re-runs the migration check
    assert len((await again.list_sessions()).items) == 1
    await again.close()

    db_file = tmp_path / "tenants" / "acme" / "sessions.db"
    assert store.path == db_file and db_file.is_file()
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        assert conn.execute("SELECT value FROM meta WHERE key='tenant'").fetchone()[0] == "acme"
        plan = " ".join(
            str(r)
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM sessions WHERE last_active_at < ?", ("x",)
            )
        )
        assert "sessions_by_activity" in plan


async def test_tenants_never_see_each_other(tmp_path: Path) -> None:
    acme, globex = await _open(tmp_path, "acme"), await _open(tmp_path, "globex")
    try:
        s = await acme.create_session(NewSession(user_id="shared-user"))
        await acme.append_turn(_turn(s.id))
        assert await globex.get_session(s.id) is None
        assert await globex.get_turns(s.id) == []
        assert (await globex.list_sessions(user_id="shared-user")).items == []
        with pytest.raises(RecordNotFound):
            await globex.append_turn(_turn(s.id))
        assert acme.path != globex.path
    finally:
        await acme.close()
        await globex.close()


@pytest.mark.parametrize("tenant", ["../acme", "..", "a/b", "Acme", "", ".hidden", "x" * 64])
async def test_tenant_id_is_a_slug(tmp_path: Path, tenant: str) -> None:
    with pytest.raises(InvalidTenant):
        await _open(tmp_path / "data", tenant)
    assert not (tmp_path / "data").exists()


async def test_database_of_another_tenant_is_refused(tmp_path: Path) -> None:
    await (await _open(tmp_path, "acme")).close()
    (tmp_path / "tenants" / "globex").mkdir()
    shutil.copy(tmp_path / "tenants/acme/sessions.db", tmp_path / "tenants/globex/sessions.db")
    with pytest.raises(InvalidTenant, match="acme"):
        await _open(tmp_path, "globex")


async def test_newer_schema_and_garbage_files_are_refused(tmp_path: Path) -> None:
    await (await _open(tmp_path, "acme")).close()
    with sqlite3.connect(tmp_path / "tenants/acme/sessions.db") as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 'later')")
    with pytest.raises(PermanentError, match="v99"):
        await _open(tmp_path, "acme")

    bad = tmp_path / "tenants" / "junk" / "sessions.db"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not a database" * 300)
    with pytest.raises(StorageCorrupt):
        await _open(tmp_path, "junk")


KILL_SCRIPT = """
import asyncio, sys, time
from kefu.node.sessions.store import (
    NewSession, NewTurn, TurnRecord, TurnRole, start_session, utc_now,
)
from kefu.node.sessions.sqlite_store import SQLiteSessionStore

async def main():
    store = await SQLiteSessionStore.open(sys.argv[1], "acme")
    s = start_session(NewSession(channel="app"), tenant="acme", now=utc_now())
    turn = NewTurn(session_id=s.id, role=TurnRole.CUSTOMER, text="我要退货 return please")
    done = await store.record_turn(TurnRecord(session_id=s.id, new_session=s, turns=(turn,)))
    print("ACK", s.id, done.turns[0].seq, flush=True)
    time.sleep(120)

asyncio.run(main())
"""


async def test_acknowledged_turn_survives_kill_9(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(KILL_SCRIPT, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "writer never acknowledged"
        line = proc.stdout.readline().split()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert line[0] == "ACK" and line[2] == "1"
    wal = tmp_path / "tenants" / "acme" / "sessions.db-wal"
    assert wal.stat().st_size > 0  # the commit lived only in the log when the process died

    store = await _open(tmp_path, "acme")
    try:
        turns = await store.get_turns(line[1])
        assert [(t.seq, t.text) for t in turns] == [(1, "我要退货 return please")]
        assert (await _get(store, line[1])).turn_count == 1
    finally:
        await store.close()


async def test_two_writers_on_one_file_keep_seqs_gapless(tmp_path: Path) -> None:
    import asyncio

    first, second = await _open(tmp_path), await _open(tmp_path)  # e.g. a restart overlap
    try:
        s = await first.create_session(NewSession())
        await asyncio.gather(
            *(w.append_turn(_turn(s.id, f"m{i}")) for i in range(20) for w in (first, second))
        )
        assert [t.seq for t in await second.get_turns(s.id)] == list(range(1, 41))
        assert (await _get(first, s.id)).turn_count == 40
    finally:
        await first.close()
        await second.close()


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO meta VALUES ('probe', 'x')")
    return conn


async def test_busy_database_is_retried_until_the_lock_goes(tmp_path: Path) -> None:
    store = await _open(tmp_path, busy_timeout_s=0.02, busy_retries=40, backoff_max_s=0.05)
    try:
        s = await store.create_session(NewSession())
        other = _hold_write_lock(store.path)
        threading.Timer(0.3, other.rollback).start()
        turn = await store.append_turn(_turn(s.id))
        other.close()
        assert turn.seq == 1
        assert store.stats.busy_retries > 0 and store.stats.busy_failures == 0
    finally:
        await store.close()


async def test_lock_held_too_long_is_a_temporary_error(tmp_path: Path) -> None:
    store = await _open(tmp_path, busy_timeout_s=0.01, busy_retries=2, backoff_max_s=0.01)
    try:
        s = await store.create_session(NewSession())
        other = _hold_write_lock(store.path)
        with pytest.raises(StorageBusy):
            await store.append_turn(_turn(s.id))
        other.rollback()
        other.close()
        assert store.stats.busy_failures == 1
        assert (await store.append_turn(_turn(s.id))).seq == 1  # nothing half-written
    finally:
        await store.close()


async def test_disk_full_is_unavailable_and_never_corrupts(tmp_path: Path) -> None:
    store = await _open(tmp_path, max_db_bytes=160 * 1024)  # quota via PRAGMA max_page_count
    try:
        s = await store.create_session(NewSession())
        with pytest.raises(StorageUnavailable):
            for _ in range(200):
                await store.append_turn(_turn(s.id, "退款" * 1500))
        assert store.stats.unavailable == 1
        session = await store.get_session(s.id)  # reads still work
        assert session is not None and session.turn_count > 0
        turns = await store.get_turns(s.id)
        assert [t.seq for t in turns] == list(range(1, session.turn_count + 1))  # atomic
    finally:
        await store.close()
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


async def test_bounded_queue_fails_fast_when_full(tmp_path: Path) -> None:
    import asyncio

    store = await _open(tmp_path, max_pending=2)
    try:
        s = await store.create_session(NewSession())
        results = await asyncio.gather(
            *(store.get_session(s.id) for _ in range(5)), return_exceptions=True
        )
        assert [type(r).__name__ for r in results] == ["Session"] * 2 + ["StorageBusy"] * 3
        assert store.stats.rejected == 3
        assert await store.get_session(s.id) is not None  # slots come back
    finally:
        await store.close()
