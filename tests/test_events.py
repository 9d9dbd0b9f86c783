"""The conversation service's typed events: delivery rules of the hub, and what a real node
emits over real gRPC (metrics and the agent's telemetry subscribe to the same events)."""

from __future__ import annotations

import logging

import grpc
import pytest
from support.grpc_node import demo_key

from kefu.errors import PermanentError
from kefu.node.dialog.events import (
    MAX_SUBSCRIBERS,
    AccessRefused,
    ConversationEvent,
    EventHub,
    FeedbackGiven,
    HandoffStarted,
    RequestFailed,
    SessionEnded,
    TurnServed,
)
from kefu.node.serving.server import Node
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg


def test_a_failing_subscriber_is_isolated_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = EventHub(clock=lambda: 100.0)
    seen: list[str] = []

    def broken(_: ConversationEvent) -> None:
        raise RuntimeError("boom")

    hub.subscribe(broken, RequestFailed)
    hub.subscribe(lambda e: seen.append(e.code), RequestFailed)
    with caplog.at_level(logging.ERROR, logger="kefu.node.events"):
        for code in ("INTERNAL", "NOT_FOUND"):
            hub.emit(RequestFailed(tenant="t", code=code))
    assert seen == ["INTERNAL", "NOT_FOUND"]  # the other subscriber got both
    assert hub.failures == 2
    assert [r.getMessage().count("boom") for r in caplog.records] == [1]  # rate-limited


def test_subscribers_get_only_their_types_and_the_hub_is_bounded() -> None:
    hub = EventHub()
    got: list[ConversationEvent] = []
    unsubscribe = hub.subscribe(got.append, SessionEnded, AccessRefused)
    assert hub.wants(SessionEnded) and not hub.wants(FeedbackGiven)
    hub.emit(SessionEnded(tenant="t", session_id="s"))
    hub.emit(RequestFailed(tenant="t", code="INTERNAL"))
    assert got == [SessionEnded(tenant="t", session_id="s")]
    unsubscribe()
    assert not hub.wants(SessionEnded)
    for _ in range(MAX_SUBSCRIBERS):
        hub.subscribe(got.append, TurnServed)
    with pytest.raises(PermanentError, match="full"):
        hub.subscribe(got.append, TurnServed)
    with pytest.raises(ValueError):
        EventHub().subscribe(got.append)


async def test_a_node_emits_turn_handoff_feedback_end_and_failures(
    node: Node, stub: pbg.KefuNodeStub
) -> None:
    assert node.service is not None
    events: list[ConversationEvent] = []
    node.service.events.subscribe(
        events.append,
        TurnServed,
        HandoffStarted,
        FeedbackGiven,
        SessionEnded,
        RequestFailed,
        AccessRefused,
    )
    md = demo_key(node)
    first = await stub.Converse(
        pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="我的订单什么时候到"), metadata=md
    )
    # A retry of the same request is answered from the stored reply: no second TurnServed.
    retry = pb.ConverseRequest(text="退货怎么弄", session_id=first.session_id, request_id="r-1")
    await stub.Converse(retry, metadata=md)
    await stub.Converse(retry, metadata=md)
    handed = await stub.Converse(
        pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="转人工"), metadata=md
    )
    await stub.SubmitFeedback(
        pb.SubmitFeedbackRequest(session_id=first.session_id, turn_seq=first.turn_seq, rating=4),
        metadata=md,
    )
    await stub.EndSession(pb.EndSessionRequest(session_id=first.session_id), metadata=md)
    await stub.EndSession(pb.EndSessionRequest(session_id=first.session_id), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Converse(pb.ConverseRequest(channel=pb.CHANNEL_WEB, text=""), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Converse(pb.ConverseRequest(text="hi"), metadata=bearer_metadata("nope"))

    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "TurnServed",
        "TurnServed",
        "TurnServed",
        "HandoffStarted",
        "FeedbackGiven",
        "SessionEnded",
        "RequestFailed",
        "AccessRefused",
    ]
    served = [e for e in events if isinstance(e, TurnServed)]
    assert {e.tenant for e in served} == {"demo-shop"}
    assert served[0].result.intent == "delivery_tracking"
    (handoff,) = [e for e in events if isinstance(e, HandoffStarted)]
    assert (handoff.session_id, handoff.handoff_id) == (handed.session_id, handed.handoff_id)
    (feedback,) = [e for e in events if isinstance(e, FeedbackGiven)]
    assert (feedback.rating, feedback.predicted_intent) == (4, "delivery_tracking")
    assert feedback.scenario == "logistics"
    assert feedback.model_version.startswith("demo-shop-intent@")
    assert events[-2] == RequestFailed(
        tenant="demo-shop", code="INVALID_ARGUMENT", cause="InvalidTurn"
    )
    assert events[-1] == AccessRefused(tenant="", reason="unknown_key")
