"""Gateway overhead: the same turns through the access gateway (HTTP/JSON and WebSocket) and
straight to the node's gRPC API (Converse and ConverseStream), in the same run, against the
same node (``kefu node run --workers 2`` in its own process; the gateway in its own process,
``kefu gateway run``).

    python benchmarks/gateway_bench.py [--workers 2] [--turns 300] [--seconds 10]
                                       [--concurrency 16] [--json out.json]

* **Latency**: one client, turns interleaved round-robin over the four paths (so every path
  sees the same machine noise); p50/p99 per path and the gateway's added p50/p99 (HTTP − unary
  gRPC, WebSocket − streaming gRPC).
* **Throughput**: ``--concurrency`` clients for ``--seconds`` per path: turns/s and errors.
  The clients keep a conversation for 20 turns, then start a new one (WebSocket: a new socket).

Everything runs on one machine: the load generator, the gateway and the node's workers share
its cores, so the throughput figures are the machine's, not the gateway's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from node_bench_process import REPO, NodeProcess, bench_config, free_port, stop_process

from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg

TEXTS = ("how do i get a VAT invoice?", "我的订单什么时候到", "怎么申请退货", "hello")
TURNS_PER_CONVERSATION = 20


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


class GatewayProcess:
    def __init__(self, tmp: Path, node_port: int, key: str, event_loop: str = "auto"):
        import os
        import subprocess

        self.port = free_port()
        (tmp / "bench.key").write_text(key, encoding="utf-8")
        cfg = {
            "listen": f"127.0.0.1:{self.port}",
            "nodes": [{"id": "bench-1", "address": f"127.0.0.1:{node_port}"}],
            "tenants": [
                {
                    "id": "demo-shop",
                    "api_key_file": "bench.key",
                    "rate": {"rate": 100_000, "burst": 100_000},
                }
            ],
            "limits": {"max_in_flight": 10_000},
            "log_format": "json",
        }
        path = tmp / "gateway.yaml"
        path.write_text(json.dumps(cfg), encoding="utf-8")  # JSON is YAML
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.log = open(tmp / "gateway.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "kefu.cli", "gateway", "run", "--config", str(path)),
                *("--event-loop", event_loop),
            ],
            stdout=self.log,
            stderr=self.log,
            env=env,
        )

    async def wait_ready(self, http: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                async with http.get(f"http://127.0.0.1:{self.port}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        self.log.flush()
        tail = Path(self.log.name).read_text(encoding="utf-8", errors="replace")[-2000:]
        raise RuntimeError(f"gateway not ready:\n{tail}")

    def stop(self) -> None:
        stop_process(self.proc)  # type: ignore[arg-type]
        self.log.close()


class Paths:
    """One client of each path; ``turn(path, i)`` sends one message."""

    def __init__(self, stub: Any, md: Any, http: aiohttp.ClientSession, base: str):
        self.stub, self.md, self.http, self.base = stub, md, http, base
        self.sessions: dict[str, str] = {}
        self.count: dict[str, int] = {}
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    def _session(self, path: str) -> str:
        n = self.count.get(path, 0)
        self.count[path] = n + 1
        if n % TURNS_PER_CONVERSATION == 0:
            self.sessions[path] = ""
        return self.sessions.get(path, "")

    async def grpc_unary(self, text: str) -> None:
        sid = self._session("grpc_unary")
        r = await self.stub.Converse(
            pb.ConverseRequest(text=text, session_id=sid, channel=pb.CHANNEL_API),
            metadata=self.md,
            timeout=30,
        )
        self.sessions["grpc_unary"] = r.session_id

    async def grpc_stream(self, text: str) -> None:
        sid = self._session("grpc_stream")
        req = pb.ConverseRequest(text=text, session_id=sid, channel=pb.CHANNEL_WEB)
        async for ev in self.stub.ConverseStream(req, metadata=self.md, timeout=30):
            if ev.WhichOneof("event") == "reply":
                self.sessions["grpc_stream"] = ev.reply.session_id

    async def http_json(self, text: str) -> None:
        sid = self._session("http")
        body = {"text": text, **({"session_id": sid} if sid else {})}
        async with self.http.post(f"{self.base}/v1/chat/demo-shop/messages", json=body) as r:
            data = await r.json()
            if r.status != 200:
                raise RuntimeError(data["error"]["code"])
        self.sessions["http"] = data["session_id"]

    async def websocket(self, text: str) -> None:
        if self._session("ws") == "" and self.ws is not None:
            await self.ws.close()
            self.ws = None
        if self.ws is None:
            self.ws = await self.http.ws_connect(f"{self.base}/v1/chat/demo-shop/ws?channel=web")
            await self.ws.receive_json()  # ready
        await self.ws.send_json({"type": "message", "text": text})
        while True:
            msg = await self.ws.receive_json()
            if msg["type"] == "reply":
                return
            if msg["type"] == "error":
                raise RuntimeError(msg["error"]["code"])

    def by_name(self) -> dict[str, Callable[[str], Awaitable[None]]]:
        return {
            "grpc_unary": self.grpc_unary,
            "grpc_stream": self.grpc_stream,
            "http": self.http_json,
            "websocket": self.websocket,
        }


async def latency(paths: Paths, turns: int) -> dict[str, dict[str, float]]:
    fns = paths.by_name()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(turns + 20):
        text = TEXTS[i % len(TEXTS)]
        for name, fn in fns.items():
            t0 = time.perf_counter()
            await fn(text)
            if i >= 20:  # warm-up
                samples[name].append((time.perf_counter() - t0) * 1000)
    return {
        k: {"p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99), "mean_ms": statistics.fmean(v)}
        for k, v in samples.items()
    }


async def throughput(
    make: Callable[[], Paths], name: str, clients: int, seconds: float
) -> dict[str, float]:
    done = errors = 0
    kinds: dict[str, int] = {}
    stop_at = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal done, errors
        p = make()
        fn = p.by_name()[name]
        n = i
        while time.monotonic() < stop_at:
            try:
                await fn(TEXTS[n % len(TEXTS)])
                done += 1
            except grpc.aio.AioRpcError as exc:
                errors += 1
                kinds[exc.code().name] = kinds.get(exc.code().name, 0) + 1
            except (RuntimeError, aiohttp.ClientError) as exc:
                errors += 1
                kinds[str(exc)] = kinds.get(str(exc), 0) + 1
            n += 1
        if p.ws is not None:
            await p.ws.close()

    t0 = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.monotonic() - t0
    return {"turns_per_s": done / elapsed, "errors": errors, "turns": done, "error_kinds": kinds}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        config, _ = bench_config(tmp)
        node = NodeProcess(tmp, config, workers=args.workers)
        gw: GatewayProcess | None = None
        try:
            key = node.wait_ready()
            gw = GatewayProcess(tmp, node.port, key, args.gateway_loop)
            conn = aiohttp.TCPConnector(limit=0)
            async with (
                aiohttp.ClientSession(connector=conn) as http,
                grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as ch,
            ):
                await gw.wait_ready(http)
                stub, md = pbg.KefuNodeStub(ch), bearer_metadata(key)
                base = f"http://127.0.0.1:{gw.port}"

                def make() -> Paths:
                    return Paths(stub, md, http, base)

                lat = await latency(make(), args.turns)
                tput = {
                    name: await throughput(make, name, args.concurrency, args.seconds)
                    for name in ("grpc_unary", "http", "grpc_stream", "websocket")
                }
        finally:
            if gw is not None:
                gw.stop()
            node.stop()
    added = {
        "http_p50_ms": lat["http"]["p50_ms"] - lat["grpc_unary"]["p50_ms"],
        "http_p99_ms": lat["http"]["p99_ms"] - lat["grpc_unary"]["p99_ms"],
        "ws_p50_ms": lat["websocket"]["p50_ms"] - lat["grpc_stream"]["p50_ms"],
        "ws_p99_ms": lat["websocket"]["p99_ms"] - lat["grpc_stream"]["p99_ms"],
    }
    return {
        "workers": args.workers,
        "gateway_loop": args.gateway_loop,
        "turns": args.turns,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "latency": lat,
        "added": added,
        "throughput": tput,
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--turns", type=int, default=300)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--json", help="also write the results here")
    p.add_argument(
        "--gateway-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the gateway's event loop (auto: uvloop when installed)",
    )
    args = p.parse_args()
    res = asyncio.run(run(args))
    print(f"latency, one client, {args.turns} turns per path (ms):")
    for name, v in res["latency"].items():
        print(
            f"  {name:12s} p50 {v['p50_ms']:7.2f}  p99 {v['p99_ms']:7.2f}  mean {v['mean_ms']:7.2f}"
        )
    a = res["added"]
    print(
        f"gateway added: HTTP p50 {a['http_p50_ms']:+.2f} p99 {a['http_p99_ms']:+.2f}; "
        f"WebSocket p50 {a['ws_p50_ms']:+.2f} p99 {a['ws_p99_ms']:+.2f} ms"
    )
    clients = f"{args.concurrency} clients × {args.seconds:g} s"
    print(f"throughput, {clients}, node --workers {args.workers}:")
    for name, v in res["throughput"].items():
        kinds = ", ".join(f"{k} {n}" for k, n in v["error_kinds"].items()) or "none"
        print(f"  {name:12s} {v['turns_per_s']:7.1f} turns/s  ({v['errors']} errors: {kinds})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
