"""The typed plugin interface: what a plugin returns and what a Python plugin implements.

A Python plugin is an async callable registered under the ``kefu.plugins`` entry-point group::

    # pyproject.toml of the enterprise's package
    [project.entry-points."kefu.plugins"]
    crm-lookup = "acme_kefu.crm:lookup"

    async def lookup(request: PluginRequest) -> PluginReply:
        ...
        return PluginReply(data={"customer": {"level": "gold"}})

The tenant config names it (``kind: python``, ``entry_point: crm-lookup``) and maps
``data`` to flow values with ``outputs`` exactly like an HTTP plugin's JSON answer. This
module is pure (no I/O), so the flow engine can use these types without an HTTP client.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PluginCall",
    "PluginFunction",
    "PluginOutcome",
    "PluginReply",
    "PluginRequest",
    "PluginResult",
]


class PluginOutcome(enum.StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"  # the back end says the thing does not exist (validation)
    REJECTED = "rejected"  # a business refusal ("already shipped"): ``code`` says which
    FAILED = "failed"  # down, slow, garbage, circuit open: ``code`` says which


@dataclass(frozen=True, kw_only=True)
class PluginResult:
    outcome: PluginOutcome
    values: dict[str, str] = field(default_factory=dict)
    code: str = ""
    latency_ms: float = 0.0
    attempts: int = 0


@dataclass(frozen=True, kw_only=True)
class PluginCall:
    """What is recorded per call, in the session and in metrics (no inputs: they may be
    personal data; no secrets)."""

    plugin: str
    at: str
    outcome: str
    code: str
    latency_ms: float
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "at": self.at,
            "outcome": self.outcome,
            "code": self.code,
            "latency_ms": self.latency_ms,
            "attempts": self.attempts,
        }


# ---------------------------------------------------------------- python plugin interface


@dataclass(frozen=True, kw_only=True)
class PluginRequest:
    tenant: str
    plugin: str
    inputs: Mapping[str, str]
    lang: str
    timeout_s: float


@dataclass(frozen=True, kw_only=True)
class PluginReply:
    outcome: PluginOutcome = PluginOutcome.OK
    data: Mapping[str, Any] = field(default_factory=dict)  # mapped by the spec's outputs
    code: str = ""


PluginFunction = Callable[[PluginRequest], Awaitable[PluginReply]]
