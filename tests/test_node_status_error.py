"""Issue 10 C1: a node's reconcile error (why it cannot apply its desired state) is shown by
`kefu cp nodes` and the console's nodes view, not only in the node's log. Plus the pure
failed-authentication guard the control plane uses."""

from __future__ import annotations

import pytest
from rich.text import Text

from kefu.auth_guard import FailedAuthGuard
from kefu.control_plane.cli import _show_nodes
from kefu.tui.client import Snapshot
from kefu.tui.views import VIEWS
from kefu.v1 import control_plane_pb2 as pb

ERROR = 'get object kefu_bundles/x@2: permissions violation for publish to "$JS.API.STREAM.NAMES"'


def _node() -> pb.Node:
    return pb.Node(
        node_id="local-1",
        region="local",
        online=True,
        tenants=[pb.ObservedTenant(tenant="demo-shop", state="serving", config_version=1)],
        reconcile_error=ERROR,
        reconcile_error_at=1.0,
    )


def test_cp_nodes_shows_the_reconcile_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per row
    _show_nodes(pb.ListNodesReply(nodes=[_node()]))
    out = " ".join(capsys.readouterr().out.split())
    assert "RECONCILE FAILING" in out and "permissions violation" in out


def test_console_nodes_view_shows_the_reconcile_error() -> None:
    rows = dict({v.id: v for v in VIEWS}["nodes"].rows(Snapshot(nodes=[_node()]), 2.0))
    runs = rows["local-1"][5]
    assert isinstance(runs, Text) and "RECONCILE FAILING" in runs.plain
    assert "permissions violation" in runs.plain


def test_failed_auth_guard_memory_is_bounded_and_total_counts_forgotten_peers() -> None:
    g = FailedAuthGuard(max_peers=100)
    for i in range(1000):
        g.failed(f"ipv4:10.0.{i // 256}.{i % 256}")
    assert g.remembered() == 100 and g.total == 1000


def test_failed_auth_guard_report_summarises_once_per_interval() -> None:
    now = [0.0]
    g = FailedAuthGuard(log_every_s=10, clock=lambda: now[0])
    g.failed("ipv4:10.0.0.1")
    g.failed("ipv4:10.0.0.1")
    assert g.report("ipv4:10.0.0.1") == (
        "peer ipv4:10.0.0.1: 2 failures from it in the last 60 s, 2 refused since the last report"
    )
    g.failed("ipv4:10.0.0.1")
    assert g.report("ipv4:10.0.0.1") is None and g.unlogged == 1  # not due yet: kept
    now[0] = 10.0
    assert "1 refused since the last report" in (g.report("ipv4:10.0.0.1") or "")
