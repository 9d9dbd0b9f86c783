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
from kefu.tls import PairWatcher, secure_channel, warn_plaintext
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
        renew_interval_s: float = 30.0,
    ):
        self.pool = pool
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.call_timeout_s = call_timeout_s
        self.tls = tls
        self.renew_interval_s = renew_interval_s
        if tls is None:
            for n in pool.nodes.values():
                warn_plaintext(f"the gateway's link to node {n.id}", n.spec.address)
        # The gateway's own pair (mutual TLS), re-read when renewed: see :meth:`renew`.
        self._pair = (
            PairWatcher(tls) if tls is not None and tls.cert_file and tls.key_file else None
        )
        #: How many times the channels were rebuilt with a renewed pair.
        self.renewals = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.stubs: dict[str, pbg.KefuNodeStub] = {}
        self._health: dict[str, health_pb2_grpc.HealthStub] = {}
        for n in pool.nodes.values():
            self._connect(n)
        self._task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._probing: set[str] = set()

    def _connect(self, node: NodeState) -> grpc.aio.Channel | None:
        """A (new) channel to ``node``; the one it replaces, if any. With TLS the node is
        verified against the CA; with a pair, the gateway presents it."""
        if self._pair is None:
            channel = secure_channel(node.spec.address, self.tls, options=_CHANNEL_OPTIONS)
        else:
            key, cert, ca = self._pair.current
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
            channel = grpc.aio.secure_channel(node.spec.address, creds, options=_CHANNEL_OPTIONS)
        old = self._channels.get(node.id)
        self._channels[node.id] = channel
        self.stubs[node.id] = pbg.KefuNodeStub(channel)
        self._health[node.id] = health_pb2_grpc.HealthStub(channel)
        return old

    def add(self, node_id: str) -> None:
        """Connect to a node the pool learned of (or whose address changed) and probe it at
        once; a replaced channel closes after the call timeout, so calls on it finish."""
        node = self.pool.nodes[node_id]
        if self.tls is None:
            warn_plaintext(f"the gateway's link to node {node_id}", node.spec.address)
        old = self._connect(node)
        if old is not None:
            self._retire(old)
        self._probe_soon(node_id)

    # ------------------------------------------------------------------ renewal

    def renew(self) -> bool:
        """Rebuild every channel when the gateway's certificate files changed (a consistent
        new pair). Calls in flight finish on the old channels, which close once they are
        done (at most the call timeout later); new calls use the new pair at once."""
        if self._pair is None or not self._pair.poll():
            return False
        for node in self.pool.nodes.values():
            old = self._connect(node)
            if old is not None:
                self._retire(old)
        self.renewals += 1
        log.info(
            "gateway certificate renewed: channels to %d node(s) rebuilt", len(self.pool.nodes)
        )
        for nid in self.pool.nodes:  # a node refused the old pair? it may take the new one
            self._probe_soon(nid)
        return True

    def _retire(self, channel: grpc.aio.Channel) -> None:
        """Close a replaced channel once the calls on it are done (at most the call timeout)."""
        task = asyncio.get_running_loop().create_task(channel.close(grace=self.call_timeout_s))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.renew_interval_s)
            self.renew()

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
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._loop())
        if self._pair is not None:
            self._renew_task = loop.create_task(self._renew_loop(), name="gateway-cert-renew")

    async def close(self) -> None:
        for task in (self._task, self._renew_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
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
