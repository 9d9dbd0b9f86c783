"""The gateway's side of the node API: one long-lived gRPC channel per node (HTTP/2, keepalive,
multiplexed), standard gRPC health checks on a timer, and calls that feed the pool's ejection
state machine. The only module of the gateway that imports grpc.

A call that gets **no answer** from the node (connection refused or reset, UNAVAILABLE without
the node's ``retry-after-ms``) counts towards ejecting it and triggers an immediate health
probe, so a dead node leaves the pool within about one probe timeout instead of one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kefu.certstore import TlsFiles
from kefu.node.gateway.answers import ApiError, from_grpc
from kefu.node.gateway.routing import NoAnswer, NodePool, NodeState
from kefu.tls import secure_channel, warn_plaintext
from kefu.v1 import RETRY_AFTER_METADATA_KEY, SERVICE_NAME
from kefu.v1 import node_pb2_grpc as pbg

__all__ = ["NodeLinks"]

log = logging.getLogger("kefu.gateway.nodes")

_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect fast after a node restarts (the default backoff grows to 2 minutes).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
]


def _retry_after_ms(exc: grpc.aio.AioRpcError) -> int | None:
    for key, value in exc.trailing_metadata() or ():
        if key == RETRY_AFTER_METADATA_KEY:
            with contextlib.suppress(ValueError):
                return int(value)
    return None


class NodeLinks:
    def __init__(
        self,
        pool: NodePool,
        *,
        health_interval_s: float = 1.0,
        health_timeout_s: float = 1.0,
        call_timeout_s: float = 10.0,
        tls: TlsFiles | None = None,
    ):
        self.pool = pool
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.call_timeout_s = call_timeout_s
        if tls is None:
            for n in pool.nodes.values():
                warn_plaintext(f"the gateway's link to node {n.id}", n.spec.address)
        # With TLS the node is verified against the CA; with a pair, the gateway presents it.
        self._channels = {
            n.id: secure_channel(n.spec.address, tls, options=_CHANNEL_OPTIONS)
            for n in pool.nodes.values()
        }
        self.stubs = {nid: pbg.KefuNodeStub(ch) for nid, ch in self._channels.items()}
        self._health = {nid: health_pb2_grpc.HealthStub(ch) for nid, ch in self._channels.items()}
        self._task: asyncio.Task[None] | None = None
        self._probing: set[str] = set()

    # ------------------------------------------------------------------ health

    async def probe(self, node_id: str) -> bool:
        now = time.monotonic()
        try:
            reply = await self._health[node_id].Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                timeout=self.health_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            self._down(node_id, f"health check: {exc.code().name}")
            return False
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            self._down(node_id, "health check: not serving")
            return False
        was = self.pool.nodes[node_id].health
        self.pool.probe_ok(node_id, time.monotonic())
        if self.pool.nodes[node_id].health is not was:
            log.info("node %s is up (%.0f ms)", node_id, (time.monotonic() - now) * 1000)
        return True

    def _down(self, node_id: str, reason: str) -> None:
        before = self.pool.nodes[node_id].health
        self.pool.probe_failed(node_id, time.monotonic(), reason)
        n = self.pool.nodes[node_id]
        if n.health is not before:
            log.warning("node %s ejected: %s", node_id, reason)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(nid) for nid in self.pool.nodes))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            await self.probe_all()

    def _probe_soon(self, node_id: str) -> None:
        if node_id in self._probing:
            return
        self._probing.add(node_id)

        async def run() -> None:
            try:
                await self.probe(node_id)
            finally:
                self._probing.discard(node_id)

        asyncio.get_running_loop().create_task(run())

    async def start(self) -> None:
        await self.probe_all()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(ch.close() for ch in self._channels.values()))

    # ------------------------------------------------------------------ calls

    def _failure(
        self, node: NodeState, exc: grpc.aio.AioRpcError, *, caller_key: bool
    ) -> ApiError | NoAnswer:
        code = exc.code()
        retry = _retry_after_ms(exc)
        if code is grpc.StatusCode.UNAVAILABLE and retry is None:
            self.pool.call_failed(node.id, time.monotonic(), f"no answer: {exc.details()}")
            self._probe_soon(node.id)
            return NoAnswer(node.id, ApiError.of("node_down"))
        error = from_grpc(
            code.name, exc.details() or "", retry_after_ms=retry, caller_key=caller_key
        )
        if error.code == "bad_gateway":
            log.error("node %s answered %s: %s", node.id, code.name, exc.details())
        return error

    async def call(
        self,
        node: NodeState,
        method: str,
        request: Any,
        metadata: Sequence[tuple[str, str]],
        *,
        caller_key: bool = False,
    ) -> Any:
        """One unary RPC; :class:`ApiError` or :class:`NoAnswer` on failure."""
        node.in_flight += 1
        try:
            reply = await getattr(self.stubs[node.id], method)(
                request, metadata=tuple(metadata), timeout=self.call_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise self._failure(node, exc, caller_key=caller_key) from None
        finally:
            node.in_flight -= 1
        self.pool.call_ok(node.id)
        return reply

    async def stream(
        self, node: NodeState, request: Any, metadata: Sequence[tuple[str, str]]
    ) -> AsyncIterator[Any]:
        """ConverseStream's events; errors as in :meth:`call` (NoAnswer only before the first
        event, when nothing can have happened on the node yet... or a turn may have)."""
        node.in_flight += 1
        call = self.stubs[node.id].ConverseStream(
            request, metadata=tuple(metadata), timeout=self.call_timeout_s
        )
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as exc:
            raise self._failure(node, exc, caller_key=False) from None
        finally:
            node.in_flight -= 1
            call.cancel()
        self.pool.call_ok(node.id)
