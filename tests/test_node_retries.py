"""Safe retries (issue 10, F2): the same request_id in the same session returns the stored
reply — the turn never runs or is stored twice, also for a concurrent duplicate and across a
node restart (a reply lost to kill -9 after the commit) — and a request without one gets a
node-assigned request_id. Both stores, the real node over gRPC, real SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.grpc_node import demo_key, serving

from kefu.node.serving.server import NodeOptions
from kefu.node.sessions.memory_store import InMemorySessionStore
from kefu.node.sessions.sqlite_store import SQLiteSessionStore
from kefu.node.sessions.store import (
    DuplicateRequest,
    NewSession,
    NewTurn,
    SessionStore,
    TurnRecord,
    TurnRole,
)
from kefu.v1 import node_pb2 as pb


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        yield InMemorySessionStore("acme")
    else:
        s = await SQLiteSessionStore.open(tmp_path, "acme")
        yield s
        await s.close()


def _turns(session_id: str, request_id: str) -> tuple[NewTurn, NewTurn]:
    return (
        NewTurn(session_id=session_id, role=TurnRole.CUSTOMER, text="hi", request_id=request_id),
        NewTurn(session_id=session_id, role=TurnRole.BOT, text="hello", request_id=request_id),
    )


async def test_a_request_id_is_stored_once_per_session(store: SessionStore) -> None:
    s = await store.create_session(NewSession())
    await store.record_turn(TurnRecord(session_id=s.id, turns=_turns(s.id, "r1")))
    with pytest.raises(DuplicateRequest):
        await store.record_turn(TurnRecord(session_id=s.id, turns=_turns(s.id, "r1")))
    with pytest.raises(DuplicateRequest):
        await store.append_turn(_turns(s.id, "r1")[0])
    found = await store.find_request(s.id, "r1")
    assert [(t.seq, t.role) for t in found] == [(1, TurnRole.CUSTOMER), (2, TurnRole.BOT)]
    assert len(await store.get_turns(s.id)) == 2
    # Another session may use the same id; no id at all is never a duplicate.
    other = await store.create_session(NewSession())
    await store.record_turn(TurnRecord(session_id=other.id, turns=_turns(other.id, "r1")))
    for _ in range(2):
        await store.append_turn(NewTurn(session_id=s.id, role=TurnRole.CUSTOMER, text="x"))
    assert await store.find_request(s.id, "nope") == []


def _options(data: Path) -> NodeOptions:
    return NodeOptions(data_dir=data, listen="127.0.0.1:0", metrics_listen=None)


async def test_retry_returns_the_stored_reply_even_across_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with serving(_options(data)) as (node, stub):
        md = demo_key(node)
        first = await stub.Converse(
            pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="我的订单什么时候到"), metadata=md
        )
        assert first.request_id  # none was sent: the node assigned one
        sid = first.session_id

        def ask(rid: str, text: str = "退货怎么弄") -> pb.ConverseRequest:
            return pb.ConverseRequest(session_id=sid, text=text, request_id=rid)

        r1 = await stub.Converse(ask("req-1"), metadata=md)
        again = await stub.Converse(ask("req-1", "another text, same request"), metadata=md)
        assert (again.turn_seq, again.text, again.intent, again.request_id) == (
            r1.turn_seq,
            r1.text,
            r1.intent,
            "req-1",
        )
        # Two copies at once: one runs, the other gets its reply (the commit guard).
        a, b = await asyncio.gather(
            stub.Converse(ask("req-2", "发票"), metadata=md),
            stub.Converse(ask("req-2", "发票"), metadata=md),
        )
        assert a.turn_seq == b.turn_seq and a.text == b.text
        view = await stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=md)
        assert len(view.turns) == 6
        assert sorted(t.request_id for t in view.turns).count("req-1") == 2  # customer + bot

    # The reply to req-1 was "lost"; the client retries against the restarted node.
    async with serving(_options(data)) as (node, stub):
        retry = await stub.Converse(ask("req-1"), metadata=md)
        assert (retry.turn_seq, retry.text) == (r1.turn_seq, r1.text)
        view = await stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=md)
        assert len(view.turns) == 6  # turn count unchanged
