"""Replication lag: a turn committed in region a → readable in region b's replica stream.

The deployed topology (kefu/natstopology.py: hub + one leaf nats-server per region, each with
its own JetStream domain, the nodes' least-privilege replication logins), the real SQLite store
of tenant ``shop`` in a (outbox in the turn's transaction, zone-key sealed) with the node's
shipper, and b's replica stream sourcing a's turns stream. ``--writers`` concurrent
conversations record turns (customer + bot, a slot) for ``--seconds``; an ordered consumer on
b's replica stream notes when each change arrives. Per change: lag = arrival in b − commit in
a (both on this machine's monotonic clock). Printed: turns/s committed in a, changes/s
arriving in b, lag p50 / p99 / max.

    python benchmarks/replication_bench.py [--writers 8] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from kefu.natsbus import NatsOptions
from kefu.natsserver import inbox_prefix
from kefu.natstopology import RegionSpec, Topology, plan_topology
from kefu.node.replication.records import ZoneKey, replica_stream
from kefu.node.replication.service import Replication, ReplicationOptions
from kefu.node.sessions.sqlite_store import SQLiteSessionStore
from kefu.node.sessions.store import (
    NewSession,
    NewTurn,
    TurnRecord,
    TurnRole,
    start_session,
    utc_now,
)
from kefu.wire import TenantResidency

SHOP = TenantResidency(home="cn-east", allowed=["cn-east", "cn-north"], replicate=True)


def _replication(topo: Topology, region: str, key: ZoneKey) -> Replication:
    login = topo.credentials(topo.plan.leaves[region].replicators[0], region=region)
    return Replication(
        ReplicationOptions(
            region=region,
            zone_key=key,
            nats=NatsOptions(
                servers=[login["url"]],
                user=login["user"],
                password=login["password"],
                inbox_prefix=inbox_prefix(login["user"]),
                name=login["user"],
            ),
            reconcile_s=0.5,
        )
    )


async def run(tmp: Path, writers: int, seconds: float) -> dict[str, float]:
    key = ZoneKey.parse("cn", base64.b64encode(os.urandom(32)))
    regions = [RegionSpec(name="cn-east", zone="cn"), RegionSpec(name="cn-north", zone="cn")]
    plan = plan_topology(regions, [("na", "cn-east"), ("nb", "cn-north")])
    with Topology(plan, tmp / "nats") as topo:
        a = await SQLiteSessionStore.open(tmp / "a", "shop")
        b = await SQLiteSessionStore.open(tmp / "b", "shop")
        rep_a, rep_b = _replication(topo, "cn-east", key), _replication(topo, "cn-north", key)
        rep_a.tenant_applied("shop", a, SHOP, 30)
        rep_b.tenant_applied("shop", b, SHOP, 30)
        committed: dict[tuple[str, int], float] = {}
        arrived: dict[tuple[str, int], float] = {}
        seen: dict[str, int] = {}
        async with rep_a, rep_b:
            await rep_b.reconcile_streams()
            assert rep_b.bus is not None
            js = rep_b.bus.js

            async def on_msg(msg: object) -> None:
                subject = msg.subject  # type: ignore[attr-defined]
                sid = subject.rsplit(".", 1)[1]
                seen[sid] = seen.get(sid, 0) + 1
                arrived[(sid, seen[sid])] = time.monotonic()

            sub = await js.subscribe(
                "kefu.turns.cn-east.shop.>",
                stream=replica_stream("cn-east", "shop"),
                ordered_consumer=True,
                cb=on_msg,
            )
            stop = time.monotonic() + seconds

            async def writer(i: int) -> None:
                while time.monotonic() < stop:
                    new = start_session(NewSession(channel="web"), tenant="shop", now=utc_now())
                    sid = new.id
                    for n in range(1, 4):
                        await a.record_turn(
                            TurnRecord(
                                session_id=sid,
                                new_session=new if n == 1 else None,
                                turns=(
                                    NewTurn(session_id=sid, role=TurnRole.CUSTOMER, text=f"问 {n}"),
                                    NewTurn(session_id=sid, role=TurnRole.BOT, text=f"答 {n}"),
                                ),
                                slots={"order_number": f"2024112512{i:06d}"},
                            )
                        )
                        committed[(sid, n)] = time.monotonic()

            t0 = time.monotonic()
            await asyncio.gather(*(writer(i) for i in range(writers)))
            t_written = time.monotonic() - t0
            deadline = time.monotonic() + 30
            while len(arrived) < len(committed) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            t_all = time.monotonic() - t0
            await sub.unsubscribe()
        await a.close()
        await b.close()
    lags = sorted(arrived[k] - committed[k] for k in committed if k in arrived)
    q = statistics.quantiles(lags, n=100) if len(lags) >= 2 else lags * 99
    return {
        "writers": writers,
        "turns_committed": len(committed),
        "turns_per_s": round(len(committed) / t_written, 1),
        "arrived_in_b": len(lags),
        "arrived_per_s": round(len(lags) / t_all, 1),
        "lag_p50_ms": round(statistics.median(lags) * 1000, 1),
        "lag_p99_ms": round(q[98] * 1000, 1),
        "lag_max_ms": round(lags[-1] * 1000, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(run(Path(tmp), args.writers, args.seconds)), indent=1))


if __name__ == "__main__":
    main()
