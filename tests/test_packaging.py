"""The shipped ``kefu-node`` build, smoke-tested as an operator would use it.

The module fixture runs ``packaging/build.sh --no-measure`` (a no-op when the build is up to
date: scripts/test.sh has built it just before pytest) and unpacks the shipped archive into a
temporary directory, so what is tested is the archive itself, not the build tree. Set
``KEFU_NODE_ARCHIVE`` to test a given archive instead of building.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from packaging_helpers import ROOT, metric_value, metrics_text, node_yaml, start
from support.processes import stop_process

from kefu.v1 import SERVICE_NAME, bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg
from kefu.wire import BUCKET_NODES, NodeStatus, decode

pytestmark = pytest.mark.slow


def is_cjk(c: str) -> bool:
    return "\u4e00" <= c <= "\u9fff"


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("KEFU_NODE_ARCHIVE")
    if given:
        archive = Path(given)
    else:
        build = subprocess.run(
            [str(ROOT / "packaging" / "build.sh"), "--no-measure"],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert build.returncode == 0, build.stdout + build.stderr
        archives = sorted((ROOT / "dist").glob("kefu-node-*-linux-*.tar.gz"))
        assert len(archives) == 1, archives
        archive = archives[0]
    dest = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    exe = dest / "kefu-node" / "kefu-node"
    assert os.access(exe, os.X_OK)
    return exe


def test_version_and_check_config(binary: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [str(binary), "version", "--json"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["frozen"] is True
    assert info["build_date"] and len(info["commit"].removesuffix("-dirty")) == 40
    assert "CPUExecutionProvider" in info["execution_providers"]

    bad = tmp_path / "node.yaml"
    bad.write_text("listen: 127.0.0.1:7400\nlimits:\n  max_in_flight: many\n", encoding="utf-8")
    res = subprocess.run(
        [str(binary), "check-config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 78
    assert f"{bad}:3: field 'limits.max_in_flight'" in res.stderr
    assert "Traceback" not in res.stderr


def test_serves_zh_and_en_then_stops_cleanly_on_sigterm(binary: Path, tmp_path: Path) -> None:
    config, port, metrics_port = node_yaml(tmp_path)
    proc, out = start([str(binary), "run", "--config", str(config)])
    data = tmp_path / "data"
    try:
        assert "serving tenants [demo-shop]" in out
        key = (data / "demo-shop.key").read_text().strip()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stub = pbg.KefuNodeStub(channel)
            zh = stub.Converse(
                pb.ConverseRequest(text="我的订单什么时候到", channel=pb.CHANNEL_WEB),
                metadata=bearer_metadata(key),
                timeout=30,
            )
            assert (zh.language, zh.intent, zh.scenario) == ("zh", "delivery_tracking", "logistics")
            assert zh.session_id and any(is_cjk(c) for c in zh.text)  # answered in Chinese
            en = stub.Converse(
                pb.ConverseRequest(text="I want to return my shoes", channel=pb.CHANNEL_APP),
                metadata=bearer_metadata(key),
                timeout=30,
            )
            assert (en.language, en.intent) == ("en", "return_refund")
            assert en.text and not any(is_cjk(c) for c in en.text)  # answered in English
            with pytest.raises(grpc.RpcError) as denied:
                stub.Converse(
                    pb.ConverseRequest(text="hi", channel=pb.CHANNEL_WEB),
                    metadata=bearer_metadata("kefu_wrong"),
                    timeout=30,
                )
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        chat = subprocess.run(
            [str(binary), "chat", "--target", f"127.0.0.1:{port}", "--key-file",
             str(data / "demo-shop.key"), "-d", "--text", "我想退款"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert chat.returncode == 0, chat.stderr
        assert "intent=return_refund" in chat.stdout
        text = metrics_text(metrics_port)
        turns = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("kefu_turns_total{") and 'tenant="demo-shop"' in line
        )
        assert turns == 3
        assert metric_value(text, "kefu_admission_in_flight") == 0
        # The access gateway from the same binary, in front of this node.
        gw, gw_out = start(
            [str(binary), "gateway", "--node", f"local-1=127.0.0.1:{port}", "--tenant",
             "demo-shop", "--key-file", str(data / "demo-shop.key"), "--listen", "127.0.0.1:0"],
            until="kefu gateway on",
        )  # fmt: skip
        try:
            url = gw_out.split("kefu gateway on ", 1)[1].split()[0]
            with urllib.request.urlopen(f"{url}/demo", timeout=10) as page:
                assert b"kefu-widget.js" in page.read()
            req = urllib.request.Request(
                f"{url}/v1/chat/demo-shop/messages",
                data=json.dumps({"text": "how do i get a VAT invoice?"}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=30) as answer:
                assert json.loads(answer.read())["intent"] == "invoice"
        finally:
            gw_rc, gw_err = stop_process(gw)
            assert gw_rc == 0, gw_err
    finally:
        rc, err = stop_process(proc)
    assert rc == 0, err
    assert "stopped cleanly" in err and "Traceback" not in err
    assert "我的订单什么时候到" not in err  # conversation text never reaches the log
    db_path = data / "tenants" / "demo-shop" / "sessions.db"
    assert not db_path.with_name("sessions.db-wal").exists() or (
        db_path.with_name("sessions.db-wal").stat().st_size == 0
    )  # closed: the WAL was checkpointed into the database
    db = sqlite3.connect(db_path)
    texts = [r[0] for r in db.execute("select text from turns order by session_id, seq")]
    db.close()
    # Encryption at rest is on by default in node.yaml: every turn is sealed, none in clear.
    assert all(t.startswith("enc1:") for t in texts)
    assert "我的订单".encode() not in db_path.read_bytes()
    assert len(texts) == 8  # customer + bot, four times (once through the gateway)


def test_install_into_a_temporary_root(binary: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    res = subprocess.run(
        [str(binary), "install", "--root", str(root)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "systemd is not running here" in res.stdout  # a directory tree is never "live"
    link = root / "usr/local/bin/kefu-node"
    target = Path(os.readlink(link))
    assert target.is_absolute() and str(target).startswith("/opt/kefu/kefu-node-0.")
    installed = root / str(target).lstrip("/")
    assert (installed.parent / "_internal").is_dir()
    version = subprocess.run(
        [str(installed), "version", "--json"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and json.loads(version.stdout)["frozen"] is True
    config = root / "etc/kefu/node.yaml"
    assert (config.stat().st_mode & 0o777) == 0o640
    check = subprocess.run(
        [str(installed), "check-config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr
    unit = (root / "etc/systemd/system/kefu-node.service").read_text()
    expected = (
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/kefu",
        "PrivateTmp=yes",
        "User=kefu",
        "ExecStart=/usr/local/bin/kefu-node run --config /etc/kefu/node.yaml",
    )
    for line in expected:
        assert line in unit.splitlines()
    if os.geteuid() == 0:
        passwd = (root / "etc/passwd").read_text()
        assert passwd.startswith("kefu:") and "/usr/sbin/nologin" in passwd
        uid = int(passwd.split(":")[2])
        assert (root / "var/lib/kefu").stat().st_uid == uid
        assert config.stat().st_uid == 0 and config.stat().st_gid != 0
    res = subprocess.run(
        [str(installed), "uninstall", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert not link.is_symlink() and not (root / "opt/kefu").exists()
    assert config.exists() and (root / "var/lib/kefu").is_dir()  # data and config are kept


def test_worker_processes_of_the_binary_share_the_port(binary: Path, tmp_path: Path) -> None:
    config, port, metrics_port = node_yaml(tmp_path)
    config.write_text(config.read_text(encoding="utf-8") + "workers: 2\n", encoding="utf-8")
    proc, out = start([str(binary), "run", "--config", str(config)])
    data = tmp_path / "data"
    try:
        assert "with 2 worker processes" in out
        key = (data / "demo-shop.key").read_text().strip()
        for text in ["我的订单什么时候到", "I want to return my shoes"] * 4:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # spread connections
                reply = pbg.KefuNodeStub(channel).Converse(
                    pb.ConverseRequest(channel=pb.CHANNEL_WEB, text=text),
                    metadata=bearer_metadata(key),
                    timeout=30,
                )
                assert reply.intent in ("delivery_tracking", "return_refund")
        assert 'worker="' in metrics_text(metrics_port)
    finally:
        rc, err = stop_process(proc)
    assert rc == 0 and "Traceback" not in err, err
    db = sqlite3.connect(data / "tenants" / "demo-shop" / "sessions.db")
    assert db.execute("select count(*) from turns").fetchone()[0] == 16
    db.close()


async def _layout(url: str) -> None:
    from kefu.control_plane.service import ensure_layout
    from kefu.natsbus import NatsBus, NatsOptions

    bus = await NatsBus.connect(NatsOptions(servers=[url]))
    try:
        await ensure_layout(bus)
    finally:
        await bus.close()


async def _node_status(url: str, node_id: str) -> NodeStatus:
    """The status document the node's agent writes (waits for the first heartbeat)."""
    from kefu.natsbus import NatsBus, NatsOptions

    bus = await NatsBus.connect(NatsOptions(servers=[url]))
    try:
        for _ in range(300):
            entry = await bus.kv_get(BUCKET_NODES, node_id)
            if entry is not None:
                return decode(NodeStatus, entry.value)
            await asyncio.sleep(0.1)
        raise AssertionError(f"node {node_id} never reported its status")
    finally:
        await bus.close()


def test_the_binary_joins_a_control_plane_over_nats(binary: Path, tmp_path: Path) -> None:
    """nats-py is in the build: the node connects, reports its status (JetStream KV), and
    stops cleanly on SIGTERM."""
    from kefu.natsserver import NatsServer

    config, _, _ = node_yaml(tmp_path)
    (config.parent / "nats.json").write_text("{}", encoding="utf-8")
    with NatsServer(tmp_path / "nats") as srv:
        asyncio.run(_layout(srv.url))
        config.write_text(
            config.read_text(encoding="utf-8")
            + f"control_plane:\n  url: {srv.url}\n  credentials: nats.json\n"
            "  region: r1\n  node_id: n1\n  heartbeat_s: 0.2\n",
            encoding="utf-8",
        )
        proc, out = start([str(binary), "run", "--config", str(config)])
        try:
            assert "control plane: node n1 following region r1" in out
            assert "serving tenants []" in out  # no demo tenant: they come from the CP
            status = asyncio.run(_node_status(srv.url, "n1"))
            assert status.region == "r1" and "CPUExecutionProvider" in status.providers
        finally:
            rc, err = stop_process(proc)
    assert rc == 0, err
    assert "telemetry: 0 batch(es) sent, 0 saved" in err and "Traceback" not in err
