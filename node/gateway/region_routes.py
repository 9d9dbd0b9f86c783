"""The gateway follows the control plane's routes (docs/failover.md): an adapter over NATS.

* **Routes**: a watch on ``kefu_routes`` keeps every tenant's :class:`~kefu.wire.TenantRoute`
  in memory; :meth:`RouteFollower.regions_for` tells the conversations which regions' nodes
  take a tenant's *new* conversations — the serving region, then (when the gateway reaches
  none of its nodes) the route's standby regions, all allowed for the tenant; None = no route:
  any node, as without failover — and raises ``region_unavailable`` (a clear zh/en
  "temporarily unavailable" reply) when the route says no allowed region can serve.
* **Nodes** (``discover_nodes``): a watch on ``kefu_nodes`` adds each node's reported gRPC
  address and region to the pool (or updates them), so a gateway needs no node list.
* **Reachability**: every ``report_s`` the gateway writes, per region, which of its nodes
  answer its health checks to ``kefu_reach`` (``<gateway>.<region>``); the leader uses it to
  tell a region cut off from NATS (nodes still serving) from a dead one.

When NATS is unreachable the last routes stay in force (the watch is re-created with backoff),
so a control-plane outage never stops customers being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from kefu.bus import Bus, BusUnavailable, NotFound, cancel_and_wait
from kefu.errors import KefuError
from kefu.natsbus import NatsBus, NatsOptions
from kefu.natscreds import load_credentials
from kefu.node.gateway.answers import ApiError
from kefu.node.gateway.config import RoutesSettings
from kefu.node.gateway.routing import NodePool, NodeSpec
from kefu.wire import (
    BUCKET_NODES,
    BUCKET_REACH,
    BUCKET_ROUTES,
    GatewayReach,
    NodeStatus,
    TenantRoute,
    decode,
    encode,
)

__all__ = ["RouteFollower"]

log = logging.getLogger("kefu.gateway.routes")


class RouteFollower:
    def __init__(
        self,
        settings: RoutesSettings,
        pool: NodePool,
        *,
        base: Path = Path("."),
        on_node: Callable[[str], None] | None = None,
    ):
        self.settings = settings
        self.pool = pool
        self.base = base
        #: Called with a node id the registry added to (or changed in) the pool.
        self.on_node = on_node
        self.routes: dict[str, TenantRoute] = {}
        self.bus: Bus | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Set once the first full view of the routes bucket has been read.
        self.synced = asyncio.Event()

    def regions_for(self, tenant: str) -> list[str] | None:
        """The regions whose nodes may take ``tenant``'s new conversations, in order: the
        serving region, then its standby regions (None = no route: any node)."""
        route = self.routes.get(tenant)
        if route is None:
            return None
        if route.state == "unavailable":
            raise ApiError.of("region_unavailable")
        return [route.region, *route.standby]

    async def start(self) -> None:
        s = self.settings
        user = password = None
        url, tls, domain = s.nats, None, None
        if s.creds_file:
            path = Path(s.creds_file)
            creds = load_credentials(path if path.is_absolute() else self.base / path)
            url, user, password, tls = creds.url or url, creds.user, creds.password, creds.tls
            domain = creds.domain
        self.bus = await NatsBus.connect(
            NatsOptions(
                servers=[url],
                user=user,
                password=password,
                name=f"kefu-gateway-{s.gateway_id}",
                tls=tls,
                domain=domain,
            )
        )
        self._tasks = [
            asyncio.create_task(self._follow(BUCKET_ROUTES, self._route), name="gateway-routes"),
            asyncio.create_task(self._report(), name="gateway-reach"),
        ]
        if s.discover_nodes:
            self._tasks.append(
                asyncio.create_task(self._follow(BUCKET_NODES, self._node), name="gateway-nodes")
            )

    def _node(self, key: str, value: bytes) -> None:
        """A node's status: its reported address joins the pool (loopback and wildcard
        listeners a remote gateway could not reach are used as they are: same host)."""
        status = decode(NodeStatus, value, what=f"node {key}")
        host, _, port = status.listen.rpartition(":")
        if not status.listen or not port.isdigit():
            return
        address = f"127.0.0.1:{port}" if host in ("", "0.0.0.0", "[::]", "::") else status.listen
        try:
            changed = self.pool.add(
                NodeSpec(id=status.node_id, address=address, region=status.region)
            )
        except ValueError as exc:
            log.warning("node %s from the registry not used: %s", status.node_id, exc)
            return
        if changed:
            log.info(
                "node %s (%s, region %s) from the registry", status.node_id, address, status.region
            )
            if self.on_node is not None:
                self.on_node(status.node_id)

    def _route(self, key: str, value: bytes) -> None:
        route = decode(TenantRoute, value, what=f"route {key}")
        old = self.routes.get(route.tenant)
        if old is None or route.epoch >= old.epoch:
            self.routes[route.tenant] = route
            log.info(
                "route %s: %s %s (epoch %d)",
                route.tenant,
                route.state,
                route.region or "-",
                route.epoch,
            )

    async def _follow(self, bucket: str, apply: Callable[[str, bytes], None]) -> None:
        """Watch ``bucket`` for ever (re-created with backoff when NATS goes away)."""
        assert self.bus is not None
        backoff = 0.5
        while True:
            try:
                async for e in self.bus.kv_watch(bucket):
                    if e is None:
                        if bucket == BUCKET_ROUTES:
                            self.synced.set()
                        continue
                    if e.deleted:
                        if bucket == BUCKET_ROUTES:
                            self.routes.pop(e.key, None)
                        continue  # a node gone from the registry: health checks eject it
                    try:
                        apply(e.key, e.value)
                    except KefuError as exc:
                        log.error("%s", exc)
                backoff = 0.5
            except (BusUnavailable, NotFound, KefuError) as exc:
                log.warning("%s watch ended (%s); again in %.1fs", bucket, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _report(self) -> None:
        assert self.bus is not None
        gid = self.settings.gateway_id
        while True:
            for region, (up, down) in self.pool.reach().items():
                doc = GatewayReach(gateway=gid, region=region, reachable=up, unreachable=down)
                try:
                    await self.bus.kv_put(BUCKET_REACH, f"{gid}.{region}", encode(doc))
                except (BusUnavailable, NotFound, KefuError) as exc:
                    log.debug("reach report not written: %s", exc)
                    break
            await asyncio.sleep(self.settings.report_s)

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.close()
            self.bus = None
