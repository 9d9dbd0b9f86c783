"""The node-local guard's adapter: keeps :class:`~kefu.node.agent.guard.GuardState` in memory
and on disk (``<data-dir>/agent/guard.json``, written atomically), counts the requests it is
told about and hands the agent the probation to revert when :func:`~kefu.node.agent.guard.decide`
says so. The agent does the revert (it owns the tenant apply); this module only keeps the
books. Also the node's boot counter (``<data-dir>/agent/boots``), which the node status carries
so the control plane can see a crash loop.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from kefu.node.agent.guard import (
    GuardPolicy,
    GuardState,
    Probation,
    count,
    decide,
    open_probation,
    release_holds,
    revert_record,
    with_revert,
)
from kefu.wire import DesiredTenant, GuardRevert, WireError, decode, encode

__all__ = ["GuardKeeper", "count_boot"]

log = logging.getLogger("kefu.node.agent.guard")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def count_boot(path: Path) -> int:
    """Add one start to the counter in ``path`` and return it (an unreadable counter restarts
    at 1: it only has to change on every start)."""
    try:
        boots = int(path.read_text(encoding="ascii").strip() or 0)
    except (OSError, ValueError):
        boots = 0
    boots += 1
    try:
        _write_atomic(path, str(boots).encode())
    except OSError as exc:
        log.warning("could not save the boot counter %s: %s", path, exc)
    return boots


class GuardKeeper:
    def __init__(self, path: Path, *, policy: GuardPolicy, node_id: str):
        self.path = path
        self.policy = policy
        self.node_id = node_id
        self.state = GuardState()
        #: Set when the state changed since the last save.
        self.dirty = False

    def load(self) -> None:
        """Read the saved state; an unreadable file is logged and set aside (the guard then
        starts empty rather than the node not starting)."""
        try:
            self.state = decode(GuardState, self.path.read_bytes(), what=str(self.path))
        except FileNotFoundError:
            return
        except (OSError, WireError) as exc:
            log.error("guard state unusable, starting empty / 守护状态文件不可用: %s", exc)
            self.state = GuardState()
            return
        if self.state.holds:
            log.warning(
                "guard holds %s: not re-applied until the desired state names other versions",
                ", ".join(f"{t} ({k})" for t, k in sorted(self.state.holds.items())),
            )

    def save(self) -> None:
        """Blocking (fsync): the agent runs it in a thread."""
        _write_atomic(self.path, encode(self.state))
        self.dirty = False

    @property
    def holds(self) -> Mapping[str, str]:
        return self.state.holds

    @property
    def reverts(self) -> list[GuardRevert]:
        return list(self.state.reverts)

    def applied(self, previous: DesiredTenant | None, new: DesiredTenant) -> Probation | None:
        """``new`` now serves (``previous`` served before): open its probation (or close the
        tenant's old one when no version changed)."""
        p = open_probation(previous, new, time.time()) if self.policy.enabled else None
        probations = dict(self.state.probations)
        if p is None:
            if probations.pop(new.tenant, None) is None:
                return None
        else:
            probations[new.tenant] = p
            log.info(
                "guard: watching %s for %.0fs (%s)",
                new.tenant,
                self.policy.probation_s,
                ", ".join(f"{s}: {a} → {b}" for s, (a, b) in p.changed.items()),
            )
        self.state = self.state.model_copy(update={"probations": probations})
        self.dirty = True
        return p

    def forget(self, tenant: str) -> None:
        if tenant in self.state.probations:
            probations = {t: p for t, p in self.state.probations.items() if t != tenant}
            self.state = self.state.model_copy(update={"probations": probations})
            self.dirty = True

    def request(self, tenant: str, *, failed: bool) -> Probation | None:
        """Count one request of ``tenant``; the probation to revert now, if any (it is closed
        here, so a revert is handed out once)."""
        p = self.state.probations.get(tenant)
        if p is None:
            return None
        now = time.time()
        verdict = decide(p, now, self.policy)
        if verdict == "watch":
            p = count(p, failed=failed)
            verdict = decide(p, now, self.policy)
        if verdict == "watch":
            self.state.probations[tenant] = p
            return None
        self.forget(tenant)
        if verdict == "passed":
            log.info("guard: %s passed its probation (%d/%d failed)", tenant, p.errors, p.turns)
            return None
        return p

    def reverted(self, p: Probation) -> GuardRevert:
        """Record the revert of ``p`` (held until the desired state names other versions)."""
        record = revert_record(p, node_id=self.node_id, now=time.time())
        self.state = with_revert(self.state, record, p.key)
        self.dirty = True
        return record

    def release(self, desired: Mapping[str, DesiredTenant]) -> None:
        """Drop the holds the desired state no longer names (call with a complete snapshot)."""
        kept = release_holds(self.state.holds, desired)
        if kept != self.state.holds:
            for tenant in sorted(set(self.state.holds) - set(kept)):
                log.info("guard: desired state for %s moved on; hold released", tenant)
            self.state = self.state.model_copy(update={"holds": kept})
            self.dirty = True
