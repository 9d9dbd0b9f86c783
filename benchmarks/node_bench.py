"""Node load benchmark: turns/s, latency percentiles and load shedding of a real node.

    python benchmarks/node_bench.py [--duration S] [--sessions N] [--json]

What one run does, all measured in this run on this machine:

1. Starts ``kefu node run`` as a separate process (its own event loop and GIL) on a free port,
   with a fresh data directory and a copy of the demo tenant config whose rate limits are
   raised so they do not cap the measurement (the stock limits are printed).
2. Drives it over gRPC (``grpc.aio``) with customer sessions that play multi-turn scripts in
   Chinese and English (delivery tracking, returns, invoices, payment failures, complaints,
   product questions, ...). A session keeps its ``session_id`` across its turns.
   (a) closed loop: ``--sessions`` sessions, each sending its next turn as soon as the last is
       answered → the maximum rate;
   (b) open loop, Poisson arrivals at 70 % of that rate → latency under normal load;
   (c) open loop at 2× that rate → latency of admitted turns, the share shed (UNAVAILABLE /
       RESOURCE_EXHAUSTED) and how fast a shed turn fails.
3. Stops the node and classifies the same texts directly with the two shipped bundles (intent +
   sentiment per turn, one intra-op thread, batch 1 and batch 32) → the raw inference limit.

Latencies are client-side (send → reply, including gRPC and the client's own event loop);
server-side latency (``ConverseReply.server_latency_us``) is shown beside them. CPU use of the
node process and of this (client) process is reported per phase: with 2 cores they compete.

The load generator is in ``node_bench_load.py``, the node process in ``node_bench_process.py``;
this file runs the phases and reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from node_bench_load import SCRIPTS, Load, LoadGenerator, corpus
from node_bench_process import (
    GENEROUS,
    NodeProcess,
    OrderCenterProcess,
    bench_config,
    server_delta,
)

from kefu.keys import TrustStore
from kefu.models.runtime import RuntimeOptions, clean_text, load_model
from kefu.models.store import shipped_dir

__all__ = ["SCRIPTS", "LoadGenerator", "NodeProcess", "PhaseResult", "main", "raw_inference"]

# Targets from the issue. "Shed quickly" has no number there; we take a shed turn's p50 ≤ 10 ms
# (an order of magnitude under the 200 ms admitted p99).
TARGET_MAX_RATE = 1_000.0
TARGET_P99_70_MS = 50.0
TARGET_P99_2X_MS = 200.0
TARGET_SHED_P50_MS = 10.0


# ---------------------------------------------------------------------------------- results


def pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


@dataclass(kw_only=True)
class PhaseResult:
    name: str
    duration_s: float
    offered_per_s: float | None
    ok_per_s: float
    requests: int
    ok: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    server_p50_ms: float | None
    server_p99_ms: float | None
    errors: dict[str, int]
    shed_share: float
    shed_p50_ms: float | None
    shed_p99_ms: float | None
    node_cpu_pct: float
    client_cpu_pct: float
    client_lag_max_ms: float = 0.0
    client_skipped: int = 0
    server: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(
        cls, name: str, load: Load, *, node_cpu: float, client_cpu: float, server: dict[str, float]
    ) -> PhaseResult:
        rec, shed = load.rec, load.rec.shed_ms
        return cls(
            name=name,
            duration_s=round(load.window_s, 2),
            offered_per_s=_r(load.offered_per_s, 1),
            ok_per_s=round(len(rec.ok_ms) / load.window_s, 1),
            requests=rec.total,
            ok=len(rec.ok_ms),
            p50_ms=_r(pct(rec.ok_ms, 50)),
            p95_ms=_r(pct(rec.ok_ms, 95)),
            p99_ms=_r(pct(rec.ok_ms, 99)),
            server_p50_ms=_r(pct(rec.server_ms, 50)),
            server_p99_ms=_r(pct(rec.server_ms, 99)),
            errors={k: len(v) for k, v in sorted(rec.errors_ms.items())},
            shed_share=round(len(shed) / rec.total, 4) if rec.total else 0.0,
            shed_p50_ms=_r(pct(shed, 50)),
            shed_p99_ms=_r(pct(shed, 99)),
            node_cpu_pct=round(node_cpu, 1),
            client_cpu_pct=round(client_cpu, 1),
            client_lag_max_ms=round(load.lag_ms, 1),
            client_skipped=load.skipped,
            server=server,
        )


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


async def run_phase(name: str, node: NodeProcess, phase: Awaitable[Load]) -> PhaseResult:
    before = await asyncio.to_thread(node.scrape)
    cpu0, cl0, t0 = node.cpu_seconds(), time.process_time(), time.perf_counter()
    load = await phase
    elapsed = time.perf_counter() - t0
    return PhaseResult.build(
        name,
        load,
        node_cpu=(node.cpu_seconds() - cpu0) / elapsed * 100,
        client_cpu=(time.process_time() - cl0) / elapsed * 100,
        server=server_delta(before, await asyncio.to_thread(node.scrape)),
    )


# ---------------------------------------------------------------------------------- raw


def raw_inference(texts: list[str], seconds: float) -> dict[str, float]:
    """Turns/s of intent + sentiment classification in this process, one intra-op thread."""
    root = shipped_dir()
    trust = TrustStore.from_paths([root])
    opts = RuntimeOptions(providers=("cpu",), intra_op_threads=1)
    intent = load_model(root / "demo-shop-intent", trust=trust, options=opts)
    sentiment = load_model(root / "sentiment", trust=trust, options=opts)
    # The node feeds models its normalised text (clean, lower-cased, whitespace folded).
    norm = [" ".join(clean_text(t).lower().split()) for t in texts]
    out: dict[str, float] = {}
    for batch in (1, 32):
        chunks = [norm[i : i + batch] for i in range(0, len(norm) - batch + 1, batch)]
        for c in chunks[:8]:  # warm-up
            intent.predict_proba(c)
            sentiment.predict_proba(c)
        done, i = 0, 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            c = chunks[i % len(chunks)]
            intent.predict_proba(c)
            sentiment.predict_proba(c)
            done += len(c)
            i += 1
        out[f"batch{batch}_turns_per_s"] = round(done / (time.perf_counter() - t0), 1)
    return out


# ---------------------------------------------------------------------------------- report


def mark(ok: bool) -> str:
    return "ok  " if ok else "MISS"


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def targets(a: PhaseResult, b: PhaseResult, c: PhaseResult) -> list[dict[str, Any]]:
    def row(name: str, value: float | None, limit: float, higher: bool) -> dict[str, Any]:
        ok = value is not None and (value >= limit if higher else value <= limit)
        return {"target": name, "value": value, "limit": limit, "ok": ok}

    return [
        row("max throughput ≥ 1,000 turns/s", a.ok_per_s, TARGET_MAX_RATE, True),
        row("p99 ≤ 50 ms at 70 % of max", b.p99_ms, TARGET_P99_70_MS, False),
        row("admitted p99 ≤ 200 ms at 2× max", c.p99_ms, TARGET_P99_2X_MS, False),
        row("shed turns fail fast: p50 ≤ 10 ms at 2×", c.shed_p50_ms, TARGET_SHED_P50_MS, False),
    ]


def print_report(res: dict[str, Any]) -> None:
    env, phases, raw = res["environment"], res["phases"], res["raw"]
    stock = res["stock_rate_limits"]
    ch = ", ".join(f"{k} {v['rate_per_second']}/s" for k, v in stock.get("channels", {}).items())
    print("Kefu node load benchmark / 节点压测")
    print(
        f"  machine: {env['cpus']} CPU cores, Python {env['python']}, grpcio {env['grpcio']}; "
        f"node in its own process, client: {env['channels']} gRPC channels"
    )
    print(f"  node: {env['node_command']}")
    print(
        f"  demo order center (the flows' plugins call it) in its own process: "
        f"{env['order_center_cpu_s']} CPU-s over the whole run"
    )
    from kefu.node.serving.server import NodeOptions

    defaults = NodeOptions()
    print(
        f"  node admission (CLI defaults): max_in_flight {defaults.max_in_flight}, "
        f"queue {defaults.max_queue}, queue timeout {defaults.queue_timeout_s} s; "
        "SQLite synchronous=FULL in a fresh data dir"
    )
    cap = sum(v["rate_per_second"] for v in stock.get("channels", {}).values())
    tenant = stock["tenant"]
    print(
        f"  NOTE: the stock demo config rate-limits the tenant: {tenant['rate_per_second']}/s"
        f" (burst {tenant['burst']}), per channel {ch}, i.e. at most ~{cap} turns/s "
        "over the four channels. This run uses a copy with every limit raised to 1,000,000/s "
        "so they do not cap the measurement."
    )
    print(
        f"  load: {len(SCRIPTS)} scripts (zh + en, 3-4 turns, fresh order numbers per session); "
        f"open-loop think time {env['think_s']} s; deadline {env['timeout_s']} s"
    )
    print()
    head = (
        f"{'phase':<34}{'offered/s':>10}{'ok/s':>9}{'p50':>8}{'p95':>8}{'p99':>8}"
        f"{'srv p50':>9}{'srv p99':>9}{'node CPU':>10}{'client':>8}"
    )
    print(head)
    print("-" * len(head))
    for p in phases.values():
        print(
            f"{p['name']:<34}{fmt(p['offered_per_s']):>10}{fmt(p['ok_per_s']):>9}"
            f"{fmt(p['p50_ms']):>8}{fmt(p['p95_ms']):>8}{fmt(p['p99_ms']):>8}"
            f"{fmt(p['server_p50_ms']):>9}{fmt(p['server_p99_ms']):>9}"
            f"{fmt(p['node_cpu_pct'], '.0f') + '%':>10}{fmt(p['client_cpu_pct'], '.0f') + '%':>8}"
        )
    print("  (latencies in ms; p50/p95/p99 client-side of successful turns; srv = server-side)")
    print()
    for p in phases.values():
        errs = ", ".join(f"{k} {v}" for k, v in p["errors"].items()) or "none"
        s = p["server"]
        print(f"{p['name']}: {p['requests']} turns sent, errors: {errs}")
        print(
            f"    shed {p['shed_share'] * 100:.1f} % (shed p50 {fmt(p['shed_p50_ms'])} ms, "
            f"p99 {fmt(p['shed_p99_ms'])} ms); node: cache hits "
            f"{s.get('cache_hit_share', 0) * 100:.0f} %, mean batch {s.get('mean_batch', 0)}, "
            f"mean turn {s.get('mean_turn_ms', 0)} ms, "
            f"admission shed {s.get('admission_shed', 0):.0f}"
            + (
                f"; client schedule lag max {p['client_lag_max_ms']} ms"
                f", skipped {p['client_skipped']}"
                if p["offered_per_s"] is not None
                else ""
            )
        )
    print()
    print(
        "raw inference (this process, 1 intra-op thread, intent + sentiment per turn, "
        f"no cache): batch 1 {raw['batch1_turns_per_s']:.0f} turns/s, "
        f"batch 32 {raw['batch32_turns_per_s']:.0f} turns/s"
    )
    print(
        f"node ÷ raw: {res['node_over_raw_batch1']:.3f} of batch 1, "
        f"{res['node_over_raw_batch32']:.3f} of batch 32"
    )
    a, c = phases["a"], phases["c"]
    print(
        f"goodput at 2× offered load: {c['ok_per_s']:.0f} turns/s = "
        f"{c['ok_per_s'] / max(a['ok_per_s'], 1e-9) * 100:.0f} % of the closed-loop maximum"
    )
    print()
    print("targets / 目标")
    for t in res["targets"]:
        print(f"  {mark(t['ok'])} {t['target']:<44} measured {fmt(t['value'])}")


# ---------------------------------------------------------------------------------- main


async def drive(args: argparse.Namespace, node: NodeProcess, key: str) -> dict[str, PhaseResult]:
    gen = LoadGenerator(
        f"127.0.0.1:{node.port}", key, channels=args.channels, timeout=args.timeout, seed=args.seed
    )
    try:
        await gen.closed_loop(args.sessions, args.warmup)  # warm: connections, SQLite, caches
        n, d, think = args.sessions, args.duration, args.think
        a = await run_phase(f"(a) closed loop, {n} sessions", node, gen.closed_loop(n, d))
        top = max(a.ok_per_s, 1.0)
        b = await run_phase(
            f"(b) open loop 70 % ({0.7 * top:.0f}/s)",
            node,
            gen.open_loop(0.7 * top, d, think_s=think),
        )
        c = await run_phase(
            f"(c) open loop 2× ({2 * top:.0f}/s)", node, gen.open_loop(2 * top, d, think_s=think)
        )
    finally:
        await gen.close()
    return {"a": a, "b": b, "c": c}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    config, stock = bench_config(tmp)
    # The demo tenant's task flows call the order center (order lookups, tracking, ...): run
    # it too, or those turns would measure a failing plugin instead of the real path.
    order_center = OrderCenterProcess(tmp, tmp / "data")
    order_center.wait_ready()
    node = NodeProcess(
        tmp,
        config,
        workers=args.workers,
        node_args=args.node_arg,
        order_center_url=order_center.url,
    )
    try:
        print(f"starting node (logs: {node.log_path}) …", file=sys.stderr)
        key = node.wait_ready()
        print("node serving; running load phases …", file=sys.stderr)
        phases = asyncio.run(drive(args, node, key))
        order_center_cpu = order_center.cpu_seconds()
    finally:
        node.stop()
        order_center.stop()
    print("measuring raw inference …", file=sys.stderr)
    raw = raw_inference(corpus(200, args.seed), args.raw_seconds)
    a = phases["a"]
    return {
        "environment": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "channels": args.channels,
            "node_command": node.command,
            "order_center_cpu_s": round(order_center_cpu, 2),
            "think_s": args.think,
            "timeout_s": args.timeout,
        },
        "stock_rate_limits": stock,
        "bench_rate_limits": GENEROUS,
        "phases": {k: asdict(v) for k, v in phases.items()},
        "raw": raw,
        "node_over_raw_batch1": round(a.ok_per_s / raw["batch1_turns_per_s"], 4),
        "node_over_raw_batch32": round(a.ok_per_s / raw["batch32_turns_per_s"], 4),
        "targets": targets(a, phases["b"], phases["c"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per phase (15)")
    ap.add_argument("--sessions", type=int, default=64, help="closed-loop sessions (64)")
    ap.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds (3)")
    ap.add_argument("--channels", type=int, default=4, help="gRPC channels (4)")
    ap.add_argument("--think", type=float, default=1.0, help="open-loop think time, s (1.0)")
    ap.add_argument("--timeout", type=float, default=5.0, help="per-turn deadline, s (5)")
    ap.add_argument("--raw-seconds", type=float, default=3.0, help="per raw batch size (3)")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="node worker processes (1: on a 2-core box the client needs the other core)",
    )
    ap.add_argument(
        "--node-arg",
        action="append",
        default=[],
        help="extra `kefu node run` argument, e.g. --node-arg=--max-in-flight=8 (repeatable)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="kefu-node-bench-"))
    try:
        res = run(args, tmp)
    except RuntimeError as exc:
        print(f"node_bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(res, ensure_ascii=False, indent=2))
    else:
        print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
