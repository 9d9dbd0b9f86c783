"""Task-flow benchmark: replay scripted customer conversations, score the task success rate.

    python benchmarks/flows_bench.py [--conversations 1000] [--concurrency 8] [--seed 1] [--json]

What one run does, all measured in this run:

1. Starts the demo stack (:class:`kefu.dev.stack.DemoStack`): the demo order center (HTTP +
   its own freshly seeded SQLite) and a node serving the demo tenant, on free ports, with the
   rate limits raised (this measures the flows, not the limiter).
2. Generates ``--conversations`` scripted conversations (seeded, reproducible) in Chinese and
   English over every flow: delivery tracking, order lookup, address change, cancellation,
   return request, invoice, account freeze; with variants — the order number given up front or
   when asked, a question in the middle of a flow, a topic switch and resume, a refused
   confirmation ("no"), a flow dropped with "算了" / "never mind". Each conversation uses its own
   order (or customer), so outcomes never interfere.
3. Plays them over gRPC, ``--concurrency`` at a time; a shed turn (UNAVAILABLE /
   RESOURCE_EXHAUSTED) is retried with backoff, as a real channel client would.
4. Scores each conversation against the **order center's final state** (order status, address,
   return and invoice rows, frozen customer) and, for lookups, the live data the last reply must
   quote (tracking number, status text). Prints the success rate overall, per flow and per
   language, the failures' first reasons, and turns/s.

Target: task success rate ≥ 95 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from kefu.demo.seed import STATUS_TEXT
from kefu.dev.stack import DemoStack

__all__ = ["Script", "main", "make_scripts"]

ROOT = Path(__file__).resolve().parents[1]

PHRASES: dict[str, dict[str, list[str]]] = {
    "track": {
        "zh": ["我的订单什么时候到", "我的快递到哪了", "帮我查下物流", "我的包裹什么时候能到"],
        "en": ["Where is my parcel?", "When will my order arrive?", "Can you track my package?"],
    },
    "query": {
        "zh": ["我想查一下我的订单状态", "帮我看看订单现在什么情况", "帮我查一下订单"],
        "en": ["Can you check the status of my order?", "What's the status of my order?"],
    },
    "address": {
        "zh": ["我要修改收货地址", "地址填错了，帮我改一下", "我想改一下收货地址"],
        "en": ["I want to change my shipping address",
               "I need to change the delivery address of my order"],
    },
    "cancel": {
        "zh": ["帮我把订单取消了", "我不想要了，取消订单", "帮我取消订单"],
        "en": ["Please cancel my order", "I'd like to cancel an order",
               "I want to cancel my order"],
    },
    "return": {
        "zh": ["我要申请退货退款", "东西不合适，我想退货", "我要退货"],
        "en": ["I want to return my order", "I'd like to return an item and get a refund"],
    },
    "invoice": {
        "zh": ["我需要开发票", "帮我开一张发票", "我要开发票"],
        "en": ["Please issue an invoice for my order", "I need an invoice for my order"],
    },
    "freeze": {
        "zh": ["我的账号被盗了，帮我冻结账户", "有人盗用我的账号，快帮我冻结"],
        "en": ["Someone hacked my account, freeze it please",
               "I think my account was hacked, please freeze it"],
    },
}  # fmt: skip
YES = {"zh": ["是的", "确认", "好的", "对"], "en": ["yes", "yes please", "ok", "sure"]}
NO = {"zh": ["不要", "否", "不用"], "en": ["no", "nope", "no thanks"]}
STOP = {"zh": ["算了", "算了吧，不改了", "不用了"], "en": ["never mind", "forget it"]}
ASIDE = {"zh": ["你们支持哪些支付方式"], "en": ["what payment methods do you accept?"]}
ADDRESSES = {
    "zh": ["北京市朝阳区建国路{n}号{m}室", "上海市徐汇区漕溪北路{n}号{m}室",
           "广州市越秀区中山五路{n}号{m}室"],
    "en": ["Room {m}, {n} Nanjing Road, Shanghai", "Flat {m}, {n} Queen's Road, Hong Kong"],
}  # fmt: skip
REASONS = {
    "zh": ["尺码不合适", "商品有质量问题", "颜色和图片不一样"],
    "en": ["wrong size", "it arrived damaged"],
}
TITLES = {"zh": ["杭州云帆科技有限公司", "个人"], "en": ["Acme Trading Ltd", "Jane Smith"]}


@dataclass
class Script:
    flow: str
    lang: str
    variant: str
    turns: list[str]
    check: Callable[[sqlite3.Connection, list[Any]], str | None]  # None = success, else why
    replies: list[Any] = field(default_factory=list)
    error: str | None = None


class Pool:
    """Distinct orders / customers per conversation, drawn from the seeded database."""

    def __init__(self, db: sqlite3.Connection, rnd: random.Random):
        self.by_status: dict[str, list[sqlite3.Row]] = defaultdict(list)
        for row in db.execute("SELECT * FROM orders ORDER BY order_number"):
            self.by_status[row["status"]].append(row)
        for rows in self.by_status.values():
            rnd.shuffle(rows)
        self.customers = list(db.execute("SELECT * FROM customers WHERE status='active'"))
        rnd.shuffle(self.customers)

    def order(self, *statuses: str) -> sqlite3.Row:
        for status in statuses:
            if self.by_status[status]:
                return self.by_status[status].pop()
        raise RuntimeError(f"the seeded data ran out of {statuses} orders: raise --orders")

    def customer(self) -> sqlite3.Row:
        if not self.customers:
            raise RuntimeError("the seeded data ran out of customers")
        return self.customers.pop()


def _one(db: sqlite3.Connection, sql: str, *args: object) -> Any:
    row = db.execute(sql, args).fetchone()
    return None if row is None else row[0]


def make_scripts(db: sqlite3.Connection, n: int, seed: int) -> list[Script]:
    rnd = random.Random(seed)
    pool = Pool(db, rnd)
    flows = ["track", "query", "address", "cancel", "return", "invoice", "freeze", "switch"]
    weights = [16, 12, 12, 16, 12, 12, 8, 12]
    out = []
    for i in range(n):
        flow = rnd.choices(flows, weights)[0]
        lang = "zh" if i % 2 == 0 else "en"
        out.append(_script(flow, lang, rnd, pool, db))
    return out


def _script(flow: str, lang: str, rnd: random.Random, pool: Pool, db: sqlite3.Connection) -> Script:
    pick = rnd.choice
    yes, no, stop = pick(YES[lang]), pick(NO[lang]), pick(STOP[lang])
    variant = pick(["ask", "ask", "upfront", "aside", "no", "stop"])

    def opener(kind: str, number: str | None) -> list[str]:
        text = pick(PHRASES[kind][lang])
        if variant == "upfront" and number:
            sep = "，订单号" if lang == "zh" else ", order number "
            return [f"{text.rstrip('?？')}{sep}{number}"]
        return [text, number] if number else [text]

    if flow in ("track", "query"):
        variant = pick(["ask", "upfront"])
        order = (
            pool.order("shipped", "delivered")
            if flow == "track"
            else pool.order(pick(["paid", "shipped", "delivered", "pending_payment"]))
        )
        number = order["order_number"]
        turns = opener(flow, number)
        if flow == "track":
            tracking = _one(
                db, "SELECT tracking_number FROM shipments WHERE order_number=?", number
            )

            def check(_db: sqlite3.Connection, r: list[Any], t: str = tracking) -> str | None:
                return None if t in r[-1].text else f"tracking number missing: {r[-1].text[:60]}"
        else:
            words = STATUS_TEXT[order["status"]][0 if lang == "zh" else 1]

            def check(_db: sqlite3.Connection, r: list[Any], w: str = words) -> str | None:
                return None if w in r[-1].text else f"status text missing: {r[-1].text[:60]}"

        return Script(flow=flow, lang=lang, variant=variant, turns=turns, check=check)

    if flow == "switch":  # cancel, then ask about another order's parcel, then confirm
        paid, shipped = pool.order("paid"), pool.order("shipped", "delivered")
        track = pick(PHRASES["track"][lang]).rstrip("?？")
        sep = "，订单号" if lang == "zh" else ", order "
        turns = [pick(PHRASES["cancel"][lang]), paid["order_number"],
                 f"{track}{sep}{shipped['order_number']}", yes]  # fmt: skip
        tracking = _one(
            db,
            "SELECT tracking_number FROM shipments WHERE order_number=?",
            shipped["order_number"],
        )

        def check(db: sqlite3.Connection, r: list[Any]) -> str | None:
            if tracking not in r[2].text:
                return f"no tracking answer on the switch: {r[2].text[:60]}"
            st = _one(db, "SELECT status FROM orders WHERE order_number=?", paid["order_number"])
            return None if st == "cancelled" else f"paid order not cancelled after resume ({st})"

        return Script(flow=flow, lang=lang, variant="switch", turns=turns, check=check)

    if flow == "freeze":
        variant = pick(["ask", "ask", "no", "stop"])
        cust = pool.customer()
        phone = cust["phone"] if lang == "zh" else f"my phone is {cust['phone']}"
        turns = [pick(PHRASES["freeze"][lang]), phone]
        turns += [no] if variant == "no" else [stop] if variant == "stop" else [yes]
        expect = "active" if variant in ("no", "stop") else "frozen"

        def check(db: sqlite3.Connection, r: list[Any]) -> str | None:
            st = _one(db, "SELECT status FROM customers WHERE id=?", cust["id"])
            if st != expect:
                return f"customer {st}, expected {expect}"
            if expect == "frozen" and not r[-1].handoff:
                return "frozen but not handed off"
            return None

        return Script(flow=flow, lang=lang, variant=variant, turns=turns, check=check)

    # state-changing order flows
    statuses = {
        "address": ("paid", "pending_payment"),
        "cancel": ("paid", "pending_payment"),
        "return": ("delivered",),
        "invoice": ("paid", "shipped", "delivered"),
    }[flow]
    order = pool.order(*statuses)
    number = order["order_number"]
    extra: list[str] = []
    if flow == "address":
        value = pick(ADDRESSES[lang]).format(n=rnd.randint(1, 300), m=rnd.randint(101, 2505))
        extra = [value]
    elif flow == "return":
        value = pick(REASONS[lang])
        extra = [value]
    elif flow == "invoice":
        value = pick(TITLES[lang])
        extra = [value]
    else:
        value = ""
    turns = opener(flow, number)
    if variant == "stop":
        # dropped right after the opener, or once the order number is given
        turns = [*turns[:1], stop] if len(turns) == 1 or rnd.random() < 0.5 else [*turns, stop]
    else:
        turns += extra
        if variant == "aside":
            turns.append(pick(ASIDE[lang]))
        turns.append(no if variant == "no" else yes)
    done = variant not in ("no", "stop")

    def check(db: sqlite3.Connection, r: list[Any]) -> str | None:
        if flow == "address":
            addr = _one(db, "SELECT address FROM orders WHERE order_number=?", number)
            ok = addr == value if done else addr == order["address"]
            return None if ok else f"address {addr!r}, expected {'new' if done else 'unchanged'}"
        if flow == "cancel":
            st = _one(db, "SELECT status FROM orders WHERE order_number=?", number)
            ok = st == "cancelled" if done else st == order["status"]
            return None if ok else f"status {st}, done={done}"
        table, col = ("returns", "reason") if flow == "return" else ("invoices", "title")
        got = _one(db, f"SELECT {col} FROM {table} WHERE order_number=?", number)
        ok = got == value if done else got is None
        return None if ok else f"{table}.{col} = {got!r}, done={done}"

    return Script(flow=flow, lang=lang, variant=variant, turns=turns, check=check)


async def _play(stack: DemoStack, script: Script, sem: asyncio.Semaphore) -> int:
    turns = 0
    async with sem:
        sid = ""
        for text in script.turns:
            for attempt in range(8):
                try:
                    r = await stack.say(text, sid)
                    break
                except grpc.aio.AioRpcError as exc:
                    retryable = exc.code() in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                    )
                    if not retryable or attempt == 7:
                        script.error = f"{exc.code().name}: {exc.details()}"
                        return turns
                    await asyncio.sleep(0.02 * 2**attempt)
            sid = r.session_id
            script.replies.append(r)
            turns += 1
    return turns


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kefu-flows-bench-") as tmp:
        async with DemoStack(Path(tmp), orders=args.orders, customers=args.customers) as stack:
            with stack.db() as db:
                scripts = make_scripts(db, args.conversations, args.seed)
            sem = asyncio.Semaphore(args.concurrency)
            started = time.perf_counter()
            turns = await asyncio.gather(*(_play(stack, s, sem) for s in scripts))
            elapsed = time.perf_counter() - started
            ok: Counter[str] = Counter()
            total: Counter[str] = Counter()
            reasons: list[str] = []
            with stack.db() as db:
                for s in scripts:
                    why = s.error or s.check(db, s.replies)
                    for key in ("all", f"flow:{s.flow}", f"lang:{s.lang}", f"variant:{s.variant}"):
                        total[key] += 1
                        ok[key] += why is None
                    if why is not None:
                        reasons.append(f"{s.flow}/{s.lang}/{s.variant}: {why} | {s.turns}")
    return {
        "conversations": len(scripts),
        "turns": sum(turns),
        "elapsed_s": round(elapsed, 2),
        "turns_per_s": round(sum(turns) / elapsed, 1),
        "concurrency": args.concurrency,
        "success_rate": round(ok["all"] / total["all"], 4),
        "by": {k: {"ok": ok[k], "total": total[k]} for k in sorted(total) if k != "all"},
        "failures": reasons,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--conversations", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--orders", type=int, default=6000, help="orders seeded in the order center")
    p.add_argument("--customers", type=int, default=1200)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        print(
            f"{result['conversations']} conversations, {result['turns']} turns in "
            f"{result['elapsed_s']} s ({result['turns_per_s']} turns/s, "
            f"concurrency {result['concurrency']})"
        )
        print(f"task success rate: {result['success_rate'] * 100:.1f} % (target ≥ 95 %)")
        for key, v in result["by"].items():
            print(f"  {key:18s} {v['ok']:4d}/{v['total']:<4d} {v['ok'] / v['total'] * 100:5.1f} %")
        for line in result["failures"][:15]:
            print("  FAIL", line)
    return 0 if result["success_rate"] >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
