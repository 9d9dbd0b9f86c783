"""How ``kefu cp`` shows replies: rich tables and times."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

__all__ = ["ago", "listed", "simple", "table", "when"]


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    Console().print(t)


def listed(reply: Any, field: str) -> Sequence[Any]:
    """The items of a listing reply (``reply.<field>``), or the single item a write returned."""
    items = getattr(reply, field, None)
    return items if items is not None else [reply]


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def ago(ts: float) -> str:
    if not ts:
        return "-"
    s = time.time() - ts
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


def simple(method: str, build: Any, show: Any) -> dict[str, Any]:
    """A ``kefu cp`` verb that calls one API *method*: build its request, show its reply."""
    return {"build": lambda pb, a: (method, build(pb, a)), "show": show}
