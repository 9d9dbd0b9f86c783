"""The load generator of :mod:`node_bench`: the customer scripts (multi-turn, Chinese and
English, fresh order numbers per session), conversations that play them, a recorder of
client-side latencies, and :class:`LoadGenerator`, which drives a node over gRPC in a closed
loop (maximum rate) or an open loop (Poisson arrivals at a given rate).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field

import grpc

from kefu.v1 import RETRY_AFTER_METADATA_KEY, bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg

__all__ = [
    "CHANNEL",
    "SCRIPTS",
    "SHED_CODES",
    "TERMINAL_CODES",
    "Conversation",
    "Load",
    "LoadGenerator",
    "Recorder",
    "Script",
    "corpus",
]

SHED_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
#: Sessions that cannot continue (a new conversation starts instead).
TERMINAL_CODES = ("FAILED_PRECONDITION", "NOT_FOUND", "INVALID_ARGUMENT", "UNAUTHENTICATED")

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
