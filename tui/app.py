"""``kefu tui``: the operator console, a Textual app over the control-plane API.

The app owns one :class:`ControlPlaneClient` and refreshes a :class:`Snapshot` on an interval
in an exclusive worker (the event loop never waits on the network; a slow refresh is replaced,
not queued). A failure keeps the last data on screen, raises a banner saying what is wrong and
retries on the next tick; nothing reaches the terminal as a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.reactive import reactive
from textual.widgets import Footer, Header, TabbedContent, TabPane

from kefu.errors import KefuError
from kefu.tui.analysis_screen import AnalysisScreen
from kefu.tui.client import (
    ConsoleAuthError,
    ConsoleUnavailable,
    ControlPlaneClient,
    Snapshot,
    fetch_snapshot,
)
from kefu.tui.views import VIEWS, when
from kefu.tui.widgets import Banner, Confirm, Overview, ViewTable

__all__ = ["DEFAULT_REFRESH_S", "KefuConsole"]

DEFAULT_REFRESH_S = 5.0

log = logging.getLogger(__name__)


class KefuConsole(App[None]):
    """The central operator's console: overview, nodes, tenants, models, telemetry, audit,
    rollouts (Enter: the canary analysis), alerts, regions (drain / fail back for admins)."""

    TITLE = "Kefu operator console / 客服运维控制台"
    CSS = """
    TabPane { padding: 0; }
    ViewTable { height: 1fr; }
    """
    BINDINGS = [  # noqa: RUF012  (Textual's declared class attribute)
        Binding("q", "quit", "Quit / 退出"),
        Binding("r", "refresh_now", "Refresh / 刷新"),
        Binding("0", "show('overview')", "Overview / 概览"),
        *(Binding(str(i), f"show('{v.id}')", v.title) for i, v in enumerate(VIEWS, start=1)),
    ]

    #: "" while the last refresh worked; else what the banner says.
    problem: reactive[str] = reactive("")
    #: Incremented on every successful refresh (tests and watchers wait on it).
    generation: reactive[int] = reactive(0)

    def __init__(
        self,
        client: ControlPlaneClient,
        *,
        refresh_s: float = DEFAULT_REFRESH_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.client = client
        self.refresh_s = refresh_s
        self.clock = clock
        self.snapshot = Snapshot()
        self._refreshing = False
        self.sub_title = client.target

    def compose(self) -> ComposeResult:
        yield Header()
        yield Banner(id="banner")
        with TabbedContent(initial="overview"):
            with TabPane("Overview / 概览", id="overview"):
                yield Overview(id="overview-text")
            for v in VIEWS:
                with TabPane(v.title, id=v.id):
                    yield ViewTable(v, id=f"{v.id}-table")
                    for more in v.more:
                        yield ViewTable(more, id=f"{more.id}-table")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Overview).update("connecting… / 正在连接…")
        self.action_refresh_now()
        self.set_interval(self.refresh_s, self.action_refresh_now)

    async def on_unmount(self) -> None:
        await self.client.close()

    # ------------------------------------------------------------------ refresh (worker)

    def action_refresh_now(self) -> None:
        # Overload policy "skip": while one refresh is in flight (up to the call timeout) a
        # tick does nothing; replacing it instead would starve a slow control plane forever.
        if self._refreshing:
            return
        self._refreshing = True
        self.run_worker(self._refresh(), group="refresh", exit_on_error=False)

    async def _refresh(self) -> None:
        try:
            snap = await fetch_snapshot(self.client, now=self.clock())
        except ConsoleAuthError as exc:
            self.problem = (
                f"Token refused / 令牌被拒绝 — {exc}. Use --token or --token-file; "
                f"{self._retrying()}"
            )
        except ConsoleUnavailable as exc:
            self.problem = f"Control plane unreachable / 无法连接控制面 — {exc}. {self._retrying()}"
        except (KefuError, OSError) as exc:
            self.problem = f"Control plane error / 控制面错误 — {exc}. {self._retrying()}"
        except Exception as exc:  # the UI edge: a banner (and the log), never a traceback
            log.exception("refresh failed")
            self.problem = f"Unexpected error / 意外错误 — {exc!r}. {self._retrying()}"
        else:
            self.snapshot = snap
            self.problem = ""
            self._show(snap)
            self.generation += 1
        finally:
            self._refreshing = False

    def _retrying(self) -> str:
        every = f"{self.refresh_s:g}"
        text = f"Retrying every {every}s / 每 {every} 秒重试"
        if self.generation:
            text += f"; showing data of / 显示的数据来自 {when(self.snapshot.fetched_at)} UTC"
        return text + "."

    def _show(self, snap: Snapshot) -> None:
        now = self.clock()
        self.query_one(Overview).show(snap, now)
        for table in self.query(ViewTable):
            table.show(snap, now)

    def watch_problem(self, problem: str) -> None:
        self.query_one(Banner).show_problem(problem)

    # ------------------------------------------------------------------ navigation, actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # The tab keys work on the main screen only (not under the analysis screen or a dialog).
        if action == "show":
            return len(self.screen_stack) == 1
        return True

    def action_show(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        pane = self.query_one(f"#{tab}", TabPane)
        tables = pane.query(ViewTable)
        if tables:
            table = tables.first()  # the tab's main table (routes sit under the regions)
            table.focus()
            # Activating a tab may move focus to the tab strip once its messages are handled:
            # focus the table again after that, so the next key (Enter, d, ...) reaches it.
            self.call_after_refresh(table.focus)

    async def on_view_table_toggle_tenant(self, message: ViewTable.ToggleTenant) -> None:
        self.run_worker(
            self._toggle(message.tenant, message.enable), group="action", exit_on_error=False
        )

    def _confirm_as_admin(
        self, question: str, then: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        """An admin write: refused at once for a viewer token, else asked, then run in a worker."""
        if self.snapshot.status.caller_role != "admin":
            self.notify(
                "needs an admin token / 需要管理员令牌", title="Not done / 未执行", severity="error"
            )
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_worker(then(), group="action", exit_on_error=False)

        self.push_screen(Confirm(question), answered)

    def on_view_table_rollout_command(self, message: ViewTable.RolloutCommand) -> None:
        """Pause / resume / roll back: admin tokens only, after a confirm dialog."""
        rid, command = message.rollout_id, message.command
        self._confirm_as_admin(
            f"{command} rollout {rid}? / 确认对灰度发布 {rid} 执行 {command}？",
            lambda: self._act(rid, command, self.client.command_rollout(rid, command)),
        )

    def on_view_table_region_command(self, message: ViewTable.RegionCommand) -> None:
        """Drain (move every tenant's traffic away) / fail back: admins, after a confirm."""
        region, command = message.region, message.command
        question = (
            f"Drain region {region}? Its tenants move to their next allowed region. / "
            f"确认排空区域 {region}？其租户将切换到下一个允许的区域。"
            if command == "drain"
            else f"Fail back region {region}? It takes traffic again once healthy. / "
            f"确认区域 {region} 回切？恢复健康后重新承载流量。"
        )
        self._confirm_as_admin(
            question,
            lambda: self._act(region, command, self.client.command_region(region, command)),
        )

    def on_view_table_open_analysis(self, message: ViewTable.OpenAnalysis) -> None:
        """The rollout's canary analysis on its own screen (fetched there, in a worker)."""
        rid = message.rollout_id
        rollout = next((r for r in self.snapshot.rollouts if r.id == rid), None)
        self.push_screen(AnalysisScreen(rid, rollout, self.client.analysis))

    async def _act(self, what: str, command: str, call: Awaitable[object]) -> None:
        """Run one admin write, say how it went, then refresh."""
        try:
            await call
        except KefuError as exc:
            self.notify(f"{what}: {exc}", title="Not done / 未执行", severity="error")
            return
        self.notify(f"{what}: {command} done / 已执行")
        await asyncio.sleep(0)
        self.action_refresh_now()

    async def _toggle(self, tenant: str, enable: bool) -> None:
        verb = "enabled / 已启用" if enable else "disabled / 已停用"
        try:
            await self.client.set_tenant_enabled(tenant, enable)
        except KefuError as exc:
            self.notify(f"{tenant}: {exc}", title="Not done / 未执行", severity="error")
            return
        self.notify(f"{tenant} {verb} (press e again to undo / 再按 e 撤销)")
        await asyncio.sleep(0)  # let the notification render before the refresh lands
        self.action_refresh_now()
