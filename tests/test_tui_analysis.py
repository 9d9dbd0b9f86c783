"""The console's rollout analysis screen (Enter on a rollout) and the Regions tab's admin
actions (drain / fail back), driven with Pilot over the in-memory client double, plus SVG
snapshots of both; then both through the gRPC client against a real control plane on a real
nats-server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cp_support import ACTOR, new_version, seed_demo, trust_with
from rich.text import Text
from textual.widgets import DataTable, Static
from tui_support import ANALYSIS, NOW, MemoryClient, open_tab, until

from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
from kefu.errors import PermanentError
from kefu.keys import SigningKey
from kefu.natsserver import NatsServer
from kefu.rollout import CAPABILITY_SPLIT, Step, Wave
from kefu.tui.analysis_screen import AnalysisScreen
from kefu.tui.analysis_view import analysis_summary, decision_history, metric_rows, srm_rows
from kefu.tui.app import KefuConsole
from kefu.tui.client import GrpcControlPlaneClient, Snapshot
from kefu.tui.regions_tab import REGIONS, ROUTES, replication_lag
from kefu.tui.widgets import Confirm, ViewTable
from kefu.v1 import control_plane_pb2 as pb
from kefu.wire import BUCKET_NODES, NodeStatus, encode


def _plain(cells: Any) -> list[str]:
    return [c.plain if isinstance(c, Text) else str(c) for c in cells]


def _styles(cells: Any) -> set[str]:
    return {str(c.style) for c in cells if isinstance(c, Text) and c.style}


# --- pure formatting ------------------------------------------------------------------------


def test_metric_rows_paint_worse_red_within_green_and_show_counts_and_intervals() -> None:
    rows = dict(metric_rows(ANALYSIS))
    assert list(rows) == ["error", "fallback", "wrong_intent"]
    fallback = _plain(rows["fallback"])
    assert fallback[0] == "fallback / 兜底"
    assert fallback[1] == "5.00% (350/7000)" and fallback[2] == "23.00% (92/400)"
    assert fallback[3] == "+18.00%" and fallback[4] == "[+9.10%, +26.90%]"
    assert fallback[5] == "0.0004" and fallback[6] == "5.0%" and "WORSE" in fallback[7]
    assert _styles(rows["fallback"]) == {"bold white on red"}  # every cell of the row
    assert "在容差内" in _plain(rows["error"])[7] and _styles(rows["error"]) == {"green"}
    # Too few corrections: no interval, not painted (only its status cell is yellow).
    wrong = _plain(rows["wrong_intent"])
    assert wrong[4] == "-" and "样本不足" in wrong[7]
    assert _styles(rows["wrong_intent"]) == {"bold yellow"}


def test_srm_rows_summary_and_history() -> None:
    srm = dict(srm_rows(ANALYSIS))
    assert _plain(srm["overall"])[0] == "overall / 总体" and "no" in _plain(srm["overall"])[6]
    node = _plain(srm["sh-2"])
    assert node[1:4] == ["80", "300", "19.0"] and node[6].startswith("YES / 失衡")
    rollout = pb.Rollout(id="ro-1", policy="default", history=["t1 created by admin", "t2 x"])
    summary = analysis_summary(ANALYSIS, rollout).plain
    assert "ROLL BACK / 回滚" in summary and "policy / 策略 default" in summary
    assert "canary 灰度 120 / baseline 基线 2300" in summary and "兜底率显著变差" in summary
    assert (
        "尚无金丝雀分析结果"
        in analysis_summary(pb.RolloutAnalysis(rollout_id="ro-1"), rollout).plain
    )
    assert (
        "未设置金丝雀分析策略"
        in analysis_summary(pb.RolloutAnalysis(rollout_id="ro-2"), pb.Rollout(id="ro-2")).plain
    )
    assert decision_history(rollout) == "t1 created by admin\nt2 x"
    assert decision_history(None).startswith("no decisions yet")


def test_regions_show_replication_lag_when_the_status_carries_it_and_every_route() -> None:
    assert replication_lag(pb.RegionHealth(region="a")).plain == "—"  # nobody replicates
    assert replication_lag(pb.RegionHealth(region="a", replicating=True)).plain == "0.0s"
    assert replication_lag(SimpleNamespace(replication_lag_s=0.0, replicating=False)).plain == "—"

    def lag(s: float) -> Text:
        return replication_lag(pb.RegionHealth(region="a", replication_lag_s=s, replicating=True))

    assert lag(1.25).plain == "1.2s"
    slow = lag(7.0)
    assert slow.plain == "7.0s" and str(slow.style) == "bold yellow"
    assert lag(600.0).plain == "10m"

    lagging = SimpleNamespace(
        region="eu-1", state="up", since=NOW - 10, drained=True, countdown_s=0.0,
        serves_traffic=False, evidence="drained by admin", replication_lag_s=2.5, replicating=True,
    )  # fmt: skip
    routes = [
        pb.TenantRoute(tenant="acme", region="eu-2", home="eu-1", state="serving", epoch=4),
        pb.TenantRoute(tenant="solo", state="unavailable", home="eu-1", reason="none healthy"),
    ]
    snap = Snapshot(failover=SimpleNamespace(regions=[lagging], routes=routes))  # type: ignore[arg-type]
    (row,) = [cells for _, cells in REGIONS.rows(snap, NOW)]
    assert _plain(row)[1] == "up / 正常 (drained / 已排空)" and _plain(row)[6] == "2.5s"
    by_tenant = {k: _plain(c) for k, c in ROUTES.rows(snap, NOW)}
    assert by_tenant["acme"][1:5] == ["eu-2", "failed over / 已切换", "eu-1", "4"]
    assert by_tenant["solo"][2] == "unavailable / 不可用" and by_tenant["solo"][6] == "none healthy"


# --- Pilot -----------------------------------------------------------------------------------


async def test_enter_on_a_rollout_opens_its_analysis_fetched_in_a_worker() -> None:
    client = MemoryClient()
    console = KefuConsole(client, refresh_s=3600, clock=lambda: NOW)
    async with console.run_test(size=(200, 50)) as pilot:
        await until(lambda: console.generation > 0, pilot)
        await pilot.press("6")
        rollouts = console.query_one("#rollouts-table", ViewTable)
        await until(lambda: rollouts.has_focus, pilot)
        await pilot.press("enter")
        await until(lambda: isinstance(console.screen, AnalysisScreen), pilot)
        screen = console.screen
        assert isinstance(screen, AnalysisScreen)
        await until(lambda: screen.loaded > 0, pilot)
        metrics = screen.query_one("#analysis-metrics", DataTable)
        assert metrics.row_count == 3
        assert "WORSE" in _plain(metrics.get_row("fallback"))[7]
        assert screen.query_one("#analysis-srm", DataTable).row_count == 2
        history = str(screen.query_one("#analysis-history", Static).render())
        assert "canary analysis: advance" in history
        await pilot.press("2")  # the tab keys do nothing here (no crash, still on the screen)
        assert isinstance(console.screen, AnalysisScreen)
        await pilot.press("escape")
        await until(lambda: rollouts.has_focus, pilot)  # back on the table
        # A failing fetch: a line on the screen, no traceback; `r` retries and clears it.
        client.analysis_fail = PermanentError("NOT_FOUND: no rollout / 灰度发布不存在")
        await pilot.press("a")
        await until(lambda: isinstance(console.screen, AnalysisScreen), pilot)
        screen = console.screen
        assert isinstance(screen, AnalysisScreen)
        await until(lambda: "NOT_FOUND" in screen.problem, pilot)
        assert "加载失败" in screen.problem
        client.analysis_fail = None
        await pilot.press("r")
        await until(lambda: screen.loaded > 0 and not screen.problem, pilot)


async def test_drain_and_failback_keys_only_for_admins_after_a_confirm() -> None:
    client = MemoryClient()
    console = KefuConsole(client, refresh_s=3600, clock=lambda: NOW)
    async with console.run_test(size=(200, 50)) as pilot:
        await until(lambda: console.generation > 0, pilot)
        await pilot.press("8")
        table = console.query_one("#regions-table", ViewTable)
        await until(lambda: table.has_focus, pilot)
        assert table.check_action("region", ("drain",))
        assert console.query_one("#routes-table", ViewTable).row_count == 2
        await pilot.press("d")
        await until(lambda: isinstance(console.screen, Confirm), pilot)
        assert "排空区域 cn-east" in console.screen.question  # type: ignore[attr-defined]
        await pilot.press("n")  # declined: nothing sent
        await pilot.press("down", "f", "y")
        await until(lambda: client.region_commands == [("cn-north", "failback")], pilot)
        await pilot.press("up", "d", "y")
        await until(lambda: client.region_commands[-1] == ("cn-east", "drain"), pilot)
        assert len(client.region_commands) == 2

    viewer = MemoryClient(role="viewer")
    console = KefuConsole(viewer, refresh_s=3600, clock=lambda: NOW)
    async with console.run_test(size=(200, 50)) as pilot:
        await until(lambda: console.generation > 0, pilot)
        await pilot.press("8")
        table = console.query_one("#regions-table", ViewTable)
        assert not table.check_action("region", ("drain",))  # not offered, not in the footer
        await pilot.press("d", "y", "f", "y")
        await pilot.pause(0.2)
        assert viewer.region_commands == [] and not isinstance(console.screen, Confirm)


def test_snapshot_rollout_analysis(snap_compare: Any) -> None:
    console = KefuConsole(MemoryClient(), refresh_s=3600, clock=lambda: NOW)

    async def run_before(pilot: Any) -> None:
        await until(lambda: console.generation > 0, pilot)
        await pilot.press("6")
        await until(lambda: console.query_one("#rollouts-table").has_focus, pilot)
        await pilot.press("enter")
        await until(lambda: isinstance(console.screen, AnalysisScreen), pilot)
        screen = console.screen
        await until(lambda: screen.loaded > 0, pilot)  # type: ignore[attr-defined]
        await pilot.pause()

    assert snap_compare(console, terminal_size=(170, 40), run_before=run_before)


def test_snapshot_regions(snap_compare: Any) -> None:
    console = KefuConsole(MemoryClient(), refresh_s=3600, clock=lambda: NOW)
    assert snap_compare(console, terminal_size=(200, 30), run_before=open_tab("8"))


# --- against a real control plane ------------------------------------------------------------


@pytest.mark.slow
async def test_analysis_and_drain_through_a_real_control_plane(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    """The gRPC client's new calls on real RPCs: the analysis screen of a rollout started with
    a policy, then drain and fail back from the Regions tab, checked in the control plane."""
    opts = ControlPlaneOptions(
        nats_url=nats_server.url, trust=trust_with(ops_key), listen="127.0.0.1:0", regions=["r1"]
    )
    async with ControlPlaneApp(opts) as app:
        assert app.cp is not None and app.bus is not None and app.first_token
        await seed_demo(app.cp, "r1")
        await app.cp.publish_model(new_version(tmp_path, ops_key, "9.0.0"), actor=ACTOR)
        bus = app.bus

        async def heartbeat() -> None:  # the region stays healthy: fail back is allowed
            while True:
                node = NodeStatus(
                    node_id="edge-1",
                    region="r1",
                    capabilities=[CAPABILITY_SPLIT],
                    heartbeat_at=time.time(),
                )
                await bus.kv_put(BUCKET_NODES, node.node_id, encode(node))
                await asyncio.sleep(0.5)

        beating = asyncio.create_task(heartbeat())
        ro = await app.cp.start_rollout(
            "demo-shop",
            models={"intent": "demo-shop-intent@9.0.0"},
            waves=[Wave(regions=["r1"])],
            steps=[Step(weight=0.5, bake_s=3600)],
            actor=ACTOR,
            policy="default",
        )
        token = app.first_token
        client = GrpcControlPlaneClient(f"127.0.0.1:{app.port}", lambda: (token, "test"))
        console = KefuConsole(client, refresh_s=0.5)
        async with console.run_test(size=(200, 50)) as pilot:
            await until(lambda: any(r.id == ro.id for r in console.snapshot.rollouts), pilot)
            await until(lambda: console.snapshot.status.caller_role == "admin", pilot)
            await pilot.press("6")
            rollouts = console.query_one("#rollouts-table", ViewTable)
            await until(lambda: rollouts.has_focus and rollouts.row_count > 0, pilot)
            await pilot.press("enter")
            await until(lambda: isinstance(console.screen, AnalysisScreen), pilot)
            screen = console.screen
            assert isinstance(screen, AnalysisScreen)
            await until(lambda: screen.loaded > 0, pilot)
            assert screen.analysis is not None and screen.analysis.rollout_id == ro.id
            assert screen.problem == ""
            summary = str(screen.query_one("#analysis-summary", Static).render())
            assert ro.id in summary and "default" in summary
            assert "created by" in str(screen.query_one("#analysis-history", Static).render())
            await pilot.press("escape")

            async def drained() -> bool:
                (h,) = [h for h in await app.cp.region_health() if h.region == "r1"]
                return h.drained

            regions = console.query_one("#regions-table", ViewTable)
            await until(lambda: regions.row_count > 0, pilot)
            await pilot.press("8")
            await until(lambda: regions.has_focus, pilot)
            await pilot.press("d")
            await until(lambda: isinstance(console.screen, Confirm), pilot)
            await pilot.press("y")
            await until(lambda: "drained" in _region_health_cell(console), pilot)
            assert await drained()
            await pilot.press("f", "y")
            await until(lambda: "drained" not in _region_health_cell(console), pilot)
            assert not await drained()
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)  # our own task, ended here
        events = await app.cp.audit_log(limit=100)
        ops = [e for e in events if e.action in ("region.drain", "region.failback")]
        assert [(e.action, e.actor) for e in ops] == [
            ("region.drain", "admin"),
            ("region.failback", "admin"),
        ]


def _region_health_cell(console: KefuConsole) -> str:
    table = console.query_one("#regions-table", ViewTable)
    rows = [_plain(table.get_row_at(i)) for i in range(table.row_count)]
    return next((r[1] for r in rows if r[0] == "r1"), "")


def test_failover_status_carries_each_regions_largest_replication_lag() -> None:
    from kefu.control_plane.api_regions import health_msg, replication_lags
    from kefu.wire import NodeStatus, RegionHealth

    nodes = [
        NodeStatus(node_id="e1", region="cn-east", replication_lag_s=0.4,
                   replication_streams={"KEFU_TURNS_cn-east": {"messages": 3}}),
        NodeStatus(node_id="e2", region="cn-east", replication_lag_s=2.0,
                   replication_streams={"KEFU_TURNS_cn-east": {"messages": 3}}),
        NodeStatus(node_id="u1", region="eu-1"),  # replication off
    ]  # fmt: skip
    lags = replication_lags(nodes)
    assert lags == {"cn-east": (2.0, True)}
    msg = health_msg(RegionHealth(region="cn-east"), NOW, lags["cn-east"])
    assert replication_lag(msg).plain == "2.0s"
    assert replication_lag(health_msg(RegionHealth(region="eu-1"), NOW)).plain == "—"
