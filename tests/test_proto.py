"""The node's gRPC wire contract: generated code in sync, messages, service shape, real calls.

The end-to-end tests run a real ``grpc.aio`` server on 127.0.0.1 with a tiny servicer defined
here: they check the contract (metadata, unary and streaming calls, status codes, UTF-8 text),
not the node's logic.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor

from kefu.dev import protogen
from kefu.errors import PermanentError
from kefu.v1 import (
    AUTH_METADATA_KEY,
    SERVICE_NAME,
    api_key_from_metadata,
    bearer_metadata,
    node_pb2,
    node_pb2_grpc,
)

API_KEY = "kefu_test_4f9a"
ZH_TEXT = "我的订单 ORD-2024-0012 什么时候到？太慢了😡"
TIMEOUT_S = 10.0


# --- generated code ---------------------------------------------------------------------------


def test_committed_generated_code_is_in_sync(capsys: pytest.CaptureFixture[str]) -> None:
    assert protogen.main(["--check"]) == 0
    assert "in sync" in capsys.readouterr().out


def _copy_checkout(dest: Path) -> Path:
    shutil.copytree(protogen.ROOT / "proto" / "kefu", dest / "proto" / "kefu")
    (dest / "kefu" / "v1").mkdir(parents=True)
    for rel in protogen.expected_outputs(protogen.proto_files()):
        shutil.copy2(protogen.ROOT / rel, dest / rel)
    return dest


def test_check_names_stale_missing_and_orphaned_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy_checkout(tmp_path)
    assert protogen.check(root=root) == []

    proto = root / "proto" / "kefu" / "v1" / "node.proto"
    text = proto.read_text(encoding="utf-8")
    proto.write_text(
        text.replace("message Typing {\n", "message Typing {\n  string hint = 9;\n"),
        encoding="utf-8",
    )
    (root / "kefu" / "v1" / "node_pb2_grpc.py").unlink()
    (root / "kefu" / "v1" / "old_pb2.py").write_text("# left over\n", encoding="utf-8")

    drifts = {d.path: d for d in protogen.check(root=root)}
    assert {p: d.kind for p, d in drifts.items()} == {
        "kefu/v1/node_pb2.py": "stale",
        "kefu/v1/node_pb2.pyi": "stale",
        "kefu/v1/node_pb2_grpc.py": "missing",
        "kefu/v1/old_pb2.py": "orphan",
    }
    assert "hint" in drifts["kefu/v1/node_pb2.pyi"].diff
    assert drifts["kefu/v1/node_pb2.py"].versions is None  # same generator, different .proto

    assert protogen.main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "kefu/v1/node_pb2.py differs" in err
    assert "python -m kefu.dev.protogen" in err

    # Regenerating fixes everything but the orphan, which needs a human decision.
    protogen.generate(root=root)
    assert [(d.path, d.kind) for d in protogen.check(root=root)] == [
        ("kefu/v1/old_pb2.py", "orphan")
    ]


def test_check_blames_the_generator_when_version_stamps_differ(tmp_path: Path) -> None:
    root = _copy_checkout(tmp_path)
    committed = root / "kefu" / "v1" / "node_pb2.py"
    text = committed.read_text(encoding="utf-8")
    committed.write_text(
        text.replace("# Protobuf Python Version: ", "# Protobuf Python Version: 0.0.0-old"),
        encoding="utf-8",
    )
    (drift,) = protogen.check(root=root)
    assert drift.versions is not None and "0.0.0-old" in drift.versions[0]
    assert "pinned grpcio-tools" in drift.describe()


def test_protoc_errors_name_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy_checkout(tmp_path)
    proto = root / "proto" / "kefu" / "v1" / "node.proto"
    proto.write_text(
        proto.read_text(encoding="utf-8").replace("uint32 seq = 1;", "uint32 seq = ;"),
        encoding="utf-8",
    )
    with pytest.raises(PermanentError, match=r"node\.proto:\d+:\d+"):
        protogen.generate(root=root, out_dir=tmp_path / "out")
    assert protogen.main(["--check", "--root", str(root)]) == PermanentError.exit_code
    assert "protoc failed" in capsys.readouterr().err


# --- messages ---------------------------------------------------------------------------------


def _reply(request: node_pb2.ConverseRequest, *, session_id: str = "s-1") -> node_pb2.ConverseReply:
    start = request.text.find("ORD-2024-0012")
    entities = []
    if start >= 0:
        entities.append(
            node_pb2.Entity(
                type="order_id",
                value="ORD-2024-0012",
                normalized="ORD20240012",
                start=start,
                end=start + len("ORD-2024-0012"),
            )
        )
    return node_pb2.ConverseReply(
        session_id=request.session_id or session_id,
        text="您的包裹已到达上海转运中心，预计明天送达。给您带来不便，非常抱歉。",
        language="zh",
        intent="delivery_tracking",
        confidence=0.93,
        sentiment=node_pb2.Sentiment(label="negative", score=0.81),
        scenario="logistics",
        entities=entities,
        model_versions={"intent": "demo-shop-intent@1.0.0", "sentiment": "sentiment@1.0.0"},
        server_latency_us=1834,
        turn_seq=2,
        request_id=request.request_id,
        kb_entry_id="kb-logistics-eta",
    )


def test_messages_round_trip_with_chinese_text() -> None:
    request = node_pb2.ConverseRequest(
        channel=node_pb2.CHANNEL_MINI_PROGRAM,
        user_id="用户-42",
        text=ZH_TEXT,
        entry_path="/订单/详情",
        metadata={"page_title": "订单详情", "app_version": "3.1"},
        request_id="r-1",
    )
    wire = request.SerializeToString()
    assert ZH_TEXT.encode("utf-8") in wire  # UTF-8 on the wire, not an escape scheme
    assert node_pb2.ConverseRequest.FromString(wire) == request

    reply = _reply(request)
    again = node_pb2.ConverseReply.FromString(reply.SerializeToString())
    assert again == reply
    (entity,) = again.entities
    assert ZH_TEXT[entity.start : entity.end] == entity.value  # code-point offsets
    assert again.sentiment.label == "negative" and not again.handoff and not again.clarify

    turn = node_pb2.Turn(seq=1, role=node_pb2.ROLE_USER, text=ZH_TEXT, intent="delivery_tracking")
    turn.created_at.FromJsonString("2025-06-01T08:30:00.123456Z")
    view = node_pb2.SessionView(
        session_id="s-1",
        status=node_pb2.SESSION_STATUS_HANDOFF,
        channel=node_pb2.CHANNEL_APP,
        slots={"order_id": "ORD20240012", "收货城市": "上海"},
        turns=[turn],
    )
    view_again = node_pb2.SessionView.FromString(view.SerializeToString())
    assert view_again == view
    assert view_again.turns[0].created_at.ToMicroseconds() == turn.created_at.ToMicroseconds()
    assert not view_again.HasField("ended_at")  # unset timestamps stay distinguishable


def test_optional_feedback_fields_keep_presence() -> None:
    bare = node_pb2.SubmitFeedbackRequest.FromString(
        node_pb2.SubmitFeedbackRequest(session_id="s-1", rating=4).SerializeToString()
    )
    assert not bare.HasField("turn_seq") and not bare.HasField("resolved")
    assert not bare.HasField("corrected_intent")

    full = node_pb2.SubmitFeedbackRequest(
        session_id="s-1",
        turn_seq=0,
        rating=1,
        resolved=False,
        corrected_intent="",
        comment="没解决",
    )
    full = node_pb2.SubmitFeedbackRequest.FromString(full.SerializeToString())
    # Explicit zero values survive: "turn 0", "not resolved", "cleared intent" are answers.
    assert full.HasField("turn_seq") and full.HasField("resolved")
    assert full.HasField("corrected_intent") and full.comment == "没解决"


def test_converse_event_is_a_oneof() -> None:
    event = node_pb2.ConverseEvent(typing=node_pb2.Typing(session_id="s-1"))
    assert event.WhichOneof("event") == "typing"
    event.handoff.CopyFrom(node_pb2.HandoffNotice(session_id="s-1", handoff_id="h-1"))
    assert event.WhichOneof("event") == "handoff" and not event.HasField("typing")

    agent = node_pb2.AgentReplyRequest(session_id="s-1", handoff_id="h-1", text="您好")
    assert agent.WhichOneof("target") == "handoff_id"  # last one set wins


# --- service shape ----------------------------------------------------------------------------

EXPECTED_METHODS = {
    # name: (input, output, server streaming)
    "Converse": ("ConverseRequest", "ConverseReply", False),
    "ConverseStream": ("ConverseRequest", "ConverseEvent", True),
    "GetSession": ("GetSessionRequest", "SessionView", False),
    "EndSession": ("EndSessionRequest", "EndSessionReply", False),
    "SubmitFeedback": ("SubmitFeedbackRequest", "SubmitFeedbackReply", False),
    "ListSessions": ("ListSessionsRequest", "ListSessionsReply", False),
    "ListHandoffs": ("ListHandoffsRequest", "ListHandoffsReply", False),
    "ClaimHandoff": ("ClaimHandoffRequest", "Handoff", False),
    "AgentReply": ("AgentReplyRequest", "AgentReplyReply", False),
    "CloseHandoff": ("CloseHandoffRequest", "Handoff", False),
}


def test_service_has_the_expected_methods() -> None:
    service = node_pb2.DESCRIPTOR.services_by_name["KefuNode"]
    assert service.full_name == SERVICE_NAME
    found = {
        m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in service.methods
    }
    assert found == EXPECTED_METHODS
    assert not any(m.client_streaming for m in service.methods)
    for name in EXPECTED_METHODS:
        assert callable(getattr(node_pb2_grpc.KefuNodeServicer, name))


# Field numbers are the wire format: changing one silently breaks deployed clients.
FROZEN_FIELDS = {
    "ConverseRequest": {
        "session_id": 1, "channel": 2, "user_id": 3, "text": 4, "entry_path": 5,
        "metadata": 6, "language": 7, "request_id": 8,
    },
    "ConverseReply": {
        "session_id": 1, "text": 2, "language": 3, "intent": 4, "confidence": 5,
        "sentiment": 6, "scenario": 7, "entities": 8, "handoff": 9, "handoff_reason": 10,
        "model_versions": 11, "server_latency_us": 12, "turn_seq": 13, "request_id": 14,
        "kb_entry_id": 15, "clarify": 16, "handoff_id": 17,
    },
    "ConverseEvent": {"typing": 1, "reply": 2, "handoff": 3},
    "Entity": {"type": 1, "value": 2, "normalized": 3, "start": 4, "end": 5},
    "Sentiment": {"label": 1, "score": 2},
}  # fmt: skip


def test_field_numbers_are_frozen() -> None:
    for message, fields in FROZEN_FIELDS.items():
        desc = node_pb2.DESCRIPTOR.message_types_by_name[message]
        assert {f.name: f.number for f in desc.fields} == fields, message


def test_every_enum_starts_with_unspecified_zero() -> None:
    enums = node_pb2.DESCRIPTOR.enum_types_by_name
    assert set(enums) == {
        "Channel", "SessionStatus", "Role", "HandoffStatus", "HandoffResolution"
    }  # fmt: skip
    for enum in enums.values():
        zero = enum.values_by_number[0].name
        prefix = "".join("_" + c if c.isupper() else c for c in enum.name).lstrip("_").upper()
        assert zero == f"{prefix}_UNSPECIFIED", enum.name
        assert all(v.name.startswith(prefix + "_") for v in enum.values), enum.name
    assert [v.name for v in enums["Channel"].values] == [
        "CHANNEL_UNSPECIFIED", "CHANNEL_WEB", "CHANNEL_APP", "CHANNEL_MINI_PROGRAM",
        "CHANNEL_SOCIAL", "CHANNEL_API",
    ]  # fmt: skip
    assert isinstance(node_pb2.DESCRIPTOR, descriptor.FileDescriptor)


# --- metadata helpers -------------------------------------------------------------------------


def test_bearer_metadata_round_trips_and_rejects_bad_keys() -> None:
    assert bearer_metadata(API_KEY) == ((AUTH_METADATA_KEY, f"Bearer {API_KEY}"),)
    assert api_key_from_metadata(bearer_metadata(API_KEY)) == API_KEY
    assert api_key_from_metadata([("Authorization", b"bearer  k-1 ")]) == "k-1"
    for bad in ("", "two words", "密钥", "line\nbreak"):
        with pytest.raises(PermanentError):
            bearer_metadata(bad)
    for metadata in (
        None,
        [],
        [("authorization", "Basic dXNlcjpwYXNz")],
        [("authorization", "Bearer")],
        [("authorization", "Bearer a b")],
        [("authorization", "Bearer a"), ("authorization", "Bearer b")],
        [("authorization", b"Bearer \xff")],
    ):
        assert api_key_from_metadata(metadata) is None, metadata


# --- a real grpc.aio server -------------------------------------------------------------------


class ContractServicer(node_pb2_grpc.KefuNodeServicer):
    """Answers Converse / ConverseStream from the request alone; everything else UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.seen_metadata: list[dict[str, str]] = []

    async def _authenticate(self, context: Any) -> None:
        if api_key_from_metadata(context.invocation_metadata()) != API_KEY:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "missing or unknown API key / API 密钥无效"
            )

    async def Converse(
        self, request: node_pb2.ConverseRequest, context: Any
    ) -> node_pb2.ConverseReply:
        await self._authenticate(context)
        self.seen_metadata.append(dict(request.metadata))
        return _reply(request, session_id="s-new")

    async def ConverseStream(
        self, request: node_pb2.ConverseRequest, context: Any
    ) -> AsyncIterator[node_pb2.ConverseEvent]:
        await self._authenticate(context)
        session_id = request.session_id or "s-new"
        yield node_pb2.ConverseEvent(typing=node_pb2.Typing(session_id=session_id))
        reply = _reply(request, session_id=session_id)
        reply.handoff, reply.handoff_reason, reply.handoff_id = True, "negative_sentiment", "h-7"
        yield node_pb2.ConverseEvent(reply=reply)
        yield node_pb2.ConverseEvent(
            handoff=node_pb2.HandoffNotice(
                session_id=session_id, handoff_id="h-7", reason="negative_sentiment"
            )
        )


@pytest.fixture
async def node() -> AsyncIterator[tuple[node_pb2_grpc.KefuNodeStub, ContractServicer]]:
    servicer = ContractServicer()
    server = grpc.aio.server()
    node_pb2_grpc.add_KefuNodeServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield node_pb2_grpc.KefuNodeStub(channel), servicer
    finally:
        await server.stop(grace=None)


def _request(**kw: Any) -> node_pb2.ConverseRequest:
    base: dict[str, Any] = dict(
        channel=node_pb2.CHANNEL_WEB,
        text=ZH_TEXT,
        metadata={"页面": "订单详情"},
        request_id="r-42",
    )
    base.update(kw)
    return node_pb2.ConverseRequest(**base)


async def test_converse_over_a_real_channel(
    node: tuple[node_pb2_grpc.KefuNodeStub, ContractServicer],
) -> None:
    stub, servicer = node
    reply = await stub.Converse(_request(), metadata=bearer_metadata(API_KEY), timeout=TIMEOUT_S)
    assert isinstance(reply, node_pb2.ConverseReply)
    assert reply.session_id == "s-new" and reply.request_id == "r-42"
    assert reply.text.startswith("您的包裹") and reply.intent == "delivery_tracking"
    (entity,) = reply.entities
    assert ZH_TEXT[entity.start : entity.end] == "ORD-2024-0012"
    assert reply.model_versions["intent"] == "demo-shop-intent@1.0.0"
    assert servicer.seen_metadata == [{"页面": "订单详情"}]

    again = await stub.Converse(
        _request(session_id="s-9"), metadata=bearer_metadata(API_KEY), timeout=TIMEOUT_S
    )
    assert again.session_id == "s-9"


async def test_converse_without_a_key_is_unauthenticated(
    node: tuple[node_pb2_grpc.KefuNodeStub, ContractServicer],
) -> None:
    stub, servicer = node
    for metadata in ((), bearer_metadata("kefu_wrong")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Converse(_request(), metadata=metadata, timeout=TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "API 密钥无效" in (err.value.details() or "")
    assert servicer.seen_metadata == []


async def test_converse_stream_yields_typing_reply_handoff(
    node: tuple[node_pb2_grpc.KefuNodeStub, ContractServicer],
) -> None:
    stub, _ = node
    call = stub.ConverseStream(_request(), metadata=bearer_metadata(API_KEY), timeout=TIMEOUT_S)
    events = [event async for event in call]
    assert [e.WhichOneof("event") for e in events] == ["typing", "reply", "handoff"]
    typing, reply, handoff = events
    assert typing.typing.session_id == reply.reply.session_id == "s-new"
    assert reply.reply.handoff and reply.reply.handoff_id == handoff.handoff.handoff_id == "h-7"
    assert handoff.handoff.reason == "negative_sentiment"
    assert await call.code() == grpc.StatusCode.OK


async def test_unimplemented_methods_answer_unimplemented(
    node: tuple[node_pb2_grpc.KefuNodeStub, ContractServicer],
) -> None:
    stub, _ = node
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetSession(
            node_pb2.GetSessionRequest(session_id="s-1"),
            metadata=bearer_metadata(API_KEY),
            timeout=TIMEOUT_S,
        )
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
