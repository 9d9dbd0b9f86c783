"""The gateway process: the node pool and its gRPC links, the aiohttp application with every
route (HTTP API, WebSocket, widget and demo page, WeChat, OpenAPI, /metrics, /healthz), and its
lifecycle (:class:`Gateway` is an async context manager; ``port`` is known after start).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from kefu import tracing
from kefu.config.node import parse_host_port
from kefu.node.gateway import openapi
from kefu.node.gateway.config import ResolvedGateway
from kefu.node.gateway.conversations import Conversations
from kefu.node.gateway.http_api import (
    CONVERSATIONS,
    MAX_BODY,
    METRICS,
    TRACER,
    add_routes,
    error_middleware,
)
from kefu.node.gateway.metrics import GatewayMetrics
from kefu.node.gateway.node_links import NodeLinks
from kefu.node.gateway.region_routes import RouteFollower
from kefu.node.gateway.routing import NodePool
from kefu.node.gateway.tracing import Tracer
from kefu.node.gateway.websocket import (
    AGENT_POLL_S,
    MAX_SOCKETS,
    OPEN_SOCKETS,
    chat_socket,
    close_sockets,
)
from kefu.tls import PairWatcher, is_loopback, warn_plaintext

__all__ = ["Gateway", "build_app"]

log = logging.getLogger("kefu.gateway")

_STATIC = {
    "/widget/kefu-widget.js": ("kefu-widget.js", "application/javascript"),
    "/widget/kefu-widget.css": ("kefu-widget.css", "text/css"),
    "/demo": ("demo.html", "text/html"),
}


def _static(name: str) -> bytes:
    return resources.files("kefu.node.gateway").joinpath("static", name).read_bytes()


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(), dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def _healthz(request: web.Request) -> web.Response:
    pool = request.app[CONVERSATIONS].pool
    up = bool(pool.healthy())
    return web.json_response(
        {"status": "ok" if up else "no_node", "nodes": pool.snapshot()}, status=200 if up else 503
    )


def _static_handler(name: str, ctype: str) -> Any:
    body = _static(name)

    async def handle(request: web.Request) -> web.Response:
        return web.Response(
            body=body,
            content_type=ctype,
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    return handle


def build_app(
    convs: Conversations,
    *,
    metrics: GatewayMetrics,
    tracer: Tracer,
    max_body: int,
    max_sockets: int,
    agent_poll_s: float,
) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=max_body)
    app[CONVERSATIONS] = convs
    app[METRICS] = metrics
    app[TRACER] = tracer
    app[MAX_BODY] = max_body
    app[MAX_SOCKETS] = max_sockets
    app[AGENT_POLL_S] = agent_poll_s
    app[OPEN_SOCKETS] = set()
    app.on_shutdown.append(close_sockets)
    add_routes(app)
    app.router.add_get("/v1/chat/{public_id}/ws", chat_socket)
    app.router.add_get("/v1/openapi.json", _openapi)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    for path, (name, ctype) in _STATIC.items():
        app.router.add_get(path, _static_handler(name, ctype))
    from kefu.node.gateway.wechat_http import add_wechat_routes

    add_wechat_routes(app)
    return app


class Gateway:
    """``async with Gateway(resolved) as gw:`` serves on ``gw.port`` until the block ends."""

    def __init__(
        self,
        resolved: ResolvedGateway,
        *,
        tracer: Tracer | None = None,
        rng: random.Random | None = None,
    ):
        self.resolved = resolved
        cfg = resolved.config
        discover = cfg.routes is not None and cfg.routes.discover_nodes
        self.pool = NodePool(specs=resolved.nodes, policy=resolved.ejection, discover=discover)
        self.links = NodeLinks(
            self.pool,
            health_interval_s=cfg.health.interval_s,
            health_timeout_s=cfg.health.timeout_s,
            call_timeout_s=cfg.limits.node_timeout_s,
            tls=resolved.node_tls,
            renew_interval_s=cfg.node_tls.check_interval_s if cfg.node_tls else 30.0,
        )
        self.conversations = Conversations(resolved, self.pool, self.links, rng=rng)
        self.routes: RouteFollower | None = None
        if cfg.routes is not None:
            base = Path(resolved.source).resolve().parent if resolved.source != "<code>" else Path()
            self.routes = RouteFollower(
                cfg.routes, self.pool, base=base, on_node=self.links.add if discover else None
            )
            self.conversations.regions_for = self.routes.regions_for
        self.metrics = GatewayMetrics()
        self.metrics.watch_pool(self.pool, self.conversations.backlog)
        self.tracer = tracer or Tracer()
        self.app = build_app(
            self.conversations,
            metrics=self.metrics,
            tracer=self.tracer,
            max_body=cfg.limits.max_body_bytes,
            max_sockets=cfg.limits.max_websockets,
            agent_poll_s=cfg.agent_poll_s,
        )
        self._runner: web.AppRunner | None = None
        self._renew: asyncio.Task[None] | None = None
        self._tracing = False
        self.port = 0

    @property
    def host(self) -> str:
        host = parse_host_port(self.resolved.config.listen)[0]
        return "127.0.0.1" if host in ("", "0.0.0.0", "[::]", "::") else host

    @property
    def url(self) -> str:
        scheme = "https" if self.resolved.listen_tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def _ssl_context(self) -> ssl.SSLContext | None:
        """The HTTPS context; a renewed pair is loaded into it on a timer (new handshakes
        use it, open connections keep theirs). None: plain HTTP, warned about."""
        files = self.resolved.listen_tls
        if files is None:
            listen = self.resolved.config.listen
            if not is_loopback(listen):  # on loopback plain HTTP is the norm (kefu up)
                warn_plaintext("the gateway's HTTP listener", listen)
            return None
        watcher = PairWatcher(files)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(files.cert_file), str(files.key_file))

        async def reload() -> None:
            while True:
                await asyncio.sleep(30.0)
                if watcher.poll():
                    ctx.load_cert_chain(str(files.cert_file), str(files.key_file))

        self._renew = asyncio.get_running_loop().create_task(reload(), name="gateway-tls-renew")
        return ctx

    async def start(self) -> Gateway:
        otel = self.resolved.config.tracing
        if otel.otlp_endpoint:
            name = otel.service_name or "kefu-gateway"
            tracing.configure(service_name=name, otlp_endpoint=otel.otlp_endpoint)
            self._tracing = True
        await self.links.start()
        if self.routes is not None:
            await self.routes.start()
        host, port = parse_host_port(self.resolved.config.listen)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            host.strip("[]"),
            port,
            reuse_address=True,
            ssl_context=self._ssl_context(),
        )
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        healthy = [n.id for n in self.pool.healthy()]
        log.info("gateway listening", extra={"fields": {"port": self.port, "nodes_up": healthy}})
        return self

    async def close(self) -> None:
        if self._renew is not None:
            self._renew.cancel()
            self._renew = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.links.close()
        if self._tracing:  # flush the spans still buffered
            self._tracing = False
            await asyncio.to_thread(tracing.shutdown)
        if self.routes is not None:
            await self.routes.close()

    async def __aenter__(self) -> Gateway:
        try:
            return await self.start()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
