"""Which node serves a request: session ids that say where they live, the ejection state
machine, and the least-loaded choice for a new conversation. Pure: no sockets, no clock of its
own (callers pass ``now``), no randomness of its own (callers pass ``rng``).

**Session ids.** The node's own id format is left alone (22 URL-safe characters); the gateway
hands customers ``<node id>.<node's session id>`` and strips the prefix on the way in. Every
gateway instance of the region reads the same prefix, so any of them routes a conversation back
to the node holding it, with no shared state between gateways. Hand-off ids get the same
prefix.

**Ejection** (per node)::

    UNKNOWN --probe ok--> UP --(health check fails | N consecutive transport failures)--> EJECTED
    EJECTED --(ejection time over and a probe ok)--> UP

The ejection time doubles with each ejection in a row (``base_ejection_s`` ..
``max_ejection_s``) and resets once the node has stayed up for ``max_ejection_s``. A node that
*answers* UNAVAILABLE (shedding load, with ``retry-after-ms``) is alive: that is not a failure.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from kefu.node.gateway.answers import ApiError

__all__ = [
    "EjectionPolicy",
    "NoAnswer",
    "NodeHealth",
    "NodePool",
    "NodeSpec",
    "NodeState",
    "local_id",
    "node_of",
    "public_id",
]

NODE_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_LOCAL_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
SEPARATOR = "."


def public_id(node_id: str, node_local_id: str) -> str:
    """The id customers see for a session (or hand-off) held by ``node_id``."""
    return f"{node_id}{SEPARATOR}{node_local_id}" if node_local_id else ""


def _split(public: str) -> tuple[str, str]:
    node_id, sep, local = public.partition(SEPARATOR)
    if not sep or not NODE_ID_RE.fullmatch(node_id) or not _LOCAL_ID_RE.fullmatch(local):
        raise ApiError.of("not_found")
    return node_id, local


def node_of(public: str) -> str:
    """The node holding ``public``; a malformed id is ``not_found`` (ids leak nothing)."""
    return _split(public)[0]


def local_id(public: str) -> str:
    """The node's own id inside ``public``."""
    return _split(public)[1]


class NoAnswer(Exception):
    """The node did not answer at all (it may be down): a new conversation may safely be
    tried on another node; an existing one gets ``error`` (``node_down``)."""

    def __init__(self, node_id: str, error: ApiError):
        super().__init__(node_id)
        self.node_id = node_id
        self.error = error


class NodeHealth(enum.Enum):
    UNKNOWN = "unknown"  # not probed yet: not chosen for new conversations
    UP = "up"
    EJECTED = "ejected"


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    id: str
    address: str
    #: The node's region ("" = not said): routes (docs/failover.md) pick nodes by region.
    region: str = ""


@dataclass(frozen=True, kw_only=True)
class EjectionPolicy:
    #: Transport failures in a row (no answer from the node) that eject it.
    failures_to_eject: int = 3
    base_ejection_s: float = 2.0
    max_ejection_s: float = 30.0


@dataclass(kw_only=True)
class NodeState:
    spec: NodeSpec
    health: NodeHealth = NodeHealth.UNKNOWN
    failures_in_row: int = 0
    ejections_in_row: int = 0
    ejected_until: float = 0.0
    up_since: float = 0.0
    #: Requests this gateway has in flight on the node (the load signal).
    in_flight: int = 0
    total_ejections: int = 0
    reason: str = ""

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(kw_only=True)
class NodePool:
    """The region's nodes as this gateway sees them."""

    specs: Iterable[NodeSpec]
    policy: EjectionPolicy = field(default_factory=EjectionPolicy)
    #: Nodes also come from the control plane's registry: the pool may start empty.
    discover: bool = False
    nodes: dict[str, NodeState] = field(init=False)

    def __post_init__(self) -> None:
        self.nodes = {}
        for spec in self.specs:
            if not NODE_ID_RE.fullmatch(spec.id):
                raise ValueError(f"node id {spec.id!r}: use 1-32 of a-z 0-9 _ - (no dots)")
            if spec.id in self.nodes:
                raise ValueError(f"node id {spec.id!r} is listed twice")
            self.nodes[spec.id] = NodeState(spec=spec)
        if not self.nodes and not self.discover:
            raise ValueError("the gateway needs at least one node")

    def add(self, spec: NodeSpec) -> bool:
        """A node found later (the control plane's registry); False when nothing changed.
        A known node with a new address or region gets the new spec (same state)."""
        if not NODE_ID_RE.fullmatch(spec.id):
            raise ValueError(f"node id {spec.id!r}: use 1-32 of a-z 0-9 _ - (no dots)")
        known = self.nodes.get(spec.id)
        if known is not None and known.spec == spec:
            return False
        if known is None:
            self.nodes[spec.id] = NodeState(spec=spec)
        else:
            known.spec = spec
        return True

    # ------------------------------------------------------------------ observations

    def probe_ok(self, node_id: str, now: float) -> None:
        """A health check answered SERVING."""
        n = self.nodes[node_id]
        if n.health is NodeHealth.EJECTED and now < n.ejected_until:
            return  # serve out the ejection: a flapping node must prove itself for a while
        if n.health is not NodeHealth.UP:
            n.health, n.up_since, n.reason = NodeHealth.UP, now, ""
        n.failures_in_row = 0
        if n.ejections_in_row and now - n.up_since >= self.policy.max_ejection_s:
            n.ejections_in_row = 0

    def probe_failed(self, node_id: str, now: float, reason: str) -> None:
        """A health check failed or answered NOT_SERVING: eject at once."""
        self._eject(self.nodes[node_id], now, reason)

    def call_ok(self, node_id: str) -> None:
        self.nodes[node_id].failures_in_row = 0

    def call_failed(self, node_id: str, now: float, reason: str) -> None:
        """A call got no answer from the node (connection refused, reset, timeout)."""
        n = self.nodes[node_id]
        n.failures_in_row += 1
        if n.failures_in_row >= self.policy.failures_to_eject:
            self._eject(n, now, reason)

    def _eject(self, n: NodeState, now: float, reason: str) -> None:
        if n.health is NodeHealth.EJECTED and now < n.ejected_until:
            return
        p = self.policy
        n.ejections_in_row += 1
        n.total_ejections += 1
        n.ejected_until = now + min(
            p.max_ejection_s, p.base_ejection_s * 2 ** (n.ejections_in_row - 1)
        )
        n.health, n.reason, n.failures_in_row = NodeHealth.EJECTED, reason, 0

    # ------------------------------------------------------------------ choices

    def healthy(self) -> list[NodeState]:
        return [n for n in self.nodes.values() if n.health is NodeHealth.UP]

    def choose_new(
        self, rng: random.Random, *, exclude: Iterable[str] = (), region: str | None = None
    ) -> NodeState:
        """The least-loaded healthy node for a new conversation (ties: at random, so several
        gateways do not all pick the same node); only nodes of ``region`` when it is given
        (the region a tenant's route names)."""
        skip = set(exclude)
        up = [
            n
            for n in self.healthy()
            if n.id not in skip and (region is None or n.spec.region == region)
        ]
        if not up:
            raise ApiError.of("no_node")
        least = min(n.in_flight for n in up)
        return rng.choice([n for n in up if n.in_flight == least])

    def choose_in_regions(
        self, rng: random.Random, regions: list[str], *, exclude: Iterable[str] = ()
    ) -> NodeState:
        """A node for a tenant following routes: the first of ``regions`` (serving, then
        standby) with a healthy node; ``no_node`` when none has one."""
        if not regions:
            raise ApiError.of("no_node")
        skip = list(exclude)
        for region in regions[:-1]:
            try:
                return self.choose_new(rng, exclude=skip, region=region)
            except ApiError:
                continue
        return self.choose_new(rng, exclude=skip, region=regions[-1])

    def holder_or_failover(
        self, public: str, rng: random.Random, regions: list[str] | None
    ) -> NodeState:
        """The node holding a session; when it is down and the tenant follows routes
        (``regions``), a node of the serving region — which imports the session's replicated
        history on its first turn (docs/failover.md). Still ``node_down`` when none can."""
        try:
            return self.holder(public)
        except ApiError as exc:
            if exc.code != "node_down" or not regions:
                raise
            try:
                return self.choose_in_regions(rng, regions)
            except ApiError:
                raise exc from None

    def holder(self, public: str) -> NodeState:
        """The node holding a session or hand-off; ``node_down`` while it is ejected."""
        n = self.nodes.get(node_of(public))
        if n is None:
            raise ApiError.of("not_found")
        if n.health is not NodeHealth.UP:
            raise ApiError.of("node_down")
        return n

    def reach(self) -> dict[str, tuple[list[str], list[str]]]:
        """Per region: the nodes this gateway reaches (up) and those it does not."""
        out: dict[str, tuple[list[str], list[str]]] = {}
        for n in self.nodes.values():
            if not n.spec.region:
                continue
            up, down = out.setdefault(n.spec.region, ([], []))
            (up if n.health is NodeHealth.UP else down).append(n.id)
        return out

    def snapshot(self) -> list[dict[str, object]]:
        return [
            {
                "id": n.id,
                "region": n.spec.region,
                "address": n.spec.address,
                "health": n.health.value,
                "in_flight": n.in_flight,
                "ejections": n.total_ejections,
                "reason": n.reason,
            }
            for n in self.nodes.values()
        ]
