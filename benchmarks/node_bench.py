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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

from kefu.keys import TrustStore
from kefu.models.runtime import RuntimeOptions, clean_text, load_model
from kefu.models.store import shipped_dir
from kefu.v1 import RETRY_AFTER_METADATA_KEY, bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg

__all__ = ["SCRIPTS", "LoadGenerator", "NodeProcess", "PhaseResult", "main", "raw_inference"]

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "node" / "tenants" / "demo-shop.yaml"
SHED_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
#: Sessions that cannot continue (a new conversation starts instead).
TERMINAL_CODES = ("FAILED_PRECONDITION", "NOT_FOUND", "INVALID_ARGUMENT", "UNAUTHENTICATED")
GENEROUS = {"rate_per_second": 1_000_000, "burst": 1_000_000}

# Targets from the issue. "Shed quickly" has no number there; we take a shed turn's p50 ≤ 10 ms
# (an order of magnitude under the 200 ms admitted p99).
TARGET_MAX_RATE = 1_000.0
TARGET_P99_70_MS = 50.0
TARGET_P99_2X_MS = 200.0
TARGET_SHED_P50_MS = 10.0

CHANNEL = {
    "web": pb.CHANNEL_WEB,
    "app": pb.CHANNEL_APP,
    "mini_program": pb.CHANNEL_MINI_PROGRAM,
    "social": pb.CHANNEL_SOCIAL,
}


# ---------------------------------------------------------------------------------- scripts


@dataclass(frozen=True, kw_only=True)
class Script:
    """One customer conversation; ``{order}``, ``{so}``, ``{tracking}``, ``{phone}`` are filled
    with fresh values per session, so texts vary like real traffic (and the cache sees that)."""

    name: str
    lang: str
    channel: str
    turns: tuple[str, ...]
    entry_path: str = ""


# "name channel [entry_path]" then the customer's turns, indented. The suffix is the language.
_SCRIPT_TABLE = """
delivery_zh app /orders/{order}/tracking
    你好
    我的订单{order}什么时候到？
    快递单号是{tracking}，物流三天没更新了
    好的，谢谢
delivery_en web
    hi there
    where is my order {order}? it was supposed to arrive yesterday
    the tracking number is {tracking}
    ok thanks, bye
return_zh mini_program
    我想退货
    订单号是{order}，衣服尺码不合适
    退款多久能到账？
    好的，谢谢
return_en app /after-sales
    I want to return the headphones I bought last week
    order number {so}
    how long does the refund take?
    great, thank you
invoice_zh web
    请问可以开发票吗
    我要开增值税专用发票，订单{order}
    发票抬头写公司名称可以吗
    谢谢，再见
invoice_en web
    can I get an invoice for order {so}?
    I need a company invoice with our tax number on it
    thanks
payment_zh app /checkout
    付款一直失败怎么办
    用的是微信支付，提示支付超时
    钱已经扣了但是订单{order}显示未付款
    好的
payment_en app /pay
    my payment keeps failing at checkout
    I'm paying by credit card and it says declined
    but the money was taken from my account, order {so}
    ok
greeting_zh social
    你好
    在吗？
    没事了，谢谢，再见
greeting_en social
    hello
    anyone there?
    never mind, thanks, goodbye
complaint_zh app
    你们的服务太差了！
    快递员态度恶劣，东西还摔坏了，订单{order}
    我要投诉，转人工
complaint_en web
    this is ridiculous, my package arrived broken
    I've been waiting two weeks and nobody answers my emails
    I want to talk to a human agent
product_zh mini_program /products/headphones-x2
    这款蓝牙耳机支持降噪吗？
    续航多长时间
    有白色的吗
    谢谢
product_en web /products/monitor-27
    does the 27 inch 4K monitor have a USB-C port?
    what's the warranty period?
    is it in stock? I'm in Shanghai
    thanks
account_zh app /account/security
    我的账号好像被盗了
    收到了异地登录提醒，手机号{phone}
    怎么修改密码
    好的谢谢
cancel_en web
    I want to cancel my order {so}
    actually, can I change the delivery address instead?
    thanks, bye
"""


def parse_scripts(table: str) -> tuple[Script, ...]:
    heads: list[list[str]] = []
    turns: list[list[str]] = []
    for line in table.splitlines():
        if not line.strip():
            continue
        if line.startswith(" "):
            turns[-1].append(line.strip())
        else:
            heads.append(line.split())
            turns.append([])
    return tuple(
        Script(
            name=h[0],
            lang=h[0].rsplit("_", 1)[1],
            channel=h[1],
            entry_path=h[2] if len(h) > 2 else "",
            turns=tuple(t),
        )
        for h, t in zip(heads, turns, strict=True)
    )


SCRIPTS = parse_scripts(_SCRIPT_TABLE)


def fill_values(rng: random.Random) -> dict[str, str]:
    """One customer's order number, tracking number and phone, used by all their turns."""
    return {
        "order": f"2025{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randrange(10**8):08d}",
        "so": f"SO-{rng.randint(10000, 99999)}",
        "tracking": f"SF{rng.randint(10**12, 10**13 - 1)}",
        "phone": f"13{rng.randint(0, 10**9 - 1):09d}",
    }


@dataclass(kw_only=True)
class Conversation:
    script: Script
    turns: tuple[str, ...]
    entry_path: str
    user_id: str
    key: str
    session_id: str = ""
    index: int = 0
    ready_at: float = 0.0

    @classmethod
    def new(cls, rng: random.Random, key: str) -> Conversation:
        script = rng.choice(SCRIPTS)
        values = fill_values(rng)
        return cls(
            script=script,
            turns=tuple(t.format(**values) for t in script.turns),
            entry_path=script.entry_path.format(**values),
            user_id=f"u{rng.randint(1, 10**6)}",
            key=key,
        )

    @property
    def done(self) -> bool:
        return self.index >= len(self.turns)


def corpus(n_conversations: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [t for i in range(n_conversations) for t in Conversation.new(rng, str(i)).turns]


# ---------------------------------------------------------------------------------- results


def pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


@dataclass(kw_only=True)
class Recorder:
    """Client-side latencies (ms) of turns started inside the measuring window."""

    ok_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    errors_ms: dict[str, list[float]] = field(default_factory=dict)

    def ok(self, ms: float, server_us: int) -> None:
        self.ok_ms.append(ms)
        self.server_ms.append(server_us / 1000.0)

    def error(self, code: str, ms: float) -> None:
        self.errors_ms.setdefault(code, []).append(ms)

    @property
    def shed_ms(self) -> list[float]:
        return [ms for c in SHED_CODES for ms in self.errors_ms.get(c, [])]

    @property
    def total(self) -> int:
        return len(self.ok_ms) + sum(len(v) for v in self.errors_ms.values())


@dataclass(kw_only=True)
class Load:
    """What a load phase produced; ``window_s`` is the time its successes are divided by."""

    rec: Recorder
    window_s: float
    offered_per_s: float | None = None  # None: closed loop
    lag_ms: float = 0.0  # worst delay of an open-loop arrival behind its schedule
    skipped: int = 0  # arrivals the client could not send (too many outstanding)


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


# ---------------------------------------------------------------------------------- the node


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


class NodeProcess:
    """``kefu node run`` in a child process; stdout/stderr go to files in ``tmp``."""

    def __init__(self, tmp: Path, config: Path, *, workers: int = 1, node_args: Sequence[str] = ()):
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = tmp / "node.log"
        self.out_path = tmp / "node.out"
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
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
        total, pids = 0.0, {self.proc.pid}
        stats: dict[int, list[str]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        for pid, fields in stats.items():  # direct children are enough: workers do not fork
            if int(fields[1]) == self.proc.pid:
                pids.add(pid)
        for pid in pids:
            if pid in stats:
                total += int(stats[pid][11]) + int(stats[pid][12])
        return total / os.sysconf("SC_CLK_TCK")

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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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


# ---------------------------------------------------------------------------------- load


class LoadGenerator:
    def __init__(self, target: str, key: str, *, channels: int, timeout: float, seed: int):
        # A local subchannel pool per channel: otherwise grpc shares one TCP connection.
        self.channels = [
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(channels)
        ]
        self.stubs = [pbg.KefuNodeStub(ch) for ch in self.channels]
        self.metadata = bearer_metadata(key)
        self.timeout = timeout
        self.rng = random.Random(seed)
        self._n = 0

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()

    def new_conversation(self) -> Conversation:
        self._n += 1
        return Conversation.new(self.rng, f"c{self._n}")

    async def send(self, conv: Conversation, rec: Recorder | None) -> tuple[str, float]:
        """Sends the conversation's next turn; returns the status code name and the node's
        ``retry-after-ms`` hint in seconds (0 when none)."""
        req = pb.ConverseRequest(
            session_id=conv.session_id,
            channel=CHANNEL[conv.script.channel],
            user_id=conv.user_id,
            text=conv.turns[conv.index],
            entry_path=conv.entry_path,
            request_id=f"{conv.key}-{conv.index}",
        )
        stub = self.stubs[hash(conv.key) % len(self.stubs)]
        t0 = time.perf_counter()
        try:
            reply = await stub.Converse(req, metadata=self.metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            if rec is not None:
                rec.error(code, (time.perf_counter() - t0) * 1000.0)
            hint = dict(exc.trailing_metadata() or ()).get(RETRY_AFTER_METADATA_KEY, "0")
            try:
                return code, float(hint) / 1000.0
            except ValueError:
                return code, 0.0
        if rec is not None:
            rec.ok((time.perf_counter() - t0) * 1000.0, reply.server_latency_us)
        conv.session_id = reply.session_id
        conv.index += 1
        return "OK", 0.0

    async def closed_loop(self, sessions: int, duration: float) -> Load:
        """``sessions`` sessions, each sending its next turn as soon as the last is answered.
        Turns still running at the end finish and count, over the time until they did."""
        rec = Recorder()
        start = time.perf_counter()
        t_end = start + duration

        async def worker() -> None:
            backoff = 0.0
            while time.perf_counter() < t_end:
                conv = self.new_conversation()
                while not conv.done and time.perf_counter() < t_end:
                    code, retry_after = await self.send(conv, rec)
                    if code in TERMINAL_CODES:
                        break
                    if code == "OK":
                        backoff = 0.0
                        continue
                    # Refused: as the contract asks, honour retry-after-ms, back off
                    # exponentially with jitter, then retry the same turn.
                    backoff = min(1.0, max(0.05, 2 * backoff, retry_after))
                    await asyncio.sleep(backoff * self.rng.uniform(0.5, 1.0))

        await asyncio.gather(*(worker() for _ in range(sessions)))
        return Load(rec=rec, window_s=time.perf_counter() - start)

    async def open_loop(self, rate: float, duration: float, *, think_s: float) -> Load:
        """Poisson arrivals at ``rate``/s for ``duration`` s. Each arrival is the next turn of the
        oldest conversation that has "thought" for ``think_s`` since its last reply, else the
        first turn of a new one. Every arrival is waited for; successes count over ``duration``.
        """
        rec = Recorder()
        idle: deque[Conversation] = deque()
        tasks: set[asyncio.Task[None]] = set()
        cap = max(2_000, int(rate * (self.timeout + 1)))

        async def one(conv: Conversation) -> None:
            code, _ = await self.send(conv, rec)
            if code not in TERMINAL_CODES and not conv.done:
                conv.ready_at = time.perf_counter() + think_s
                idle.append(conv)

        start = time.perf_counter()
        t_end = start + duration
        next_t = start
        offered = skipped = 0
        lag = 0.0
        while True:
            now = time.perf_counter()
            if now >= t_end:
                break
            while next_t <= now:
                lag = max(lag, now - next_t)
                conv = idle.popleft() if idle and idle[0].ready_at <= now else None
                conv = conv or self.new_conversation()
                offered += 1
                if len(tasks) >= cap:
                    skipped += 1  # the client itself is saturated; counted, not sent
                else:
                    task = asyncio.create_task(one(conv))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                next_t += self.rng.expovariate(rate)
            await asyncio.sleep(max(0.0, min(next_t, t_end) - time.perf_counter()))
        if tasks:
            await asyncio.wait(set(tasks), timeout=self.timeout + 2)
        return Load(
            rec=rec,
            window_s=duration,
            offered_per_s=offered / duration,
            lag_ms=lag * 1000.0,
            skipped=skipped,
        )


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
    from kefu.node.server import NodeOptions

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
    node = NodeProcess(tmp, config, workers=args.workers, node_args=args.node_arg)
    try:
        print(f"starting node (logs: {node.log_path}) …", file=sys.stderr)
        key = node.wait_ready()
        print("node serving; running load phases …", file=sys.stderr)
        phases = asyncio.run(drive(args, node, key))
    finally:
        node.stop()
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
        "--workers", type=int, default=os.cpu_count() or 1, help="node worker processes (cores)"
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
