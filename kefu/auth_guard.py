"""Failed authentication: count it per peer, slow down a peer that keeps failing, and say so
in the log without flooding it. Shared by the node's and the control plane's gRPC APIs.

:class:`FailedAuthGuard` is pure bookkeeping (an injectable clock, no I/O, no sleeping): a
gRPC adapter asks it how long to wait before answering UNAUTHENTICATED and awaits that delay
with ``asyncio.sleep`` (the event loop keeps serving everyone else). A peer is an address
without its port (one client opens many connections). Memory is bounded: the least recently
failing peers are forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FailedAuthGuard", "peer_address"]


def peer_address(peer: str) -> str:
    """``ipv4:10.0.0.5:51234`` → ``ipv4:10.0.0.5``; ``ipv6:[::1]:5`` → ``ipv6:[::1]``."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


@dataclass
class _Peer:
    failures: int  # within the current window
    first: float


class FailedAuthGuard:
    """``failed(peer)`` → seconds to wait before answering; ``log_due()`` → whether to log.

    The first ``free_failures`` failures of a peer within ``window_s`` are answered at once (a
    mistyped key); each further one waits ``base_delay_s`` doubled per failure, capped at
    ``max_delay_s``. A success does not reset the count (an attacker holding one valid key
    must not launder a key search with it); the window does.
    """

    def __init__(
        self,
        *,
        free_failures: int = 5,
        base_delay_s: float = 0.05,
        max_delay_s: float = 2.0,
        window_s: float = 60.0,
        log_every_s: float = 10.0,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.free_failures = free_failures
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.window_s = window_s
        self.log_every_s = log_every_s
        self.max_peers = max_peers
        self._clock = clock
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self._last_log: float | None = None
        #: Failures since the last log line (what that line reports).
        self.unlogged = 0
        #: Failures ever counted (forgotten peers included): reported by the status RPCs.
        self.total = 0

    def failed(self, peer: str) -> float:
        now = self._clock()
        self.total += 1
        self.unlogged += 1
        entry = self._peers.pop(peer, None)
        if entry is None or now - entry.first > self.window_s:
            entry = _Peer(failures=0, first=now)
        entry.failures += 1
        self._peers[peer] = entry  # most recent last
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
        over = entry.failures - self.free_failures
        if over <= 0:
            return 0.0
        return min(self.max_delay_s, self.base_delay_s * 2.0 ** min(over - 1, 32))

    def remembered(self) -> int:
        """Peers currently remembered (at most ``max_peers``)."""
        return len(self._peers)

    def failures(self, peer: str) -> int:
        entry = self._peers.get(peer)
        if entry is None or self._clock() - entry.first > self.window_s:
            return 0
        return entry.failures

    def report(self, peer: str) -> str | None:
        """The log line's summary for ``peer`` when one is due (see :meth:`log_due`), else None;
        the failures it reports are then no longer ``unlogged``."""
        if not self.log_due():
            return None
        text = (
            f"peer {peer}: {self.failures(peer)} failures from it in the last "
            f"{self.window_s:.0f} s, {self.unlogged} refused since the last report"
        )
        self.unlogged = 0
        return text

    def log_due(self) -> bool:
        """True at most once per ``log_every_s``; the caller logs and ``unlogged`` restarts."""
        now = self._clock()
        if self._last_log is not None and now - self._last_log < self.log_every_s:
            return False
        self._last_log = now
        return True
