"""``kefu demo traffic``: simulated customers talking to real nodes over their gRPC API.

Sessions arrive as a Poisson process at ``rate`` sessions per second (seeded), each one a
2–4 turn conversation in zh or en scripted from labelled utterances
(:func:`~kefu.demo.customers.script_session`; by default the held-out
``models/data/demo_shop_intent/dev.jsonl``), spread round-robin over the given nodes. After
its last turn (or a hand-off) the simulated customer submits feedback the way customers do
(:func:`~kefu.demo.customers.feedback_for`: corrected intents, a rating that depends on
whether the bot understood, resolved yes/no) with ``SubmitFeedback`` and ends the session.

At most ``concurrency`` sessions are in flight; a session due while all slots are busy is
handled by the named overload policy (``shed`` or ``wait``, :data:`OVERLOAD_POLICIES`). Every
remote call has a timeout; a failed call counts as an error and ends that session (a
conversation the customer abandoned), never the run.

:class:`TrafficRun` is the library API the tests and ``benchmarks/canary_e2e_bench.py`` reuse:
``await TrafficRun(options, on_session=...).run(stop)``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kefu.demo.customers import (
    OVERLOAD_POLICIES,
    CustomerModel,
    Overload,
    SessionFeedback,
    SessionResult,
    Summary,
    TurnResult,
    Utterance,
    admit,
    feedback_for,
    script_session,
)
from kefu.errors import DatasetError, PermanentError
from kefu.tls import TlsFiles

__all__ = ["TrafficOptions", "TrafficRun", "default_data", "load_utterances", "register"]


def default_data() -> Path:
    """The demo tenant's held-out labelled utterances, shipped with the model pipeline
    (``models/data/demo_shop_intent/dev.jsonl``, package data of ``kefu.models``)."""
    import importlib.util

    spec = importlib.util.find_spec("kefu.models")
    roots = list(spec.submodule_search_locations or []) if spec else []
    if not roots:
        raise DatasetError("the kefu.models package (its data) is not installed / 未安装模型数据")
    return Path(roots[0]) / "data" / "demo_shop_intent" / "dev.jsonl"


def _lang(text: str) -> str:
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


def load_utterances(path: Path) -> dict[str, list[Utterance]]:
    """JSON Lines with ``text``, ``label`` (or ``intent``) and optional ``lang``, by language.
    A bad line is a :class:`DatasetError` naming the file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read utterances ({exc}) / 无法读取语句文件", path=path) from exc
    out: dict[str, list[Utterance]] = {}
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, label = str(row["text"]), str(row.get("label") or row["intent"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(
                f"expected a JSON object with text and label ({exc}) / 须含 text 和 label",
                path=path,
                line=no,
            ) from exc
        lang = str(row.get("lang") or _lang(text))
        out.setdefault(lang, []).append(Utterance(text, label, lang))
    if not out:
        raise DatasetError("no utterances / 没有语句", path=path)
    return out


@dataclass
class TrafficOptions:
    targets: list[str]
    key: str
    rate: float = 5.0  # sessions per second (Poisson arrivals)
    sessions: int = 0  # stop after this many sessions were due (0: no limit)
    duration_s: float = 0.0  # stop starting sessions after this long (0: no limit)
    concurrency: int = 32
    overload: Overload = "shed"
    seed: int = 13
    data: Path | None = None
    think_s: float = 0.0  # the customer's pause between turns
    timeout_s: float = 10.0
    tls: TlsFiles | None = None
    customers: CustomerModel = field(default_factory=CustomerModel)
    end_sessions: bool = True

    def check(self) -> None:
        if not self.targets:
            raise PermanentError("give at least one node address / 至少指定一个节点地址")
        if not self.rate > 0:
            raise PermanentError("--rate must be > 0 sessions/s / --rate 须大于 0")
        if self.concurrency < 1:
            raise PermanentError("--concurrency must be >= 1 / --concurrency 须 >= 1")
        if self.overload not in OVERLOAD_POLICIES:
            raise PermanentError(
                f"--overload must be one of {', '.join(OVERLOAD_POLICIES)} / 过载策略无效"
            )


class TrafficRun:
    """One run of simulated customers (see the module text)."""

    def __init__(
        self,
        options: TrafficOptions,
        *,
        on_session: Callable[[SessionResult], None] | None = None,
    ):
        options.check()
        self.options = options
        self.on_session = on_session
        self.summary = Summary()
        self.in_flight = 0
        self.utterances = load_utterances(options.data or default_data())
        self._stubs: list[Any] = []
        self._slots = asyncio.Semaphore(options.concurrency)

    async def run(self, stop: asyncio.Event | None = None) -> Summary:
        """Start sessions until ``sessions``/``duration_s`` is reached or ``stop`` is set, then
        wait for those in flight; returns the summary."""
        import grpc

        from kefu.tls import secure_channel
        from kefu.v1 import node_pb2_grpc as pbg

        o = self.options
        arrivals = random.Random(o.seed)
        channels = [secure_channel(t, o.tls) for t in o.targets]
        self._stubs = [pbg.KefuNodeStub(ch) for ch in channels]
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        due = t0
        i = 0
        try:
            while not (stop is not None and stop.is_set()):
                if o.sessions and i >= o.sessions:
                    break
                if o.duration_s and due - t0 >= o.duration_s:
                    break
                due += arrivals.expovariate(o.rate)
                wait = due - time.monotonic()
                if wait > 0:
                    if stop is None:
                        await asyncio.sleep(wait)
                    else:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), wait)
                        if stop.is_set():
                            break
                decision = admit(self.in_flight, o.concurrency, o.overload)
                if decision == "shed":
                    self.summary.shed += 1
                    i += 1
                    continue
                await self._slots.acquire()  # "wait": blocks until a session finishes
                self.in_flight += 1
                task = asyncio.create_task(self._session(i), name=f"kefu-traffic-{i}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            for ch in channels:
                with contextlib.suppress(grpc.RpcError):
                    await ch.close()
            self.summary.seconds = time.monotonic() - t0
        return self.summary

    async def _session(self, i: int) -> None:
        try:
            result = await self._converse(i)
        finally:
            self.in_flight -= 1
            self._slots.release()
        self.summary.add(result)
        if self.on_session is not None:
            self.on_session(result)

    async def _converse(self, i: int) -> SessionResult:
        import grpc

        from kefu.v1 import bearer_metadata
        from kefu.v1 import node_pb2 as pb

        o = self.options
        rng = random.Random(f"{o.seed}:{i}")  # per session: independent of scheduling
        script = script_session(self.utterances, rng)
        node = i % len(self._stubs)
        stub = self._stubs[node]
        md = bearer_metadata(o.key)
        res = SessionResult(node=o.targets[node], started_at=time.time())
        try:
            for n, utt in enumerate(script.turns):
                if n and o.think_s:
                    await asyncio.sleep(o.think_s)
                started = time.perf_counter()
                reply = await stub.Converse(
                    pb.ConverseRequest(
                        session_id=res.session_id,
                        channel=pb.CHANNEL_WEB,
                        text=utt.text,
                        language=script.lang,
                    ),
                    metadata=md,
                    timeout=o.timeout_s,
                )
                res.session_id = reply.session_id
                res.turns.append(
                    TurnResult(
                        seq=reply.turn_seq,
                        expected=utt.intent,
                        predicted=reply.intent,
                        latency_ms=(time.perf_counter() - started) * 1000,
                        model_version=reply.model_versions.get("intent", ""),
                        handoff=reply.handoff,
                        at=time.time(),
                    )
                )
                if reply.handoff:
                    break
            res.feedback = feedback_for(res.turns, rng, o.customers)
            await self._feedback(stub, md, res.session_id, res.feedback)
            if o.end_sessions:
                await stub.EndSession(
                    pb.EndSessionRequest(session_id=res.session_id, reason="user_closed"),
                    metadata=md,
                    timeout=o.timeout_s,
                )
        except grpc.aio.AioRpcError as exc:
            res.errors += 1
            res.error = f"{exc.code().name}: {exc.details()}"
        return res

    async def _feedback(self, stub: Any, md: Any, session_id: str, fb: SessionFeedback) -> None:
        from kefu.v1 import node_pb2 as pb

        t = self.options.timeout_s
        for seq, intent in fb.corrections:
            await stub.SubmitFeedback(
                pb.SubmitFeedbackRequest(session_id=session_id, turn_seq=seq,
                                         corrected_intent=intent),
                metadata=md, timeout=t,
            )  # fmt: skip
        if fb.rating or fb.resolved is not None:
            req = pb.SubmitFeedbackRequest(session_id=session_id, rating=fb.rating)
            if fb.resolved is not None:
                req.resolved = fb.resolved
            await stub.SubmitFeedback(req, metadata=md, timeout=t)


# --------------------------------------------------------------------------- command line


def _key(args: argparse.Namespace) -> str:
    if args.key:
        return str(args.key)
    path = Path(args.key_file) if args.key_file else Path("kefu-data") / f"{args.tenant}.key"
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise PermanentError(
            f"{path}: cannot read the API key ({exc.strerror}); use --key / 无法读取 API 密钥"
        ) from exc


def _traffic(args: argparse.Namespace) -> int:
    from kefu.tls import client_tls

    opts = TrafficOptions(
        targets=args.target or ["127.0.0.1:7400"],
        key=_key(args),
        rate=args.rate,
        sessions=args.sessions,
        duration_s=args.duration,
        concurrency=args.concurrency,
        overload=args.overload,
        seed=args.seed,
        data=Path(args.data) if args.data else None,
        think_s=args.think,
        timeout_s=args.timeout,
        tls=client_tls(args, data_dir=Path("kefu-data")),
    )
    if not (opts.sessions or opts.duration_s):
        opts.sessions = 100
    run = TrafficRun(opts)
    try:
        summary = asyncio.run(run.run())
    except KeyboardInterrupt:
        summary = run.summary
    if args.json:
        print(json.dumps(summary.to_json(), ensure_ascii=False))
    else:
        for line in summary.lines():
            print(line)
    return 0 if summary.sessions and not summary.errors else 1


def register(verbs: argparse._SubParsersAction) -> None:
    from kefu.tls import add_client_tls_arguments

    p = verbs.add_parser(
        "traffic",
        help="simulated customers: labelled zh/en multi-turn sessions with feedback, at a rate",
        description=(__doc__ or "").split("\n\n")[1],
    )
    p.add_argument("--target", action="append", help="node address (repeatable; 127.0.0.1:7400)")
    p.add_argument("--key", help="tenant API key")
    p.add_argument("--tenant", default="demo-shop", help="tenant whose generated key to use")
    p.add_argument("--key-file", help="file holding the key (default: kefu-data/<tenant>.key)")
    p.add_argument("--rate", type=float, default=5.0, help="sessions per second (%(default)s)")
    p.add_argument("--sessions", type=int, default=0, help="sessions to run (default 100)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run instead")
    p.add_argument("--concurrency", type=int, default=32, help="sessions in flight at most")
    p.add_argument(
        "--overload", choices=OVERLOAD_POLICIES, default="shed",
        help="when every slot is busy: shed the session (counted) or wait for a slot",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--data", help="labelled utterances, JSON Lines (default: the demo dev set)")
    p.add_argument("--think", type=float, default=0.0, help="seconds between a session's turns")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per remote call")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_client_tls_arguments(p)
    p.set_defaults(handler=_traffic)
