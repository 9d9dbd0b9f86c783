"""Figures of a built ``kefu-node``: size, cold start to the first answered turn, RSS.

    python packaging/measure.py --binary dist/kefu-node [--runs 3]

Run by ``packaging/build.sh`` with the build venv's Python (it has grpcio through the node's
dependencies). Each run starts the binary on free ports with a temporary data directory,
times from ``exec`` to the first answered ``Converse`` turn, reads the RSS of the process tree
(a one-file build is a bootloader parent plus the Python child), sends SIGTERM and checks the
exit code. The first run starts on an empty data directory (the models are seeded into the
store and the demo key is generated); later runs restart on the same directory, which is what
a service restart does. Page cache is warm in both cases (we never drop caches on a shared
machine).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants, KiB."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def one_run(binary: Path, data: Path) -> dict[str, float]:
    import grpc

    from kefu.v1 import bearer_metadata
    from kefu.v1 import node_pb2 as pb
    from kefu.v1 import node_pb2_grpc as pbg

    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(binary), "run", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
         "--metrics-listen", ""],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "serving tenants" in line:
                break
        else:
            raise SystemExit(f"measure: {binary} exited with {proc.wait()} before serving")
        t_serving = time.perf_counter() - t0
        key = (data / "demo-shop.key").read_text().strip()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pbg.KefuNodeStub(channel)
            reply = stub.Converse(
                pb.ConverseRequest(text="我的订单什么时候到", channel=pb.CHANNEL_WEB),
                metadata=bearer_metadata(key),
                timeout=30,
            )
        t_turn = time.perf_counter() - t0
        if reply.intent != "delivery_tracking":
            raise SystemExit(f"measure: unexpected intent {reply.intent!r}")
        rss = rss_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    if rc != 0:
        raise SystemExit(f"measure: exit code {rc} after SIGTERM (expected 0)")
    return {"serving_s": t_serving, "turn_s": t_turn, "rss_mib": rss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", required=True, type=Path)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    binary = args.binary.resolve()
    size = binary.stat().st_size
    print(f"binary:        {binary} ({size / 2**20:.1f} MiB)")
    if (binary.parent / "_internal").is_dir():
        print(f"directory:     {binary.parent} ({tree_size(binary.parent) / 2**20:.1f} MiB)")
        for archive in sorted(binary.parents[2].glob("kefu-node-*.tar.gz")):
            print(f"archive:       {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
    with tempfile.TemporaryDirectory(prefix="kefu-measure-") as tmp:
        data = Path(tmp) / "data"
        runs = [one_run(binary, data) for _ in range(max(1, args.runs))]
    first, rest = runs[0], runs[1:] or runs
    median_turn = statistics.median(r["turn_s"] for r in rest)
    print(
        f"cold start, empty data dir:    serving {first['serving_s']:.2f} s, "
        f"first answered turn {first['turn_s']:.2f} s"
    )
    print(
        f"cold start, restart (median of {len(rest)}): serving "
        f"{statistics.median(r['serving_s'] for r in rest):.2f} s, first answered turn "
        f"{median_turn:.2f} s   [target ≤ {TARGET_S:g} s: "
        f"{'ok' if max(first['turn_s'], median_turn) <= TARGET_S else 'MISSED'}]"
    )
    print(
        f"RSS after the first turn:      {statistics.median(r['rss_mib'] for r in runs):.0f} MiB"
        " (process tree, default models)"
    )
    print(f"SIGTERM:                       exit 0 in all {len(runs)} runs")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
