"""The rollout analysis screen: Enter on a rollout opens it, Escape goes back.

Data down, I/O in a worker: the app hands the screen the rollout it already holds and a
``load`` coroutine function (the client's ``analysis``, the RPC ``kefu cp rollout analysis``
calls); the screen fetches in a worker on mount and on ``r``, and shows a failure as a line in
the screen (the last good data stays), never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, Static

from kefu.errors import KefuError
from kefu.tui.analysis_view import (
    METRIC_COLUMNS,
    SRM_COLUMNS,
    analysis_summary,
    decision_history,
    metric_rows,
    srm_rows,
)
from kefu.v1 import control_plane_pb2 as pb

__all__ = ["AnalysisScreen"]

log = logging.getLogger(__name__)

Loader = Callable[[str], Awaitable[pb.RolloutAnalysis]]


class AnalysisScreen(Screen[None]):
    """Per metric baseline vs canary, the sample-ratio checks and the decision history."""

    DEFAULT_CSS = """
    AnalysisScreen Static, AnalysisScreen Label { padding: 0 1; }
    AnalysisScreen .title { text-style: bold; margin-top: 1; }
    AnalysisScreen DataTable { height: auto; max-height: 12; }
    AnalysisScreen #analysis-problem { color: $error; text-style: bold; }
    """
    BINDINGS = [  # noqa: RUF012  (Textual's declared class attribute)
        Binding("escape,q", "app.pop_screen", "Back / 返回"),
        Binding("r", "reload", "Refresh / 刷新"),
    ]

    #: Incremented after each successful load (tests wait on it).
    loaded: reactive[int] = reactive(0)
    #: "" while the last load worked; else what went wrong.
    problem: reactive[str] = reactive("")

    def __init__(self, rollout_id: str, rollout: pb.Rollout | None, load: Loader) -> None:
        super().__init__()
        self.rollout_id = rollout_id
        self.rollout = rollout
        self._load = load
        self.analysis: pb.RolloutAnalysis | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Static(f"{self.rollout_id}: loading… / 加载中…", id="analysis-summary")
            yield Static("", id="analysis-problem")
            yield Label("Metrics (bad-event rates) / 指标（不良事件率）", classes="title")
            yield DataTable[Text | str](id="analysis-metrics", cursor_type="row")
            yield Label("Sample ratio / 样本比例", classes="title")
            yield DataTable[Text | str](id="analysis-srm", cursor_type="row")
            yield Label("Decision history / 决策记录", classes="title")
            yield Static(decision_history(self.rollout), id="analysis-history")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"rollout analysis / 灰度分析 {self.rollout_id}"
        self.query_one("#analysis-metrics", DataTable).add_columns(*METRIC_COLUMNS)
        self.query_one("#analysis-srm", DataTable).add_columns(*SRM_COLUMNS)
        self.action_reload()

    def action_reload(self) -> None:
        self.run_worker(self._fetch(), group="analysis", exclusive=True, exit_on_error=False)

    async def _fetch(self) -> None:
        try:
            a = await self._load(self.rollout_id)
        except (KefuError, OSError) as exc:
            self.problem = f"Analysis not loaded / 分析结果加载失败 — {exc}"
        except Exception as exc:  # the UI edge: a line on screen (and the log), no traceback
            log.exception("analysis load failed")
            self.problem = f"Unexpected error / 意外错误 — {exc!r}"
        else:
            self.problem = ""
            self.show(a)
            self.loaded += 1

    def watch_problem(self, problem: str) -> None:
        self.query_one("#analysis-problem", Static).update(Text(problem))

    def show(self, a: pb.RolloutAnalysis) -> None:
        self.analysis = a
        self.query_one("#analysis-summary", Static).update(analysis_summary(a, self.rollout))
        for table_id, rows in (
            ("#analysis-metrics", metric_rows(a)),
            ("#analysis-srm", srm_rows(a)),
        ):
            table = self.query_one(table_id, DataTable)
            table.clear()
            for key, cells in rows:
                table.add_row(*cells, key=key)
        self.query_one("#analysis-history", Static).update(decision_history(self.rollout))
