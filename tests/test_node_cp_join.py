"""``kefu-node run`` with a node.yaml ``control_plane:`` section, from source, against a real
nats-server and control plane: it converges on its assignment, serves turns, and on SIGTERM the
telemetry of those turns reaches the control plane (or, NATS down, is saved in the data dir and
sent after the restart), exit 0. Plus the section's validation (errors name file and line) and
the telemetry save/restore unit tests."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cp_support import (
    SecuredNats,
    control_plane,
    seed_demo,
    trust_on_node,
    trust_with,
)
from packaging_helpers import ROOT, free_port, start
from support.processes import stop_process

from kefu.config.node import load_node_config, parse_node_config
from kefu.errors import ConfigError
from kefu.keys import SigningKey
from kefu.natsbus import NatsBus, NatsOptions
from kefu.natsserver import NatsUser
from kefu.node.agent.telemetry import TelemetryRecorder, TurnSample, load_pending, save_pending
from kefu.node.main import main
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg
from kefu.wire import STREAM_TELEMETRY, TelemetryBatch, decode

PENDING = Path("agent") / "telemetry-pending.jsonl"


# --------------------------------------------------------------------------- helpers


def write_node_yaml(
    tmp: Path,
    url: str,
    *,
    extra: str = "",
    user: NatsUser | None = None,
    region: str = "r1",
    node_id: str = "n1",
    telemetry_s: float = 600,
) -> tuple[Path, int, Path]:
    """node.yaml + credentials file (the node's deployment user when given, else url only).
    The long default telemetry interval means only the shutdown flush delivers a run's
    telemetry."""
    etc = tmp / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    creds = user.to_credentials(url) if user else {"url": url}
    (etc / "nats.json").write_text(json.dumps(creds), encoding="utf-8")
    port = free_port()
    path = etc / "node.yaml"
    path.write_text(
        f"data_dir: ../data\nlisten: 127.0.0.1:{port}\nmetrics_listen: ''\n"
        "logging:\n  format: text\n"
        f"control_plane:\n  credentials: nats.json\n  region: {region}\n  node_id: {node_id}\n"
        f"  telemetry_interval_s: {telemetry_s}\n  heartbeat_s: 0.5\n  flush_timeout_s: 3\n"
        + extra,
        encoding="utf-8",
    )
    return path, port, tmp / "data"


def run_node(config: Path, *, region: str = "r1", node_id: str = "n1") -> subprocess.Popen[str]:
    """From source; ``KEFU_NODE_BINARY=dist/onedir/kefu-node/kefu-node`` runs a build instead."""
    binary = os.environ.get("KEFU_NODE_BINARY")
    cmd = [binary] if binary else [sys.executable, "-m", "kefu.node.main"]
    proc, out = start([*cmd, "run", "--config", str(config)], env={"PYTHONPATH": str(ROOT)})
    assert f"control plane: node {node_id} following region {region}" in out
    return proc


def converse_when_assigned(port: int, key: str, texts: list[str]) -> list[pb.ConverseReply]:
    """Retry the first turn until the node has converged (the tenant comes from the control
    plane after start), then send the others."""
    md = bearer_metadata(key)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pbg.KefuNodeStub(ch)
        deadline = time.monotonic() + 60
        while True:
            try:
                first = stub.Converse(
                    pb.ConverseRequest(channel=pb.CHANNEL_WEB, text=texts[0]),
                    metadata=md,
                    timeout=10,
                )
                break
            except grpc.RpcError as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"node never served the tenant: {exc}") from exc
                time.sleep(0.2)
        replies = [first]
        for text in texts[1:]:
            replies.append(
                stub.Converse(
                    pb.ConverseRequest(channel=pb.CHANNEL_WEB, text=text), metadata=md, timeout=10
                )
            )
    return replies


async def telemetry_turns(url: str, want: int, user: NatsUser | None = None) -> int:
    """demo-shop turns in the telemetry stream (waits a little for ``want``)."""
    creds = {"user": user.user, "password": user.password} if user else {}
    reader = await NatsBus.connect(NatsOptions(servers=[url], **creds))
    try:
        turns = 0
        for _ in range(50):
            msgs = await reader.stream_read(STREAM_TELEMETRY)
            batches = [decode(TelemetryBatch, m.data) for m in msgs]
            turns = sum(a.turns for b in batches for a in b.aggregates if a.tenant == "demo-shop")
            if turns >= want:
                break
            await asyncio.sleep(0.2)
        return turns
    finally:
        await reader.close()


TEXTS = ["我的订单什么时候到", "refund please", "发票怎么开", "hello"]


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
async def test_kefu_node_joins_serves_and_flushes_telemetry_on_sigterm(
    tmp_path: Path, secured_nats: SecuredNats, ops_key: SigningKey
) -> None:
    # The deployment's NATS users: the node has only its least-privilege permissions.
    nats, cp_user = secured_nats, secured_nats.cp
    async with control_plane(nats.url, trust_with(ops_key), user=cp_user) as stack:
        key = await seed_demo(stack.cp)
        config, port, data = write_node_yaml(tmp_path, nats.url, user=nats.nodes["n1"])
        trust_on_node(data, ops_key)
        proc = run_node(config)
        try:
            replies = await asyncio.to_thread(converse_when_assigned, port, key, TEXTS)
            assert replies[0].intent == "delivery_tracking" and replies[1].language == "en"
            state = ""
            for _ in range(100):  # the status is written just after the tenant is swapped in
                nodes = {n.node_id: n for n in await stack.cp.list_nodes()}
                tenant = nodes["n1"].tenants.get("demo-shop") if "n1" in nodes else None
                if tenant is not None and (state := tenant.state) == "serving":
                    break
                await asyncio.sleep(0.1)
            assert state == "serving"
        finally:
            code, err = await asyncio.to_thread(stop_process, proc)
        assert code == 0, err
        assert "1 batch(es) sent, 0 saved" in err and "Traceback" not in err
        assert await telemetry_turns(nats.url, len(TEXTS), cp_user) == len(TEXTS)
        assert not (data / PENDING).exists()


@pytest.mark.slow
async def test_nats_down_at_sigterm_saves_telemetry_sent_after_restart(
    tmp_path: Path, secured_nats: SecuredNats, ops_key: SigningKey
) -> None:
    nats_server, cp_user = secured_nats.server, secured_nats.cp
    async with control_plane(nats_server.url, trust_with(ops_key), user=cp_user) as stack:
        key = await seed_demo(stack.cp)
        await stack.reconciler.run_once()
    config, port, data = write_node_yaml(tmp_path, nats_server.url, user=secured_nats.nodes["n1"])
    trust_on_node(data, ops_key)
    proc = run_node(config)
    try:
        await asyncio.to_thread(converse_when_assigned, port, key, TEXTS[:1])
        nats_server.kill()
        await asyncio.to_thread(converse_when_assigned, port, key, TEXTS)
    finally:
        code, err = await asyncio.to_thread(stop_process, proc)
    assert code == 0, err
    assert "0 batch(es) sent, 1 saved for after the restart, 0 dropped" in err
    saved, bad = load_pending(data / PENDING)
    assert bad == 0 and sum(a.turns for b in saved for a in b.aggregates) == 5

    nats_server.start()
    proc = run_node(config)  # serves its last-known-good, sends the saved batch first
    try:
        assert await telemetry_turns(nats_server.url, 5, cp_user) == 5
    finally:
        code, err = await asyncio.to_thread(stop_process, proc)
    assert code == 0, err
    assert not (data / PENDING).exists()


# --------------------------------------------------------------------------- config


def test_control_plane_section_parses_and_resolves_credentials(tmp_path: Path) -> None:
    config, _, _ = write_node_yaml(tmp_path, "nats://127.0.0.1:4222")
    resolved = load_node_config(config)
    cp = resolved.config.control_plane
    assert cp is not None and cp.region == "r1" and cp.node_id == "n1"
    assert resolved.credentials_file == config.parent / "nats.json"
    # With a control plane and no tenants listed, the node starts with none (no demo tenant).
    from kefu.node.bootstrap import node_options

    opts = node_options(resolved)
    assert opts.tenant_configs == [] and opts.require_tenants is False
    assert load_node_config(tmp_path / "etc" / "node.yaml").config.workers == 1


@pytest.mark.parametrize(
    ("section", "line", "field", "words"),
    [
        ("control_plane:\n  url: http://x:4222\n", 2, "control_plane.url", "not a NATS URL"),
        ("control_plane:\n  url: nats://x:4222\n  region: EU 1\n", 3,
         "control_plane.region", "region"),
        ("control_plane:\n  credentials: missing.json\n", 2,
         "control_plane.credentials", "no such file"),
        ("control_plane:\n  region: r1\n", 1, "control_plane", "needs url"),
        ("workers: 2\ncontrol_plane:\n  url: nats://x:4222\n", 1, "workers", "not supported yet"),
        ("control_plane:\n  url: nats://x:4222\n  telemetry_interval_s: 0\n", 3,
         "control_plane.telemetry_interval_s", "greater than 0"),
        ("control_plane:\n  url: nats://x:4222\n  regoin: r1\n", 3, "control_plane.regoin", ""),
    ],
)  # fmt: skip
def test_control_plane_errors_name_file_line_and_field(
    tmp_path: Path, section: str, line: int, field: str, words: str
) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(section, encoding="utf-8")
    with pytest.raises(ConfigError) as ei:
        load_node_config(path)
    text = str(ei.value)
    assert f"{path}:{line}: field '{field}'" in text, text
    assert words in text


def test_check_config_reports_the_section_and_unusable_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _, _ = write_node_yaml(tmp_path, "nats://127.0.0.1:4222")
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "control_plane   region r1, node n1" in out
    assert f"{config.parent / 'nats.json'}: readable" in out

    creds = config.parent / "nats.json"
    creds.write_text("{not json", encoding="utf-8")
    assert main(["check-config", str(config)]) == 78
    err = capsys.readouterr().err
    assert f"{config}:7: field 'control_plane.credentials'" in err and "not JSON" in err
    if os.geteuid() != 0:  # root reads any file
        creds.write_text(json.dumps({"url": "nats://127.0.0.1:4222"}), encoding="utf-8")
        creds.chmod(0)
        assert main(["check-config", str(config)]) == 78
        assert "not readable by this user" in capsys.readouterr().err


def test_default_node_yaml_documents_the_section_and_stays_valid() -> None:
    from kefu.config.node import DEFAULT_NODE_YAML

    assert "#control_plane:" in DEFAULT_NODE_YAML and "credentials:" in DEFAULT_NODE_YAML
    assert parse_node_config(DEFAULT_NODE_YAML).config.control_plane is None
    head, _, block = DEFAULT_NODE_YAML.partition("#control_plane:")
    block = block.replace("\n#  ", "\n  ").replace("credentials: nats.json", "node_id: x", 1)
    enabled = head + "control_plane:" + block.replace("node_id: node-1", "", 1)
    cp = parse_node_config(enabled).config.control_plane
    assert cp is not None and cp.url == "tls://cp.example:4222" and cp.region == "local"


# --------------------------------------------------------------------------- telemetry units


def recorder(n: int, *, max_buffered: int = 360, started_at: float = 1.0) -> TelemetryRecorder:
    rec = TelemetryRecorder(
        node_id="n1", region="r1", max_buffered=max_buffered, started_at=started_at
    )
    for i in range(n):
        rec.record_turn(
            TurnSample(tenant="t", scenario="s", model_version="m@1", latency_ms=float(i))
        )
        rec.close_window(now=100.0 + i)
    return rec


def test_pending_telemetry_round_trips_and_is_removed_when_empty(tmp_path: Path) -> None:
    path = tmp_path / "agent" / "pending.jsonl"
    rec = recorder(3)
    save_pending(path, rec.pending())
    batches, bad = load_pending(path)
    assert bad == 0 and [b.seq for b in batches] == [1, 2, 3]
    assert batches == rec.pending()
    save_pending(path, [])
    assert not path.exists() and load_pending(path) == ([], 0)


def test_torn_line_costs_only_that_batch(tmp_path: Path) -> None:
    path = tmp_path / "pending.jsonl"
    save_pending(path, recorder(2).pending())
    path.write_bytes(path.read_bytes() + b'{"node_id": "n1", "seq"')
    batches, bad = load_pending(path)
    assert len(batches) == 2 and bad == 1


def test_restored_batches_go_first_and_the_bound_drops_the_oldest() -> None:
    earlier = recorder(3, started_at=1.0).pending()
    rec = recorder(2, max_buffered=4, started_at=2.0)
    assert rec.restore(earlier) == 1
    assert rec.dropped == 1
    assert [(b.started_at, b.seq) for b in rec.pending()] == [
        (1.0, 2),
        (1.0, 3),
        (2.0, 1),
        (2.0, 2),
    ]
