"""Issue 10 C1: a node's reconcile error (why it cannot apply its desired state) is shown by
`kefu cp nodes` and the console's nodes view, not only in the node's log. Plus the pure
failed-authentication guard the control plane uses."""

from __future__ import annotations

import pytest
from rich.text import Text

from kefu.auth_guard import FailedAuthGuard, peer_host
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


def test_failed_auth_guard_counts_delays_and_rate_limits_warnings() -> None:
    now = [0.0]
    g = FailedAuthGuard(
        free_failures=3, base_delay_s=0.1, max_delay_s=1.0, warn_interval_s=10, clock=lambda: now[0]
    )
    delays = [g.record_failure("10.0.0.1", "acme") for _ in range(8)]
    assert delays[:3] == [0.0, 0.0, 0.0] and delays[3:] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert g.should_warn("10.0.0.1") == 8  # the first warning sums what came before
    g.record_failure("10.0.0.1")
    assert g.should_warn("10.0.0.1") == 0  # rate-limited
    now[0] = 11.0
    assert g.should_warn("10.0.0.1") == 1
    assert g.counts() == {"10.0.0.1": 9} and g.total == 9
    g.record_success("10.0.0.1")
    assert g.record_failure("10.0.0.1") == 0.0  # a success resets the streak, not the count
    assert g.counts()["10.0.0.1"] == 10
    assert g.record_failure("10.0.0.2") == 0.0  # other peers are not slowed down


def test_failed_auth_guard_memory_is_bounded() -> None:
    g = FailedAuthGuard(max_peers=100)
    for i in range(1000):
        g.record_failure(f"10.0.{i // 256}.{i % 256}")
    assert len(g.counts()) == 100 and g.total == 1000


def test_peer_host_drops_the_port() -> None:
    assert peer_host("ipv4:127.0.0.1:51234") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:51234") == "::1"
    assert peer_host("unix:/tmp/s") == "unix:/tmp/s" and peer_host("") == "unknown"
