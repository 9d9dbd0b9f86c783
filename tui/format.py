"""What every tab's table is made of: :class:`View` (id, bilingual title, columns, a rows
function over a :class:`~kefu.tui.client.Snapshot`), cell styles and the clock formats.

Pure (no Textual, no gRPC): the tab modules (:mod:`~kefu.tui.fleet_tabs`,
:mod:`~kefu.tui.rollouts_tab`, :mod:`~kefu.tui.alerts_tab`, :mod:`~kefu.tui.regions_tab`) build
their views from these parts, so each tab's formatting is tested without a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text

if TYPE_CHECKING:
    from kefu.tui.client import Snapshot

__all__ = ["OK", "REFUSED", "WARN", "Cell", "Rows", "View", "ago", "pct", "when"]

Cell = str | Text
Rows = list[tuple[str, Sequence[Cell]]]  # (row key, cells)

REFUSED = "bold white on red"
WARN = "bold yellow"
OK = "green"


def ago(ts: float, now: float) -> str:
    """A heartbeat's age: 3s / 4m / 2h (English and Chinese read the same digits)."""
    if not ts:
        return "-"
    s = max(0.0, now - ts)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.0f}h"


def when(ts: float) -> str:
    """UTC so that every operator (and every snapshot test) reads the same clock."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


def pct(x: float) -> str:
    return f"{x:.1%}"


@dataclass(frozen=True, kw_only=True)
class View:
    """One tab: an id (also its key binding's target), a bilingual title and its table; ``more``
    are further tables shown below it in the same tab (e.g. the routes under the regions)."""

    id: str
    title: str
    columns: tuple[str, ...]
    rows: Callable[[Snapshot, float], Rows]
    more: tuple[View, ...] = ()
