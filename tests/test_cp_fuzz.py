"""Fuzzing (hypothesis, seeded and bounded): every control-plane RPC with generated fields
against a real replica on a real nats-server, and the tenant / node config loaders with
generated YAML. Nothing may answer UNKNOWN or INTERNAL, nothing may log a traceback, and the
control plane still answers afterwards."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cp_support import DEMO_YAML, shipped_packed, trust_with
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kefu.config import parse_tenant_config
from kefu.config.node import parse_node_config
from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
from kefu.errors import ConfigError
from kefu.keys import generate_keypair
from kefu.natsserver import NatsServer
from kefu.v1 import bearer_metadata
from kefu.v1 import control_plane_pb2 as pb

pytestmark = pytest.mark.slow

SERVICE = pb.DESCRIPTOR.services_by_name["ControlPlane"]
FUZZ = settings(
    max_examples=12,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
WORDS = ["demo-shop", "r1", "intent", "admin", "demo-shop-intent", "x@1", "../x", "/tmp/x", ""]


@dataclass
class LiveCp:
    target: str
    token: str
    loop: asyncio.AbstractEventLoop


@pytest.fixture(scope="module")
def live_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCp]:
    """A replica serving on loopback from its own thread and event loop (hypothesis drives
    the test synchronously)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    key = generate_keypair(tmp / "keys", "ops")
    ready: dict[str, Any] = {}
    started, stop = threading.Event(), None
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        with NatsServer(tmp / "nats") as srv:
            opts = ControlPlaneOptions(
                nats_url=srv.url, trust=trust_with(key), listen="127.0.0.1:0", regions=["r1"]
            )
            async with ControlPlaneApp(opts) as app:
                assert app.cp is not None and app.first_token
                await app.cp.create_region("r1", actor="fuzz")
                await app.cp.create_tenant("demo-shop", actor="fuzz")
                await app.cp.put_config("demo-shop", DEMO_YAML, actor="fuzz")
                ready.update(target=f"127.0.0.1:{app.port}", token=app.first_token)
                started.set()
                await stop.wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert started.wait(60), "control plane did not start"
    try:
        yield LiveCp(target=ready["target"], token=ready["token"], loop=loop)
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


def _scalar(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        return st.sampled_from(WORDS) | st.text(max_size=80)
    if t == FieldDescriptor.TYPE_BYTES:
        packed, _ = shipped_packed("sentiment")
        return st.binary(max_size=300) | st.just(packed) | st.just(packed[:1000])
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if t == FieldDescriptor.TYPE_FLOAT else 64)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return st.integers(-(2**63), 2**63 - 1)
    if t == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in fd.enum_type.values])
    return st.integers(-(2**31), 2**31 - 1)


def message(desc: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Any instance of the message ``desc``: every field optional, nested up to 2 levels."""
    cls = getattr(pb, desc.name)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in desc.fields:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            k, v = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
            vs = message(v.message_type, depth + 1) if v.message_type else _scalar(v)
            fields[fd.name] = st.dictionaries(_scalar(k), vs, max_size=3)
            continue
        one = message(fd.message_type, depth + 1) if fd.message_type else _scalar(fd)
        if depth > 2 and fd.message_type is not None:
            continue
        fields[fd.name] = st.lists(one, max_size=3) if _repeated(fd) else one

    @st.composite
    def build(draw: Any) -> Any:
        kwargs = {n: draw(s) for n, s in fields.items() if draw(st.booleans())}
        return cls(**kwargs)

    return build()


def _repeated(fd: FieldDescriptor) -> bool:
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def _call(cp: LiveCp, method: str, request: Any, *, token: str | None = None) -> grpc.StatusCode:
    with grpc.insecure_channel(cp.target) as ch:
        rpc = ch.unary_unary(
            f"/kefu.v1.ControlPlane/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=lambda b: b,
        )
        try:
            rpc(request, metadata=bearer_metadata(token or cp.token), timeout=20)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()[:300]
        for r in caplog.records
        if r.exc_info or "Traceback" in r.getMessage() or r.levelno >= logging.ERROR
    ]


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_every_rpc_survives_generated_fields(
    live_cp: LiveCp, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    desc = SERVICE.methods_by_name[method].input_type
    caplog.set_level(logging.INFO)

    @FUZZ
    @given(message(desc))
    def check(request: Any) -> None:
        if method in ("IssueOperatorToken", "RevokeOperatorToken") and request.name == "admin":
            request.name = "fuzzed"  # keep the fuzzer's own admin token valid
        code = _call(live_cp, method, request)
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
            method,
            request,
            code,
        )

    check()
    # Garbage bytes instead of the message: a clean INVALID_ARGUMENT.
    with grpc.insecure_channel(live_cp.target) as ch:
        raw = ch.unary_unary(f"/kefu.v1.ControlPlane/{method}")
        with pytest.raises(grpc.RpcError) as ei:
            raw(b"\xff\xff\xff", metadata=bearer_metadata(live_cp.token), timeout=20)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert _tracebacks(caplog) == []
    assert _call(live_cp, "GetStatus", pb.GetStatusRequest()) == grpc.StatusCode.OK


# --------------------------------------------------------------------------- config files

_LINES = DEMO_YAML.splitlines(keepends=True)
_YAML_BITS = st.sampled_from(
    [
        "[",
        "]",
        "{",
        "}",
        ": ",
        "- ",
        "&a ",
        "*a",
        "<<: *a\n",
        "!!python/object ",
        "\t",
        "\n",
        "  ",
        "'",
        '"',
        "#",
        "\x00",
        "\ufeff",
        "1e999",
        "~",
        "? ",
        "|\n",
        ">-\n",
        "%YAML 1.1\n",
        "---\n",
        "...\n",
        "é",
        "中文",
    ]
)


@st.composite
def mutated_demo(draw: Any) -> str:
    lines = list(_LINES)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["insert", "delete", "replace", "splice"]))
        bit = "".join(draw(st.lists(_YAML_BITS, min_size=1, max_size=6)))
        if op == "insert":
            lines.insert(i, bit)
        elif op == "delete":
            del lines[i]
        elif op == "replace":
            lines[i] = bit + "\n"
        else:
            lines[i] = lines[i][: len(lines[i]) // 2] + bit + lines[i][len(lines[i]) // 2 :]
    return "".join(lines)


YAML_TEXT = (
    st.text(max_size=300)
    | st.lists(_YAML_BITS, max_size=60).map("".join)
    | st.integers(60, 400).map(lambda n: "[" * n)
    | mutated_demo()
)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(YAML_TEXT)
def test_tenant_config_loader_only_raises_config_error(text: str) -> None:
    try:
        parse_tenant_config(text, source="t.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("t.yaml")


NODE_BITS = st.sampled_from(
    [
        "data_dir: ",
        "listen: ",
        "tenants: ",
        "limits:\n  max_queue: ",
        "control_plane:\n  ",
        "logging:\n  format: ",
        "metrics_listen: ",
        "workers: ",
    ]
)


@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(parts=st.lists(st.tuples(NODE_BITS, YAML_TEXT.filter(lambda t: len(t) < 200)), max_size=4))
def test_node_config_loader_only_raises_config_error(
    parts: list[tuple[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    text = "".join(k + v + "\n" for k, v in parts)
    base = Path(tmp_path_factory.getbasetemp())
    try:
        parse_node_config(text, source="node.yaml", base=base)
    except ConfigError as exc:
        assert str(exc).startswith("node.yaml")
