"""Region failover: kill -9 region a's only node under continuous traffic, how long until the
tenant that allows region b is served from b, and how many requests fail meanwhile.

Each run starts a fresh two-region stack (kefu/dev/failover_stack.py: a hub nats-server and
one leaf per region, the control plane on the hub, one ``kefu node run`` process per region on
its leaf, a gateway following routes), sends new
conversations back to back for ``demo-shop`` (allows b) for 2 s, kills a's node, and goes on
until 1 s after the leader's route moved. Per run:

* **served from b**: kill → first ``demo-shop`` reply from b's node (the gateway's own health
  checks eject a's node and it uses the route's standby region);
* **route moved**: kill → the leader's route names b (heartbeats silent 1.5 s, down 0.5 s
  later with the stack's settings, plus ticks);
* **failed**: ``demo-shop`` requests that did not get a 200 between the kill and the end, of
  all ``demo-shop`` requests of the run;
* **continued**: a conversation begun in a just before the traffic (an order number over two
  turns, replicated sessions on) gets its next turn answered by b, with b's GetSession
  showing a's turns and the order number (1 = yes, 0 = no).

    python benchmarks/failover_bench.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from kefu.dev.failover_stack import FailoverStack


async def one_run(tmp: Path) -> dict[str, float]:
    async with FailoverStack(tmp) as s:
        order = "2024112512345678"
        _, first = await s.send("demo-shop", text=f"我的订单号是 {order}，什么时候到？")
        sid = first.get("session_id", "")
        await s.send("demo-shop", sid, "还没收到")
        turns_a = len((await s.get_session("a", "demo-shop", sid)).turns)
        stop = asyncio.Event()
        traffic = asyncio.create_task(s.traffic(("demo-shop",), stop))
        await asyncio.sleep(2.0)
        t_kill = time.monotonic()
        s.kill("a")

        async def moved() -> bool:
            r = await s.route("demo-shop")
            return bool(r and r.region == "b")

        await s.until(moved, timeout_s=60, what="route to b")
        t_route = time.monotonic()
        await asyncio.sleep(1.0)
        stop.set()
        await traffic
        shop = [x for x in s.samples if x.tenant == "demo-shop"]
        first_b = min(x.at for x in shop if x.node == "nb" and x.at >= t_kill)
        failed = [x for x in shop if x.status != 200]
        continued = 0
        status, third = await s.send("demo-shop", sid, "帮我查一下物流")
        if status == 200 and third.get("session_id", "").startswith("nb."):
            view = await s.get_session("b", "demo-shop", sid)
            ok = len(view.turns) == turns_a + 2 and view.slots.get("order_number") == order
            continued = int(ok)
        if not continued:
            streams = await s.zone_streams("b")
            rep = streams.get("KEFU_REPLICA_a_demo-shop", (0, []))
            local = sid.partition(".")[2]
            has = [x for x in rep[1] if local in x]
            print(f"not continued: {status} {third} replica: {rep[0]} msgs, {has}", flush=True)
        return {
            "served_from_b_s": first_b - t_kill,
            "route_moved_s": t_route - t_kill,
            "requests": len(shop),
            "failed": len(failed),
            "failed_pct": 100.0 * len(failed) / len(shop),
            "continued": continued,
        }


async def main_async(runs: int) -> None:
    results = []
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="kefu-failover-bench-") as tmp:
            r = await one_run(Path(tmp))
        results.append(r)
        print(f"run {i + 1}: {json.dumps({k: round(v, 3) for k, v in r.items()})}", flush=True)
    for key in ("served_from_b_s", "route_moved_s", "failed_pct"):
        vals = [r[key] for r in results]
        print(f"{key}: p50 {statistics.median(vals):.3f}  max {max(vals):.3f}")
    total = sum(r["requests"] for r in results)
    failed = sum(r["failed"] for r in results)
    print(f"failed requests: {failed}/{total} = {100.0 * failed / total:.2f} %")
    cont = sum(int(r["continued"]) for r in results)
    print(f"conversation from a continued in b with its history: {cont}/{len(results)} runs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    asyncio.run(main_async(args.runs))


if __name__ == "__main__":
    main()
