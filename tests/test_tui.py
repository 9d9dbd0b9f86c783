"""The operator console (`kefu tui`): against a real control plane on a real nats-server
(tables show the real node and tenant; the banner while unreachable or refused; an action),
and SVG snapshots of screens fed by the in-memory client double."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cp_support import cp_node, seed_demo, trust_with
from packaging_helpers import free_port
from rich.text import Text
from tui_support import NOW, MemoryClient, until

from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
from kefu.control_plane.tokens import read_token_file
from kefu.keys import SigningKey
from kefu.natsserver import NatsServer
from kefu.tui.app import KefuConsole
from kefu.tui.client import (
    ConsoleAuthError,
    ConsoleUnavailable,
    GrpcControlPlaneClient,
    Snapshot,
    fetch_snapshot,
)
from kefu.tui.regions_tab import ROUTES
from kefu.tui.views import VIEWS, ago
from kefu.tui.widgets import Banner, ViewTable


def _cells(console: KefuConsole, view: str) -> list[list[str]]:
    table = console.query_one(f"#{view}-table", ViewTable)
    return [
        [c.plain if isinstance(c, Text) else str(c) for c in table.get_row_at(i)]
        for i in range(table.row_count)
    ]


def _banner(console: KefuConsole) -> str:
    b = console.query_one(Banner)
    return str(b.render()) if b.has_class("-shown") else ""


@pytest.mark.slow
async def test_console_retries_until_the_control_plane_is_up_then_shows_real_state(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    token_file = tmp_path / "secrets" / "admin.token"
    opts = ControlPlaneOptions(
        nats_url=nats_server.url,
        trust=trust_with(ops_key),
        listen=target,
        regions=["r1"],
        admin_token_file=token_file,
    )
    # The console starts first: nothing listens yet, so it shows the banner and keeps retrying.
    # Its token file is written only by the control plane's first start.
    client = GrpcControlPlaneClient(
        target, lambda: (read_token_file(token_file, missing_ok=True), "test"), timeout_s=5.0
    )
    console = KefuConsole(client, refresh_s=0.3)
    async with console.run_test(size=(220, 50)) as pilot:
        await until(lambda: "unreachable" in _banner(console), pilot)
        assert "无法连接控制面" in _banner(console) and target in _banner(console)
        assert console.generation == 0

        async with ControlPlaneApp(opts) as cp:
            assert cp.port == port and cp.first_token
            assert token_file.read_text(encoding="utf-8").strip() == cp.first_token
            await seed_demo(cp.cp, region="r1")
            async with cp_node(tmp_path, nats_server.url, ops_key, telemetry_s=10.0) as (_, agent):
                await agent.wait_for(lambda: "demo-shop" in agent.applied)

                def node_serving() -> bool:
                    rows = _cells(console, "nodes")
                    return any(r[0] == "n1" and "demo-shop:serving" in r[5] for r in rows)

                await until(node_serving, pilot)
                assert _banner(console) == ""
                (n1,) = _cells(console, "nodes")
                assert n1[1] == "r1" and n1[3].startswith("yes")
                assert any(m.startswith("demo-shop-intent@") for m in n1[6].split(", "))
                tenants = _cells(console, "tenants")
                assert [r[0] for r in tenants] == ["demo-shop"]
                assert tenants[0][2].startswith("yes") and "r1: config" in tenants[0][5]
                models = {r[0] for r in _cells(console, "models")}
                assert {"demo-shop-intent", "sentiment"} <= models
                audit_actions = {r[3] for r in _cells(console, "audit")}
                assert {"tenant.create", "config.put", "assign"} <= audit_actions
                overview = str(console.query_one("#overview-text").render())
                assert "admin (admin)" in overview and "1/1 online" in overview

                # An action: disable the tenant from the tenants tab, then enable it again.
                await pilot.press("2")
                assert console.query_one("#tenants-table").has_focus
                await pilot.press("e")

                async def enabled() -> bool:
                    return {t.id: t.enabled for t in await cp.cp.list_tenants()}["demo-shop"]

                flags: list[bool] = []

                async def record() -> None:
                    flags.append(await enabled())

                await until(lambda: _cells(console, "tenants")[0][2].startswith("disabled"), pilot)
                await record()
                await pilot.press("e")
                await until(lambda: _cells(console, "tenants")[0][2].startswith("yes"), pilot)
                await record()
                assert flags == [False, True]

                # A viewer token may look but not act: refused, and nothing changes.
                _, viewer_token = await cp.tokens.issue("watcher", "viewer", actor="test")
                viewer = GrpcControlPlaneClient(target, lambda: (viewer_token, "test"))
                assert [t.id for t in (await viewer.tenants()).tenants] == ["demo-shop"]
                with pytest.raises(ConsoleAuthError, match="PERMISSION_DENIED"):
                    await viewer.set_tenant_enabled("demo-shop", False)
                await viewer.close()
                assert await enabled()

                events = await cp.cp.audit_log(tenant="demo-shop", limit=50)
                assert [e.actor for e in events if e.action.startswith("tenant.")][-2:] == [
                    "admin",
                    "admin",
                ]
        # The control plane went away: the banner returns, the last data stays on screen.
        await until(lambda: "unreachable" in _banner(console), pilot)
        assert _cells(console, "nodes")[0][0] == "n1" and "showing data of" in _banner(console)


async def test_memory_double_unreachable_banner_and_toggle() -> None:
    client = MemoryClient(fail=ConsoleUnavailable("memory://demo: UNAVAILABLE: connection refused"))
    console = KefuConsole(client, refresh_s=0.2, clock=lambda: NOW)
    async with console.run_test(size=(160, 40)) as pilot:
        await until(lambda: bool(_banner(console)), pilot)
        assert "unreachable" in _banner(console) and "connection refused" in _banner(console)
        client.fail = None  # it comes back: the next tick clears the banner
        await until(lambda: console.generation > 0, pilot)
        assert _banner(console) == ""
        await pilot.press("2")
        await until(lambda: console.query_one("#tenants-table").has_focus, pilot)
        await pilot.press("e")
        await until(lambda: client.toggled == [("acme", True)], pilot)


def test_views_format_the_snapshot() -> None:
    import asyncio

    snap: Snapshot = asyncio.run(fetch_snapshot(MemoryClient(), now=NOW))
    nodes = {v.id: v for v in VIEWS}["nodes"]
    rows = dict(nodes.rows(snap, NOW))
    bj = rows["bj-1"]
    runs = bj[5]
    assert isinstance(runs, Text) and "REFUSED" in runs.plain and "bogus_field" in runs.plain
    assert any("red" in str(span.style) for span in runs.spans)
    assert bj[4] == "7m" and rows["sh-1"][4] == "3s"
    assert ago(0, NOW) == "-" and ago(NOW - 9000, NOW) == "2h"
    tel = dict({v.id: v for v in VIEWS}["telemetry"].rows(snap, NOW))
    (row,) = tel.values()
    assert [str(c) for c in row[3:7]] == ["1200", "2", "12", "31"]
    assert str(row[10]) == "40 (★4.2)" and str(row[11]) == "90.0%"
    alerts = {v.id: v for v in VIEWS}["alerts"].rows(snap, NOW)
    assert [key for key, _ in alerts] == ["health:cn-north:7", "rollback:ro-0a1b2c3d4e"]
    (critical,) = [cells for key, cells in alerts if key.startswith("rollback")]
    assert "CRITICAL" in str(critical[1]) and critical[6] == "-"
    regions = dict({v.id: v for v in VIEWS}["regions"].rows(snap, NOW))
    assert str(regions["cn-east"][1]) == "up / 正常" and regions["cn-east"][5] == "demo-shop"
    assert regions["cn-north"][3] == "40s" and regions["cn-north"][4] == "no / 否"
    assert str(regions["cn-east"][6]) == "—"  # no replication lag reported (yet)
    routes = dict(ROUTES.rows(snap, NOW))
    assert "unavailable" in str(routes["solo"][2]) and routes["solo"][0] == "solo"


def _wait_loaded(pilot: Any) -> Any:
    async def run(pilot: Any) -> None:
        await until(lambda: pilot.app.generation > 0, pilot)

    return run(pilot)


def test_snapshot_nodes(snap_compare: Any) -> None:
    console = KefuConsole(MemoryClient(), refresh_s=3600, clock=lambda: NOW)

    async def run_before(pilot: Any) -> None:
        await until(lambda: console.generation > 0, pilot)
        await pilot.press("1")
        await pilot.pause()

    assert snap_compare(console, terminal_size=(200, 30), run_before=run_before)


def test_snapshot_overview(snap_compare: Any) -> None:
    console = KefuConsole(MemoryClient(), refresh_s=3600, clock=lambda: NOW)
    assert snap_compare(console, terminal_size=(140, 24), run_before=_wait_loaded)


def test_cli_registers_the_tui_area() -> None:
    from kefu.cli import build_parser
    from kefu.tui.cli import cmd_tui

    args = build_parser().parse_args(
        ["tui", "--control-plane", "10.0.0.5:7500", "--token-file", "t"]
    )
    assert args.handler is cmd_tui and args.control_plane == "10.0.0.5:7500"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tui", "--token", "a", "--token-file", "t"])


async def test_rollouts_tab_commands_after_a_confirm_and_only_for_admins() -> None:
    client = MemoryClient()
    console = KefuConsole(client, refresh_s=0.2, clock=lambda: NOW)
    async with console.run_test(size=(200, 40)) as pilot:
        await until(lambda: console.generation > 0, pilot)
        (row,) = _cells(console, "rollouts")
        assert row[0] == "ro-0a1b2c3d4e" and row[2].startswith("running") and row[5] == "5%"
        assert row[6] == "1/1" and row[7] == "12/230"
        await pilot.press("6")
        assert console.query_one("#rollouts-table").has_focus
        await _answer(console, pilot, "b", "n")  # asked, declined: nothing sent
        await _answer(console, pilot, "p", "y")
        await until(lambda: client.commands == [("ro-0a1b2c3d4e", "pause")], pilot)
        await _answer(console, pilot, "b", "y")
        await until(lambda: client.commands[-1] == ("ro-0a1b2c3d4e", "rollback"), pilot)
        assert len(client.commands) == 2
    viewer = MemoryClient(role="viewer")
    console = KefuConsole(viewer, refresh_s=0.2, clock=lambda: NOW)
    async with console.run_test(size=(200, 40)) as pilot:
        await until(lambda: console.generation > 0, pilot)
        await pilot.press("6", "b")
        await pilot.press("y")
        await pilot.pause(0.3)
        assert viewer.commands == []


async def _answer(console: KefuConsole, pilot: Any, key: str, answer: str) -> None:
    """Press an action key, wait for its confirm dialog, answer it, wait for it to close."""
    from kefu.tui.widgets import Confirm

    await pilot.press(key)
    await until(lambda: isinstance(console.screen, Confirm), pilot)
    await pilot.press(answer)
    await until(lambda: not isinstance(console.screen, Confirm), pilot)
