"""Who the customer is: identity tokens signed by the enterprise's backend, and the origins a
tenant's public widget id may be used from. Pure.

**Identity token** — a JWT (RFC 7519) with HMAC-SHA256 (``alg: HS256``) and the tenant's
secret, so any JWT library on the enterprise's side can make one::

    header  {"alg": "HS256", "typ": "JWT"}
    claims  {"sub": "<customer id>", "exp": <unix seconds>, "iat": <unix seconds>,
             "attrs": {"vip": true, "vip_level": "gold", ...}}

``sub`` becomes the session's ``user_id`` and ``attrs`` the verified user attributes the node
uses for scenario selection and hand-off rules (``vip``). Any other ``alg`` (``none`` above
all) is refused, the signature is compared in constant time, ``exp`` is required and checked
with ``leeway_s`` of clock skew, and a token may not live longer than ``max_lifetime_s``.

**Origins** — a public widget id is not a secret, so a browser request carrying an
``Origin`` header must come from one of the tenant's ``allowed_origins`` (exact
``scheme://host[:port]``; ``*`` allows any). Requests without ``Origin`` are server-to-server
calls, which an origin check cannot stop anyway; they are allowed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kefu.node.gateway.answers import ApiError

__all__ = [
    "RESERVED_METADATA",
    "Identity",
    "origin_allowed",
    "sign_identity",
    "verify_identity",
]

MAX_TOKEN_CHARS = 4096
MAX_ATTRS = 16
_ATTR_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
_SUB = re.compile(r"[\x21-\x7e]{1,128}")

#: Request metadata keys a client may not set itself: they come from a verified identity only.
RESERVED_METADATA = frozenset({"vip", "vip_level", "user_id", "verified", "tier"})


@dataclass(frozen=True, kw_only=True)
class Identity:
    user_id: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    verified: bool = False


ANONYMOUS = Identity()


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_identity(
    secret: bytes,
    *,
    user_id: str,
    expires_at: float,
    issued_at: float,
    attributes: Mapping[str, Any] | None = None,
) -> str:
    """An identity token (what the enterprise's backend does; here for tests and tools)."""
    header = _b64e(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims: dict[str, Any] = {"sub": user_id, "exp": int(expires_at), "iat": int(issued_at)}
    if attributes:
        claims["attrs"] = dict(attributes)
    payload = _b64e(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    sig = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64e(sig)}"


def _bad(why: str) -> ApiError:
    return ApiError.of("unauthenticated", detail=f"identity token: {why}")


def _attr_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str) and len(str(value)) <= 128:
        return str(value)
    raise ValueError("attribute values must be short strings, numbers or booleans")


def verify_identity(
    token: str,
    secrets: Iterable[bytes],
    *,
    now: float,
    leeway_s: float = 30.0,
    max_lifetime_s: float = 86400.0,
) -> Identity:
    """The verified identity in ``token``; :class:`ApiError` ``unauthenticated`` otherwise.
    Several secrets may be valid at once (rotation)."""
    if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise _bad("malformed")
    head_s, body_s, sig_s = token.split(".")
    try:
        header = json.loads(_b64d(head_s))
        claims = json.loads(_b64d(body_s))
        sig = _b64d(sig_s)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad("malformed") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise _bad("only alg HS256 is accepted")
    signing_input = f"{head_s}.{body_s}".encode("ascii")
    if not any(
        hmac.compare_digest(hmac.new(s, signing_input, hashlib.sha256).digest(), sig)
        for s in secrets
    ):
        raise _bad("bad signature")
    if not isinstance(claims, dict):
        raise _bad("claims must be an object")
    exp, iat, sub = claims.get("exp"), claims.get("iat", now), claims.get("sub")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise _bad("exp is required")
    if exp + leeway_s < now:
        raise _bad("expired")
    if not isinstance(iat, int | float) or exp - min(iat, now) > max_lifetime_s + leeway_s:
        raise _bad(f"lives longer than {max_lifetime_s:g} s")
    if not isinstance(sub, str) or not _SUB.fullmatch(sub):
        raise _bad("sub must be 1-128 printable ASCII characters")
    raw_attrs = claims.get("attrs") or {}
    if not isinstance(raw_attrs, dict) or len(raw_attrs) > MAX_ATTRS:
        raise _bad(f"attrs must be an object of at most {MAX_ATTRS} entries")
    attrs: dict[str, str] = {}
    for key, value in raw_attrs.items():
        if not isinstance(key, str) or not _ATTR_KEY.fullmatch(key):
            raise _bad(f"attribute name {key!r} must be lower_snake_case")
        try:
            attrs[key] = _attr_value(value)
        except ValueError as exc:
            raise _bad(str(exc)) from exc
    return Identity(user_id=sub, attributes=attrs, verified=True)


def origin_allowed(origin: str | None, allowed: Iterable[str]) -> bool:
    if origin is None:
        return True
    allowed = list(allowed)
    return "*" in allowed or origin.rstrip("/") in {a.rstrip("/") for a in allowed}


def turn_metadata(client: Mapping[str, str], identity: Identity) -> dict[str, str]:
    """The metadata sent to the node: the client's own keys minus the reserved ones, then the
    verified attributes (so a browser cannot make itself VIP)."""
    out = {k: v for k, v in client.items() if k not in RESERVED_METADATA}
    out.update(identity.attributes)
    if identity.verified:
        out["verified"] = "true"
    return out
