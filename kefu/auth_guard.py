"""Failed-authentication accounting: count per peer, warn (rate-limited), slow a peer down.

Pure (no I/O, an injectable clock), so the control plane and the node can share it. A server
calls :meth:`FailedAuthGuard.record_failure` when it refuses a credential and sleeps for the
returned delay before answering: the first few failures of a peer cost nothing (a typo), then
each further one doubles the delay up to ``max_delay_s``, so a key-guessing loop gets a few
answers per second instead of thousands. A success resets the peer's streak; a quiet peer is
forgotten after ``forget_after_s``. :meth:`should_warn` says when to log a warning: at most
once per ``warn_interval_s`` per peer, so a flood cannot flood the log too. Memory is bounded
(``max_peers``, least recently failing forgotten first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FailedAuthGuard", "peer_host"]


def peer_host(peer: str) -> str:
    """gRPC's ``ipv4:127.0.0.1:51234`` / ``ipv6:[::1]:51234`` → the host without the port
    (a client gets a new port per connection; the host is what keeps failing)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and rest:
        host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 or rest.startswith("[") else rest
        return host.strip("[]")
    return peer or "unknown"


@dataclass
class _Peer:
    total: int = 0
    streak: int = 0
    last_failure: float = 0.0
    last_warned: float = float("-inf")
    suppressed: int = 0  # failures since the last warning
    tenants: set[str] = field(default_factory=set)


class FailedAuthGuard:
    def __init__(
        self,
        *,
        free_failures: int = 5,
        base_delay_s: float = 0.05,
        max_delay_s: float = 2.0,
        forget_after_s: float = 600.0,
        warn_interval_s: float = 30.0,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.free_failures = free_failures
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.forget_after_s = forget_after_s
        self.warn_interval_s = warn_interval_s
        self.max_peers = max_peers
        self.clock = clock
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        #: Failures ever recorded (including peers since forgotten).
        self.total = 0

    def _peer(self, peer: str, now: float) -> _Peer:
        p = self._peers.get(peer)
        if p is not None and now - p.last_failure > self.forget_after_s:
            p.streak = 0  # quiet long enough: a fresh start (the total stays)
        if p is None:
            p = self._peers[peer] = _Peer()
            while len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        self._peers.move_to_end(peer)
        return p

    def record_failure(self, peer: str, tenant: str = "") -> float:
        """Count one refused credential; returns how long to delay the answer (seconds)."""
        now = self.clock()
        p = self._peer(peer, now)
        p.total += 1
        p.streak += 1
        p.suppressed += 1
        p.last_failure = now
        if tenant and len(p.tenants) < 32:
            p.tenants.add(tenant)
        self.total += 1
        over = p.streak - self.free_failures
        if over <= 0:
            return 0.0
        return float(min(self.max_delay_s, self.base_delay_s * 2 ** min(over - 1, 32)))

    def record_success(self, peer: str) -> None:
        p = self._peers.get(peer)
        if p is not None:
            p.streak = 0

    def should_warn(self, peer: str) -> int:
        """How many failures of ``peer`` to report now (0 = stay quiet): the first failure and
        then at most one warning per ``warn_interval_s`` summing those in between."""
        p = self._peers.get(peer)
        if p is None or p.suppressed == 0:
            return 0
        now = self.clock()
        if now - p.last_warned < self.warn_interval_s:
            return 0
        n, p.suppressed, p.last_warned = p.suppressed, 0, now
        return n

    def counts(self) -> dict[str, int]:
        """Failures per peer still remembered."""
        return {peer: p.total for peer, p in self._peers.items()}

    def streak(self, peer: str) -> int:
        p = self._peers.get(peer)
        return p.streak if p else 0
