"""Fuzz every KefuNode RPC's fields (hypothesis, seeded and bounded): whatever arrives, the node
answers with a documented status — never UNKNOWN or INTERNAL — logs no traceback, and still
serves a normal turn afterwards. A real node with the demo tenant on loopback, driven from a
synchronous gRPC client while its asyncio loop runs in a thread (as in production, the
server's loop is not the client's)."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kefu.auth_guard import FailedAuthGuard
from kefu.node.dialog.tenant import demo_key_path
from kefu.node.serving.admission import RateLimit, RateLimiter
from kefu.node.serving.server import Node, NodeOptions
from kefu.v1 import SERVICE_NAME, bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg

FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
SETTINGS = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self, since: int = 0) -> list[str]:
        return [
            f"{r.name}: {r.getMessage()[:300]}"
            for r in self.records[since:]
            if r.exc_info or "Traceback" in r.getMessage() or r.levelno >= logging.ERROR
        ]


class Served:
    """A node on its own event loop in a thread, plus a real session and hand-off to aim at."""

    def __init__(self, data: Path):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        opts = NodeOptions(data_dir=data, listen="127.0.0.1:0", metrics_listen=None)
        self.node = self.run(Node(opts).start())
        assert self.node.service is not None and self.node.api is not None
        # Under test: the API's handling of fields, not the rate limit or the auth slow-down.
        self.node.service.limiter = RateLimiter(RateLimit(rate=1e6, burst=1e6))
        self.node.api.auth_guard = FailedAuthGuard(base_delay_s=0.0, max_delay_s=0.0)
        self.md = bearer_metadata(demo_key_path(data, "demo-shop").read_text().strip())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.node.port}")
        self.stub = pbg.KefuNodeStub(self.channel)
        first = self.stub.Converse(
            pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="我的订单什么时候到"), metadata=self.md
        )
        self.session_id = first.session_id
        handed = self.stub.Converse(
            pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="转人工"), metadata=self.md
        )
        self.handoff_id = handed.handoff_id
        assert self.handoff_id

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.channel.close()
        self.run(self.node.drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, _Records]]:
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    s = Served(tmp_path_factory.mktemp("fuzz") / "data")
    try:
        yield s, records
        assert records.tracebacks() == []
        # Still serving after all of it.
        r = s.stub.Converse(
            pb.ConverseRequest(channel=pb.CHANNEL_APP, text="how do i get a VAT invoice?"),
            metadata=s.md,
        )
        assert r.text and r.session_id
    finally:
        root.removeHandler(records)
        s.close()


# --------------------------------------------------------------------------- strategies

short = st.text(max_size=24)
odd = st.sampled_from(
    ["", " ", "\x00", "\u202e", "🙂" * 3, "a" * 200, "你" * 3000, "x" * 70_000, "\ufeff\r\n"]
)
text = st.one_of(short, odd, st.text(min_size=100, max_size=600))


def ids(served: Served) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([served.session_id, served.handoff_id]), short, odd, st.just("")
    )


stamps = st.sampled_from(
    [
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+23:59",
        "2026-01-01T00:00:00+00:00",
        "not a time",
        "",
    ]
)
tokens = st.one_of(
    short,
    st.builds(lambda s, i: base64.urlsafe_b64encode(f"{s}|{i}".encode()).decode(), stamps, short),
    st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode()),
)
enums = st.integers(min_value=-3, max_value=12)
uint32 = st.integers(min_value=0, max_value=2**32 - 1)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
metadata = st.dictionaries(st.one_of(short, odd), st.one_of(short, odd), max_size=40)
intents = st.one_of(short, st.sampled_from(["delivery_tracking", "out_of_scope", ""]))


def requests(served: Served) -> dict[str, st.SearchStrategy[Any]]:
    sid = ids(served)
    opt_u32 = st.one_of(st.none(), uint32)
    converse = st.builds(
        pb.ConverseRequest,
        session_id=sid,
        channel=enums,
        user_id=text,
        text=text,
        entry_path=text,
        metadata=metadata,
        language=st.one_of(short, st.sampled_from(["zh", "en", "fr"])),
        request_id=st.one_of(short, odd),
    )

    def feedback(**kw: Any) -> pb.SubmitFeedbackRequest:
        return pb.SubmitFeedbackRequest(**{k: v for k, v in kw.items() if v is not None})

    return {
        "Converse": converse,
        "ConverseStream": converse,
        "GetSession": st.builds(pb.GetSessionRequest, session_id=sid),
        "EndSession": st.builds(pb.EndSessionRequest, session_id=sid, reason=text),
        "SubmitFeedback": st.builds(
            feedback,
            session_id=sid,
            turn_seq=opt_u32,
            rating=int32,
            resolved=st.one_of(st.none(), st.booleans()),
            corrected_intent=st.one_of(st.none(), intents),
            comment=text,
        ),
        "ListSessions": st.builds(
            pb.ListSessionsRequest, page_size=uint32, page_token=tokens, status=enums, user_id=text
        ),
        "ListHandoffs": st.builds(
            pb.ListHandoffsRequest, status=enums, page_size=uint32, page_token=tokens
        ),
        "ClaimHandoff": st.builds(pb.ClaimHandoffRequest, handoff_id=sid, agent_id=text),
        "AgentReply": st.one_of(
            st.builds(
                pb.AgentReplyRequest, handoff_id=sid, agent_id=text, text=text, request_id=short
            ),
            st.builds(
                pb.AgentReplyRequest, session_id=sid, agent_id=text, text=text, request_id=short
            ),
        ),
        "CloseHandoff": st.builds(
            pb.CloseHandoffRequest, handoff_id=sid, resolution=enums, agent_id=text, note=text
        ),
    }


RPCS = [
    "Converse",
    "ConverseStream",
    "GetSession",
    "EndSession",
    "SubmitFeedback",
    "ListSessions",
    "ListHandoffs",
    "ClaimHandoff",
    "AgentReply",
    "CloseHandoff",
]
AUTH = st.sampled_from(["demo", "demo", "demo", "wrong", "none"])


def _call(served: Served, rpc: str, request: Any, auth: str) -> grpc.StatusCode:
    md = {"demo": served.md, "wrong": bearer_metadata("kefu_wrong"), "none": ()}[auth]
    method: Callable[..., Any] = getattr(served.stub, rpc)
    try:
        if rpc == "ConverseStream":
            list(method(request, metadata=md, timeout=30))
        else:
            method(request, metadata=md, timeout=30)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return, attr-defined]
    return grpc.StatusCode.OK


def test_every_rpc_is_covered() -> None:
    service = pb.DESCRIPTOR.services_by_name["KefuNode"]
    assert sorted(m.name for m in service.methods) == sorted(RPCS)


@pytest.mark.parametrize("rpc", RPCS)
def test_fuzzed_fields_get_documented_statuses(served: tuple[Served, _Records], rpc: str) -> None:
    s, records = served
    strategy = requests(s)[rpc]
    since = len(records.records)  # this test's records only

    @SETTINGS
    @given(request=strategy, auth=AUTH)
    def check(request: Any, auth: str) -> None:
        code = _call(s, rpc, request, auth)
        assert code not in FORBIDDEN, (rpc, code, str(request)[:300])
        assert records.tracebacks(since) == []

    check()


@pytest.mark.parametrize("rpc", RPCS)
def test_malformed_request_bytes_are_refused_cleanly(
    served: tuple[Served, _Records], rpc: str
) -> None:
    s, records = served
    since = len(records.records)
    raw_unary = s.channel.unary_unary(f"/{SERVICE_NAME}/{rpc}")
    raw_stream = s.channel.unary_stream(f"/{SERVICE_NAME}/{rpc}")

    @settings(SETTINGS, max_examples=15)
    @given(data=st.binary(max_size=300))
    def check(data: bytes) -> None:
        try:
            if rpc == "ConverseStream":
                list(raw_stream(data, metadata=s.md, timeout=30))
            else:
                raw_unary(data, metadata=s.md, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
        assert code not in FORBIDDEN, (rpc, code, data[:80])
        assert records.tracebacks(since) == []

    check()
