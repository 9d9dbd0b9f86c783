"""The node under test of :mod:`node_bench`: ``kefu node run`` in its own process on free
ports, with a copy of the demo tenant config whose rate limits do not cap the measurement;
its CPU time (workers included) and its Prometheus counters before and after a phase.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from node_bench_load import CHANNEL

__all__ = ["GENEROUS", "NodeProcess", "bench_config", "free_port", "server_delta"]

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "node" / "tenants" / "demo-shop.yaml"
GENEROUS = {"rate_per_second": 1_000_000, "burst": 1_000_000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_config(tmp: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the demo tenant config with generous rate limits; returns it and the stock
    limits."""
    data = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    stock = data["rate_limits"]
    data["rate_limits"] = {
        "tenant": dict(GENEROUS),
        "channels": {ch: dict(GENEROUS) for ch in CHANNEL},
    }
    path = tmp / "demo-shop-bench.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path, stock


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def process_tree_cpu(root: int) -> float:
    """User + system CPU seconds of ``root`` and its direct children (all threads)."""
    total, pids = 0.0, {root}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
    for pid, fields in stats.items():  # direct children are enough: workers do not fork
        if int(fields[1]) == root:
            pids.add(pid)
    for pid in pids:
        if pid in stats:
            total += int(stats[pid][11]) + int(stats[pid][12])
    return total / os.sysconf("SC_CLK_TCK")


class OrderCenterProcess:
    """``kefu demo order-center`` on a free port: the system the demo tenant's flows call."""

    def __init__(self, tmp: Path, data_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out_path = tmp / "order-center.out"
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        cmd = [sys.executable, "-m", "kefu.cli", "demo", "order-center"]
        cmd += ["--listen", f"127.0.0.1:{self.port}", "--data-dir", str(data_dir)]
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out_path.read_text(encoding="utf-8", errors="replace")
            if self.proc.poll() is not None:
                raise RuntimeError(f"order center exited with {self.proc.returncode}:\n{text}")
            if "order center listening" in text:
                return
            time.sleep(0.1)
        raise RuntimeError(f"order center not listening after {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        return process_tree_cpu(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)


class NodeProcess:
    """``kefu node run`` in a child process; stdout/stderr go to files in ``tmp``."""

    def __init__(
        self,
        tmp: Path,
        config: Path,
        *,
        workers: int = 1,
        node_args: Sequence[str] = (),
        order_center_url: str | None = None,
    ):
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = tmp / "node.log"
        self.out_path = tmp / "node.out"
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        if order_center_url:
            env["KEFU_ORDER_CENTER_URL"] = order_center_url  # the demo flows' plugins call it
        cmd = [sys.executable, "-m", "kefu.cli", "node", "run", "--log-format", "text"]
        cmd += ["--data-dir", str(self.data_dir), "--config", str(config)]
        cmd += ["--listen", f"127.0.0.1:{self.port}"]
        cmd += ["--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        cmd += ["--workers", str(workers), *node_args]
        self.command = " ".join(cmd)
        with open(self.out_path, "wb") as out, open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=tmp)

    def wait_ready(self, timeout: float = 120.0) -> str:
        """Blocks until the node prints its serving line; returns the demo API key."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log_tail()}")
            if "kefu node serving" in self.out_path.read_text(encoding="utf-8", errors="replace"):
                return (self.data_dir / "demo-shop.key").read_text(encoding="utf-8").strip()
            time.sleep(0.1)
        raise RuntimeError(f"node not serving after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU of the node: its process and its worker processes (all threads)."""
        return process_tree_cpu(self.proc.pid)

    def scrape(self) -> dict[str, float]:
        """Sums of the node's Prometheus samples by name (labels folded)."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode("utf-8")
        except OSError:
            return {}
        sums: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if "le" in s.labels:
                    continue
                sums[s.name] = sums.get(s.name, 0.0) + float(s.value)
        return sums

    def stop(self) -> None:
        stop_process(self.proc)


def server_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    hits, misses = d("kefu_model_cache_hits_total"), d("kefu_model_cache_misses_total")
    batches, texts = d("kefu_model_batches_total"), d("kefu_model_texts_total")
    count = d("kefu_turn_latency_seconds_count")
    return {
        "cache_hit_share": round(hits / (hits + misses), 3) if hits + misses else 0.0,
        "mean_batch": round(texts / batches, 2) if batches else 0.0,
        "admission_shed": d("kefu_admission_shed_total"),
        "mean_turn_ms": round(d("kefu_turn_latency_seconds_sum") / count * 1000, 2)
        if count
        else 0.0,
    }
