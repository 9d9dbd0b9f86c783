"""Waiting for a condition by polling it, instead of sleeping for a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    read: Callable[[], Awaitable[T]],
    ok: Callable[[T], bool],
    *,
    timeout_s: float = 15.0,
    interval_s: float = 0.05,
) -> T:
    """``await read()`` until ``ok`` holds for its value; that value. After ``timeout_s`` the
    last value is returned anyway, so the caller's assert shows what was seen."""
    deadline = time.monotonic() + timeout_s
    value = await read()
    while not ok(value) and time.monotonic() < deadline:
        await asyncio.sleep(interval_s)
        value = await read()
    return value
