"""A terminal progress bar for long model jobs (training, building the defaults)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, float], None]]:
    """Yields ``report(stage, fraction)``; draws a rich progress bar on a terminal."""
    if not enabled:
        yield lambda stage, frac: None
        return
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        transient=False,
        console=None,
    ) as prog:
        task = prog.add_task("", total=1.0)
        label = [""]

        def report(stage: str, frac: float) -> None:
            if stage != label[0]:
                label[0] = stage
                prog.update(task, description=stage)
            prog.update(task, completed=frac)

        yield report
