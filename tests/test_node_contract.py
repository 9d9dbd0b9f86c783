"""The node API's documented contract at its edges (issue 10): forged page tokens, channels,
corrected intents, ending an expired session, the stream's first event, field limits, failed
authentication and the files that hold conversations. Real node, real gRPC, real SQLite."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import stat
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from support.grpc_node import demo_key, serving

from kefu.auth_guard import FailedAuthGuard, peer_address
from kefu.node.serving.limits import FIELD_CHARS, MAX_METADATA_ENTRIES, check_fields
from kefu.node.serving.server import Node, NodeOptions
from kefu.node.sessions.store import SessionStatus
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg

Code = grpc.StatusCode


async def code_of(call: object) -> tuple[Code, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return Code.OK, ""


async def new_session(stub: pbg.KefuNodeStub, md: object, channel: int = pb.CHANNEL_WEB) -> str:
    r = await stub.Converse(pb.ConverseRequest(channel=channel, text="你好"), metadata=md)
    return str(r.session_id)


# --------------------------------------------------------------------------- page tokens


async def test_forged_page_token_is_invalid_argument(node: Node, stub: pbg.KefuNodeStub) -> None:
    md = demo_key(node)
    for stamp in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"):
        token = base64.urlsafe_b64encode(f"{stamp}|x".encode()).decode()
        for call in (
            stub.ListSessions(pb.ListSessionsRequest(page_token=token), metadata=md),
            stub.ListHandoffs(pb.ListHandoffsRequest(page_token=token), metadata=md),
        ):
            code, details = await code_of(call)
            assert code is Code.INVALID_ARGUMENT, details


# --------------------------------------------------------------------------- contract


async def test_channel_is_required_for_a_new_session_and_fixed_after(
    node: Node, stub: pbg.KefuNodeStub
) -> None:
    md = demo_key(node)
    code, details = await code_of(stub.Converse(pb.ConverseRequest(text="你好"), metadata=md))
    assert code is Code.INVALID_ARGUMENT and "channel" in details
    code, _ = await code_of(
        stub.Converse(pb.ConverseRequest(channel=99, text="你好"), metadata=md)  # type: ignore[arg-type]
    )
    assert code is Code.INVALID_ARGUMENT
    sid = await new_session(stub, md, pb.CHANNEL_WEB)
    code, details = await code_of(
        stub.Converse(
            pb.ConverseRequest(session_id=sid, channel=pb.CHANNEL_APP, text="hi"), metadata=md
        )
    )
    assert code is Code.INVALID_ARGUMENT and "channel" in details
    for channel in (pb.CHANNEL_WEB, pb.CHANNEL_UNSPECIFIED):  # same, or "the session's"
        await stub.Converse(
            pb.ConverseRequest(session_id=sid, channel=channel, text="hi"), metadata=md
        )
    view = await stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=md)
    assert view.channel == pb.CHANNEL_WEB


async def test_corrected_intent_must_be_one_of_the_tenants(
    node: Node, stub: pbg.KefuNodeStub
) -> None:
    md = demo_key(node)
    sid = await new_session(stub, md)
    bad = pb.SubmitFeedbackRequest(session_id=sid, corrected_intent="no_such_intent")
    code, _ = await code_of(stub.SubmitFeedback(bad, metadata=md))
    assert code is Code.INVALID_ARGUMENT
    good = pb.SubmitFeedbackRequest(
        session_id=sid, corrected_intent="delivery_tracking", comment="wrong answer"
    )
    await stub.SubmitFeedback(good, metadata=md)
    assert node.registry is not None
    stored = await node.registry.tenants["demo-shop"].store.list_feedback(sid)
    assert [(f.corrected_intent, f.comment) for f in stored] == [
        ("delivery_tracking", "wrong answer")
    ]


async def test_ending_an_expired_or_ended_session_succeeds(
    node: Node, stub: pbg.KefuNodeStub
) -> None:
    md = demo_key(node)
    assert node.registry is not None
    store = node.registry.tenants["demo-shop"].store
    expired = await new_session(stub, md)
    await store.update_session(expired, status=SessionStatus.EXPIRED)
    r = await stub.EndSession(pb.EndSessionRequest(session_id=expired), metadata=md)
    assert r.status == pb.SESSION_STATUS_EXPIRED
    ended = await new_session(stub, md)
    for _ in range(2):
        r = await stub.EndSession(pb.EndSessionRequest(session_id=ended), metadata=md)
        assert r.status == pb.SESSION_STATUS_ENDED


async def test_stream_announces_the_new_sessions_id_first(
    node: Node, stub: pbg.KefuNodeStub
) -> None:
    events = [
        e
        async for e in stub.ConverseStream(
            pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="你好"), metadata=demo_key(node)
        )
    ]
    assert events[0].WhichOneof("event") == "typing"
    assert events[0].typing.session_id
    assert events[0].typing.session_id == events[1].reply.session_id


# --------------------------------------------------------------------------- limits


def test_every_string_and_map_field_of_every_request_has_a_limit() -> None:
    service = pb.DESCRIPTOR.services_by_name["KefuNode"]
    requests = {m.input_type.full_name: m.input_type for m in service.methods}.values()
    assert len(requests) >= 9
    for message in requests:
        for f in message.fields:
            if f.type == FieldDescriptor.TYPE_STRING:
                assert f.name in FIELD_CHARS or f.name == "text", (message.name, f.name)
            elif f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
                assert f.name == "metadata", (message.name, f.name)  # the one map: its limits
    check_fields([("metadata", {f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES)})])


async def test_oversize_fields_are_invalid_argument_and_never_echoed(
    node: Node, stub: pbg.KefuNodeStub
) -> None:
    md = demo_key(node)
    sid = await new_session(stub, md)
    big, mb = "x" * 65_536, "y" * 1_000_000
    web = pb.CHANNEL_WEB
    calls = {
        "get 64 KB id": stub.GetSession(pb.GetSessionRequest(session_id=big), metadata=md),
        "end 64 KB id": stub.EndSession(pb.EndSessionRequest(session_id=big), metadata=md),
        "metadata count": stub.Converse(
            pb.ConverseRequest(
                channel=web, text="hi", metadata={f"k{i}": "v" * 1024 for i in range(2000)}
            ),
            metadata=md,
        ),
        "metadata value": stub.Converse(
            pb.ConverseRequest(channel=web, text="hi", metadata={"k": mb}), metadata=md
        ),
        "entry_path": stub.Converse(
            pb.ConverseRequest(channel=web, text="hi", entry_path=mb), metadata=md
        ),
        "request_id": stub.Converse(
            pb.ConverseRequest(channel=web, text="hi", request_id=mb), metadata=md
        ),
        "user_id": stub.Converse(
            pb.ConverseRequest(channel=web, text="hi", user_id=big), metadata=md
        ),
        "text": stub.Converse(pb.ConverseRequest(channel=web, text=mb), metadata=md),
        "comment": stub.SubmitFeedback(
            pb.SubmitFeedbackRequest(session_id=sid, rating=5, comment=mb), metadata=md
        ),
        "reason": stub.EndSession(pb.EndSessionRequest(session_id=sid, reason=big), metadata=md),
        "page_token": stub.ListSessions(pb.ListSessionsRequest(page_token=big), metadata=md),
        "agent note": stub.CloseHandoff(
            pb.CloseHandoffRequest(handoff_id="h", note=mb), metadata=md
        ),
    }
    for what, call in calls.items():
        code, details = await code_of(call)
        assert code is Code.INVALID_ARGUMENT, (what, code, details[:200])
        assert (
            len(details) < 300
            and "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" not in details
        )
    # The session is untouched by all of that: one turn pair, no feedback.
    assert node.registry is not None
    assert await node.registry.tenants["demo-shop"].store.list_feedback(sid) == []


# --------------------------------------------------------------------------- failed auth


def test_failed_auth_guard_slows_a_peer_that_keeps_failing() -> None:
    now = [0.0]
    guard = FailedAuthGuard(
        free_failures=3, base_delay_s=0.1, max_delay_s=0.4, clock=lambda: now[0]
    )
    assert [guard.failed("p") for _ in range(7)] == [0, 0, 0, 0.1, 0.2, 0.4, 0.4]
    assert guard.failed("other") == 0  # per peer
    now[0] += guard.window_s + 1
    assert guard.failed("p") == 0 and guard.failures("p") == 1  # the window passed
    assert guard.log_due() and not guard.log_due()
    now[0] += guard.log_every_s
    assert guard.log_due()
    assert peer_address("ipv4:127.0.0.1:51234") == "ipv4:127.0.0.1"
    assert peer_address("ipv6:[::1]:443") == "ipv6:[::1]"


async def test_wrong_keys_are_counted_logged_and_slowed_without_blocking_others(
    node: Node, stub: pbg.KefuNodeStub, caplog: pytest.LogCaptureFixture
) -> None:
    assert node.api is not None
    node.api.auth_guard = FailedAuthGuard(free_failures=3, base_delay_s=0.3, max_delay_s=0.3)
    wrong = bearer_metadata("kefu_wrong")
    caplog.set_level(logging.WARNING, logger="kefu.node.grpc")
    for _ in range(3):
        code, _ = await code_of(stub.Converse(pb.ConverseRequest(text="hi"), metadata=wrong))
        assert code is Code.UNAUTHENTICATED
    t0 = time.monotonic()
    slow = asyncio.ensure_future(
        code_of(stub.Converse(pb.ConverseRequest(text="hi"), metadata=wrong))
    )
    await asyncio.sleep(0.05)
    sid = await new_session(stub, demo_key(node))  # served while the failing peer waits
    assert sid and not slow.done()
    assert (await slow)[0] is Code.UNAUTHENTICATED and time.monotonic() - t0 >= 0.3
    await code_of(stub.Converse(pb.ConverseRequest(text="hi")))  # no key at all
    warnings = [r for r in caplog.records if "authentication refused" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: one line for the whole burst
    body = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics").read().decode()
    assert 'kefu_auth_failures_total{reason="unknown_key",tenant="-"} 4.0' in body
    assert 'kefu_auth_failures_total{reason="missing_key",tenant="-"} 1.0' in body


# --------------------------------------------------------------------------- files


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_conversation_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        data = tmp_path / "fresh" / "data"
        opts = NodeOptions(data_dir=data, listen="127.0.0.1:0", metrics_listen=None)
        async with serving(opts) as (node, stub):
            await new_session(stub, demo_key(node))
            db = data / "tenants" / "demo-shop" / "sessions.db"
            wal, shm = db.with_name("sessions.db-wal"), db.with_name("sessions.db-shm")
            assert wal.exists() and shm.exists()
            assert {p.name: _mode(p) for p in (db, wal, shm)} == dict.fromkeys(
                (db.name, wal.name, shm.name), 0o600
            )
            for d in (data, data / "tenants", db.parent):
                assert _mode(d) == 0o700, d
        # An existing data directory made by an older version (0755, a 0644 database) is
        # tightened at the next start; a service install's 0750 stays 0750.
        os.chmod(data, 0o755)
        os.chmod(db, 0o644)
        async with Node(opts):
            assert _mode(data) == 0o750 and _mode(db) == 0o600
    finally:
        os.umask(old)
