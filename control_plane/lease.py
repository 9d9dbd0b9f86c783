"""The pure leader-lease decision (no bus, no clock): see :mod:`kefu.control_plane.leader`."""

from __future__ import annotations

from kefu.wire import Lease

__all__ = ["decide_lease"]


def decide_lease(current: Lease | None, me: str, now: float, ttl_s: float) -> Lease | None:
    """The lease to write, or None to leave it alone (a valid lease held by another)."""
    if current is None:
        return Lease(holder=me, expires_at=now + ttl_s, term=1)
    if current.holder == me:
        return Lease(holder=me, expires_at=now + ttl_s, term=current.term)
    if current.expires_at <= now:
        return Lease(holder=me, expires_at=now + ttl_s, term=current.term + 1)
    return None
