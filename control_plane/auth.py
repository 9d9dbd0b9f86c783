"""Who may call which control-plane RPC: operator roles and the method → role table (pure).

Every ``kefu.v1.ControlPlane`` RPC needs an operator token (``authorization: Bearer <token>``
metadata). A token has a name, which becomes the audit log's actor, and a role:

* ``viewer`` — reads only: list, show, diff, status, audit, telemetry;
* ``admin`` — everything, including issuing and revoking operator tokens.

The table is deny-by-default: a method not listed in :data:`READ_METHODS` needs ``admin``, so a
new RPC is never readable by a viewer by accident. This module imports no gRPC and no NATS;
the API adapter asks :func:`decide` and turns its answer into a status code.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass

__all__ = [
    "BOOTSTRAP_TOKEN_NAME",
    "READ_METHODS",
    "TOKEN_FILE",
    "TOKEN_PREFIX",
    "Decision",
    "Operator",
    "Role",
    "check_token_name",
    "decide",
    "generate_token",
    "hash_token",
    "parse_role",
]

#: Operator tokens start with this, so a leaked one is recognisable (secret scanners, logs).
TOKEN_PREFIX = "kcp_"
#: The token the control plane creates on its first start against an empty store.
BOOTSTRAP_TOKEN_NAME = "admin"
#: Where that token is written (mode 0600), relative to the control plane's data directory;
#: `kefu cp` reads the same path under ``$KEFU_DATA_DIR`` / ``./kefu-data`` by default.
TOKEN_FILE = "secrets/control-plane-admin.token"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class Role(enum.StrEnum):
    VIEWER = "viewer"
    ADMIN = "admin"


#: RPCs a viewer may call (everything else needs admin).
READ_METHODS = frozenset(
    {
        "ListTenants",
        "ListRegions",
        "ListConfigs",
        "GetConfig",
        "DiffConfig",
        "ListModels",
        "GetModel",
        "ListAssignments",
        "ListNodes",
        "QueryAudit",
        "QueryTelemetry",
        "GetStatus",
        "ListRollouts",
        "GetRollout",
        "GetFailoverStatus",
        "GetRolloutAnalysis",
        "ListCanaryPolicies",
        "ListAlerts",
    }
)


@dataclass(frozen=True, kw_only=True)
class Operator:
    """An authenticated caller: the token's name (the audit actor) and its role."""

    name: str
    role: Role


@dataclass(frozen=True, kw_only=True)
class Decision:
    allowed: bool
    message: str = ""  # bilingual reason when refused


def parse_role(value: str) -> Role:
    try:
        return Role(value.strip().lower())
    except ValueError:
        from kefu.errors import PermanentError

        raise PermanentError(
            f"unknown role {value!r}: use admin or viewer / "
            f"未知角色 {value!r}：请用 admin 或 viewer"
        ) from None


def check_token_name(name: str) -> str:
    """Token names: 1-63 chars of a-z, 0-9, '_', '-', '.' (they are KV keys and audit actors)."""
    if not _NAME_RE.match(name):
        from kefu.errors import PermanentError

        raise PermanentError(
            f"invalid token name {name!r}: 1-63 chars of a-z, 0-9, '_', '-', '.' / "
            f"令牌名称 {name!r} 无效：只能使用 1-63 个 a-z、0-9、'_'、'-'、'.' 字符"
        )
    return name


def generate_token() -> str:
    """A new random operator token (256 bits); show it once, store only :func:`hash_token`."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token (tokens are 256-bit random, so no slow KDF is needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def decide(operator: Operator, method: str) -> Decision:
    """May ``operator`` call ``method`` (the RPC's short name, e.g. ``CreateTenant``)?"""
    if operator.role is Role.ADMIN or method in READ_METHODS:
        return Decision(allowed=True)
    return Decision(
        allowed=False,
        message=(
            f"token {operator.name!r} has role {operator.role.value}, which may only read; "
            f"{method} needs an admin token / 令牌 {operator.name!r} 为只读角色"
            f"（{operator.role.value}），{method} 需要 admin 令牌"
        ),
    )
