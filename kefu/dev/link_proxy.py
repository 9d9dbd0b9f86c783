"""A TCP proxy that can be severed: the NATS link between a region's leaf server and the hub.

The failover stack (kefu/dev/failover_stack.py) makes region ``a``'s leaf dial the hub's leaf
port through one of these, so a test can cut **only the NATS link** — the leaf server, the
region's nodes and the gateway's gRPC connections to them keep running — and restore it. A
cut closes every open connection and refuses new ones (the leaf keeps retrying, as it would
across a broken WAN link); :meth:`LinkProxy.restore` accepts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kefu.bus import cancel_and_wait

__all__ = ["LinkProxy"]

log = logging.getLogger("kefu.dev.link")

_CHUNK = 64 * 1024


class LinkProxy:
    """``127.0.0.1:<port>`` → ``127.0.0.1:<target>``, in the running event loop."""

    def __init__(self, port: int, target: int):
        self.port = port
        self.target = target
        self.server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        #: Connections accepted since the start (a restored link dials again).
        self.accepted = 0

    @property
    def cut(self) -> bool:
        return self.server is None

    async def start(self) -> LinkProxy:
        if self.server is None:
            self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target), timeout=5.0
            )
        except (OSError, TimeoutError):
            writer.close()
            return
        self.accepted += 1
        self._writers |= {writer, up_w}
        for src, dst in ((reader, up_w), (up_r, writer)):
            task = asyncio.create_task(self._pipe(src, dst), name="link-proxy-pipe")
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(_CHUNK):
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            self._writers.discard(dst)
            with contextlib.suppress(OSError, RuntimeError):
                dst.close()

    async def sever(self) -> None:
        """Cut the link: stop listening, close every open connection (both directions)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self._writers):
            with contextlib.suppress(OSError, RuntimeError):
                w.transport.abort()
        self._writers.clear()
        await cancel_and_wait(*self._pipes)
        log.warning("NATS link %d → %d cut", self.port, self.target)

    async def restore(self) -> None:
        await self.start()
        log.warning("NATS link %d → %d restored", self.port, self.target)

    async def close(self) -> None:
        await self.sever()
