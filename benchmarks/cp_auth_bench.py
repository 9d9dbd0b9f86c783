"""What an operator-token check costs per control-plane RPC (real nats-server, real gRPC).

Every ``kefu.v1.ControlPlane`` RPC reads two KV keys to check its token. This compares, on one
channel and sequentially, the latency of ``GetStatus`` (token checked, then one KV read for the
leader) with the open gRPC health ``Check`` (no token, no KV), and a refused call (unknown
token: one KV read, then UNAUTHENTICATED).

    python benchmarks/cp_auth_bench.py [--calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
from kefu.keys import TrustStore, load_public_key
from kefu.models.store import shipped_dir
from kefu.natsserver import NatsServer
from kefu.v1 import bearer_metadata
from kefu.v1 import control_plane_pb2 as pb
from kefu.v1 import control_plane_pb2_grpc as pbg


async def _timed(calls: int, fn: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    for _ in range(20):  # warm-up
        await fn()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


async def main(calls: int) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="kefu-authbench-") as tmp,
        NatsServer(Path(tmp) / "nats") as srv,
    ):
        trust = TrustStore([load_public_key(shipped_dir() / "kefu-release.pub")])
        opts = ControlPlaneOptions(nats_url=srv.url, trust=trust, listen="127.0.0.1:0")
        async with (
            ControlPlaneApp(opts) as app,
            grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch,
        ):
            assert app.first_token
            stub, hstub = pbg.ControlPlaneStub(ch), health_pb2_grpc.HealthStub(ch)
            good, bad = bearer_metadata(app.first_token), bearer_metadata("kcp_unknown")

            async def health() -> object:
                return await hstub.Check(health_pb2.HealthCheckRequest(), timeout=10)

            async def status() -> object:
                return await stub.GetStatus(pb.GetStatusRequest(), metadata=good, timeout=10)

            async def refused() -> object:
                try:
                    await stub.GetStatus(pb.GetStatusRequest(), metadata=bad, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                    return exc
                raise AssertionError("an unknown token was accepted")

            for label, fn in (
                ("health Check (open, no KV)", health),
                ("GetStatus with admin token (2 KV reads + 1)", status),
                ("GetStatus with unknown token (1 KV read, refused)", refused),
            ):
                p50, p95 = await _timed(calls, fn)
                print(f"{label:52s} p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  ({calls} calls)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500)
    asyncio.run(main(ap.parse_args().calls))
