"""``kefu node run --workers 2``: worker processes share the port on purpose, nobody else can;
metrics merge across workers; a killed worker is replaced; SIGTERM drains them all."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from packaging_helpers import start

from kefu.node.serving.server import PortInUse
from kefu.node.serving.workers import reserve_port
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg

KEFU = str(Path(sys.executable).parent / "kefu")


def test_reserve_port_refuses_a_port_in_use() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(PortInUse, match="another node"):
            reserve_port(f"127.0.0.1:{port}")
    assert reserve_port("127.0.0.1:0") > 0


def _start(data: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    return start(
        [KEFU, "node", "run", "--data-dir", str(data), "--listen", "127.0.0.1:0",
         "--metrics-listen", "127.0.0.1:0", *extra],
        until="metrics:",
    )  # fmt: skip


def _converse(port: int, key: str, texts: list[str], channels: int = 8) -> list[pb.ConverseReply]:
    replies = []
    for i, text in enumerate(texts):  # a channel per few turns: connections spread over workers
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pbg.KefuNodeStub(ch)
            replies.append(
                stub.Converse(
                    pb.ConverseRequest(text=text, channel=pb.CHANNEL_APP),
                    metadata=bearer_metadata(key),
                    timeout=30,
                )
            )
        if i >= channels * 4:
            break
    return replies


def _worker_pids(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[1]) == parent and b"spawn_main" in cmd:
                pids.append(int(entry.name))
    return sorted(pids)


@pytest.mark.slow
def test_two_workers_share_the_port_merge_metrics_and_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, out = _start(data, "--workers", "2")
    try:
        assert "with 2 worker processes" in out
        port = int(re.search(r"serving tenants \[demo-shop\] on [\d.]+:(\d+)", out)[1])  # type: ignore[index]
        metrics_port = int(re.search(r"127\.0\.0\.1:(\d+)/metrics", out)[1])  # type: ignore[index]
        key = (data / "demo-shop.key").read_text().strip()
        assert key in out  # generated and printed once, by the parent

        texts = ["我的订单什么时候到", "I want to return my shoes", "发票怎么开", "how do I pay"]
        replies = _converse(port, key, texts * 6)
        assert {r.intent for r in replies} >= {"delivery_tracking", "return_refund"}

        # Another node cannot join the port, even though the workers use SO_REUSEPORT.
        second = subprocess.run(
            [KEFU, "node", "run", "--data-dir", str(tmp_path / "other"), "--listen",
             f"127.0.0.1:{port}", "--metrics-listen", ""],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 69 and "cannot listen" in second.stderr
        assert "Traceback" not in second.stderr

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
            metrics = resp.read().decode()
        served: dict[str, float] = {}
        for worker, value in re.findall(
            r'kefu_turns_total\{[^}]*worker="(\d)"[^}]*\} (\S+)', metrics
        ):
            served[worker] = served.get(worker, 0.0) + float(value)
        # Both workers answer (8 connections), and the merged counts add up.
        assert set(served) == {"0", "1"} and sum(served.values()) == len(replies)

        workers = _worker_pids(proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = _worker_pids(proc.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the killed worker was not replaced")
        # Whatever worker the kernel picks, turns keep being answered.
        time.sleep(3)  # the replacement loads its models before it listens
        assert len(_converse(port, key, texts * 3)) == len(texts * 3)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 0
    assert _worker_pids(proc.pid) == []
    db = sqlite3.connect(data / "tenants" / "demo-shop" / "sessions.db")
    count = db.execute("select count(*) from turns where role = 'customer'").fetchone()[0]
    assert count == len(replies) + len(texts * 3)


@pytest.mark.slow
def test_node_run_reads_a_node_yaml_and_flags_win(tmp_path: Path) -> None:
    node_yaml = tmp_path / "node.yaml"
    node_yaml.write_text(
        "data_dir: data\nlisten: 127.0.0.1:1\nmetrics_listen: ''\nworkers: 2\n"
        "limits:\n  max_in_flight: 4\n",
        encoding="utf-8",
    )
    proc, out = start([KEFU, "node", "run", "--config", str(node_yaml), "--listen", "127.0.0.1:0"])
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    assert "with 2 worker processes" in out, out  # workers from the node.yaml
    assert "127.0.0.1:1 " not in out  # --listen won over the file
    assert (tmp_path / "data" / "demo-shop.key").is_file()  # data_dir relative to the file
    assert rc == 0
