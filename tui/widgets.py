"""The console's widgets: the problem banner, the overview, and one table per view.

Data flows down (the app calls :meth:`show` with each new snapshot); requests flow up as
messages (:class:`ViewTable.ToggleTenant`, :class:`ViewTable.RolloutCommand`,
:class:`ViewTable.OpenAnalysis`, :class:`ViewTable.RegionCommand`), so no widget talks to the
control plane itself. :class:`Confirm` asks yes / no before a rollout or region command.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Label, Static

from kefu.tui.client import Snapshot
from kefu.tui.views import View, overview_lines

__all__ = ["Banner", "Confirm", "Overview", "ViewTable"]


class Banner(Static):
    """A red line across the top while the control plane is unreachable or refuses us."""

    DEFAULT_CSS = """
    Banner {
        background: $error;
        color: $text;
        text-style: bold;
        padding: 0 1;
        display: none;
    }
    Banner.-shown { display: block; }
    """

    def show_problem(self, problem: str) -> None:
        self.update(Text(problem))
        self.set_class(bool(problem), "-shown")


class Overview(Static):
    """Who am I, who leads, and the counts an operator checks first."""

    DEFAULT_CSS = """
    Overview { padding: 1 2; }
    """

    def show(self, snapshot: Snapshot, now: float) -> None:
        self.update("\n".join(overview_lines(snapshot, now)))


class ViewTable(DataTable[str | Text]):
    """A table for one :class:`View`; keeps the cursor on the same row across refreshes."""

    BINDINGS = [  # noqa: RUF012  (Textual's declared class attribute)
        Binding("e", "toggle_tenant", "Enable/disable / 启停租户", show=True),
        Binding("p", "rollout('pause')", "Pause/resume / 暂停/继续", show=True),
        Binding("b", "rollout('rollback')", "Roll back / 回滚", show=True),
        Binding("a", "open_analysis", "Analysis (Enter) / 分析", show=True),
        Binding("d", "region('drain')", "Drain / 排空", show=True),
        Binding("f", "region('failback')", "Fail back / 回切", show=True),
    ]

    class OpenAnalysis(Message):
        """The operator asked for the canary analysis of the rollout under the cursor."""

        def __init__(self, rollout_id: str) -> None:
            self.rollout_id = rollout_id
            super().__init__()

    class RegionCommand(Message):
        """An admin asked to drain the region under the cursor, or to let it fail back."""

        def __init__(self, region: str, command: str) -> None:
            self.region = region
            self.command = command
            super().__init__()

    class RolloutCommand(Message):
        """The operator asked to pause, resume or roll back the rollout under the cursor."""

        def __init__(self, rollout_id: str, command: str) -> None:
            self.rollout_id = rollout_id
            self.command = command
            super().__init__()

    class ToggleTenant(Message):
        """The operator asked to enable or disable the tenant under the cursor."""

        def __init__(self, tenant: str, enable: bool) -> None:
            self.tenant = tenant
            self.enable = enable
            super().__init__()

    def __init__(self, view: View, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.view = view
        self._enabled: dict[str, bool] = {}
        self._phases: dict[str, str] = {}
        self._admin = False

    def on_mount(self) -> None:
        self.add_columns(*self.view.columns)

    def show(self, snapshot: Snapshot, now: float) -> None:
        keep = self.cursor_row
        self.clear()
        for key, cells in self.view.rows(snapshot, now):
            self.add_row(*cells, key=key)
        self._enabled = {t.id: t.enabled for t in snapshot.tenants}
        self._phases = {r.id: r.phase for r in snapshot.rollouts}
        admin = snapshot.status.caller_role == "admin"
        if admin != self._admin:
            self._admin = admin
            self.refresh_bindings()  # the admin-only keys appear in (or leave) the footer
        if self.row_count:
            self.move_cursor(row=min(keep, self.row_count - 1))

    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Only the tenants table offers the toggle (and shows it in the footer).
        if action == "toggle_tenant":
            return self.view.id == "tenants"
        if action in ("rollout", "open_analysis"):
            return self.view.id == "rollouts"
        if action == "region":
            # Drain / fail back are admin writes: offered only to an admin token.
            return self.view.id == "regions" and self._admin
        return True

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if self.view.id == "rollouts" and event.row_key.value is not None:
            self.post_message(self.OpenAnalysis(event.row_key.value))

    def action_open_analysis(self) -> None:
        rollout_id = self.selected_key()
        if rollout_id is not None:
            self.post_message(self.OpenAnalysis(rollout_id))

    def action_region(self, command: str) -> None:
        region = self.selected_key()
        if region is not None:
            self.post_message(self.RegionCommand(region, command))

    def action_toggle_tenant(self) -> None:
        tenant = self.selected_key()
        if tenant is not None:
            self.post_message(self.ToggleTenant(tenant, not self._enabled.get(tenant, True)))

    def action_rollout(self, command: str) -> None:
        rollout_id = self.selected_key()
        if rollout_id is None:
            return
        if command == "pause" and self._phases.get(rollout_id) == "paused":
            command = "resume"
        self.post_message(self.RolloutCommand(rollout_id, command))


class Confirm(ModalScreen[bool]):
    """Yes / no before a rollout or region command (y / n, or the buttons)."""

    DEFAULT_CSS = """
    Confirm { align: center middle; }
    Confirm > Vertical { width: 70; height: auto; border: thick $warning; padding: 1 2; }
    Confirm Horizontal { height: auto; margin-top: 1; }
    """
    BINDINGS = [  # noqa: RUF012  (Textual's declared class attribute)
        Binding("y", "answer(True)", "Yes / 是"),
        Binding("n,escape", "answer(False)", "No / 否"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            with Horizontal():
                yield Button("Yes / 是 (y)", variant="warning", id="yes")
                yield Button("No / 否 (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
