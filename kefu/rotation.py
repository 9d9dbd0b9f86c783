"""Rotation with overlap for tenant API keys and operator tokens (pure: no servers, no clock).

A secret may carry an expiry (``expires_at``, Unix seconds; ``0`` = never). Rotating a secret
issues its successor at once and gives the old one an expiry ``overlap`` from now: during that
successor period both work, so channels and scripts can switch without a failed call; after it
the old one is refused with :func:`expired_message`, which says when it expired and what to
use instead. Nodes and control-plane replicas decide with their own clock through
:func:`usable` (the expiry travels in the desired state, not as a later event), so an
expiry takes effect on time even when no one changes anything.
"""

from __future__ import annotations

import re
import time

from kefu.errors import PermanentError

__all__ = [
    "DEFAULT_OVERLAP_S",
    "MAX_OVERLAP_S",
    "expired_message",
    "expiry_after",
    "format_utc",
    "parse_duration",
    "usable",
]

#: The successor period when ``--overlap`` is not given: a day, long enough to roll a config
#: change through every channel, short enough that a leaked old secret dies soon.
DEFAULT_OVERLAP_S = 24 * 3600.0
#: Longer overlaps defeat the purpose of rotating.
MAX_OVERLAP_S = 90 * 24 * 3600.0

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, *, what: str = "--overlap", maximum: float = MAX_OVERLAP_S) -> float:
    """``"90s"``, ``"15m"``, ``"24h"``, ``"7d"`` or plain seconds → seconds (0 allowed)."""
    m = _DURATION_RE.match(text or "")
    if not m:
        raise PermanentError(
            f"{what} {text!r}: use a duration such as 30m, 24h or 7d / "
            f"{what} {text!r} 无效：请使用 30m、24h 或 7d 这样的时长"
        )
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    return check_duration(seconds, what=what, maximum=maximum)


def check_duration(
    seconds: float, *, what: str = "overlap", maximum: float = MAX_OVERLAP_S
) -> float:
    if not (0.0 <= seconds <= maximum):
        raise PermanentError(
            f"{what} must be between 0 and {maximum / 86400:g} days (got {seconds:g} s) / "
            f"{what} 必须在 0 到 {maximum / 86400:g} 天之间（当前 {seconds:g} 秒）"
        )
    return seconds


def expiry_after(now: float, seconds: float) -> float:
    """The expiry ``seconds`` after ``now``; an overlap of 0 expires the old secret at once."""
    return now + seconds


def usable(expires_at: float, now: float) -> bool:
    """Whether a secret with ``expires_at`` (0 = never) still works at ``now``."""
    return expires_at <= 0.0 or now < expires_at


def format_utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def expired_message(kind: str, name: str, expires_at: float) -> str:
    """Why an expired secret is refused: ``kind`` is ``API key`` or ``operator token``."""
    zh = "API 密钥" if kind == "API key" else "操作员令牌"
    when = format_utc(expires_at)
    en_name, zh_name = (f" {name}", f" {name} ") if name else ("", "")
    return (
        f"{kind}{en_name} expired at {when} (it was rotated or issued with an expiry): "
        f"use its successor / {zh}{zh_name}已于 {when} 过期（已轮换或设有有效期）：请使用新的{zh}"
    )
