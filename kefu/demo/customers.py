"""Simulated customers, the pure part of ``kefu demo traffic``: who says what, and how they
react to the bot.

A **session script** is 2–4 labelled utterances in one language (zh or en), drawn with a seeded
RNG from the demo tenant's labelled data (``models/data/demo_shop_intent/dev.jsonl``, the
held-out examples the intent model was not trained on). The traffic driver
(:mod:`kefu.demo.traffic`) sends them as the turns of one conversation and records, per turn,
whether the bot **understood** (predicted intent = the utterance's label).

The **customer model** then decides the feedback a customer (or the agent reviewing the
conversation) gives, the way customers do:

* a **corrected intent** for every misunderstood turn with probability ``correct_wrong``
  (the customer picks the right topic from the pick list), and for a correctly understood
  turn with probability ``review_right`` (an agent's review sample confirms it) — so "wrong
  among corrections" is a rate both arms are measured on the same way;
* a **1–5 rating** for a share ``rated_share`` of sessions, drawn from a happy distribution
  when every turn was understood and an unhappy one when none was (mixed in proportion);
* **resolved** yes/no, likelier when the bot understood and the session was not handed off.

Plus the run's :class:`Summary` (sessions, turns, errors, accuracy, latency percentiles) and
the **overload policy**: ``shed`` (a session due while ``concurrency`` sessions are in flight
is not started and counted as shed: the offered rate stays honest) or ``wait`` (it waits for a
free slot: nothing is dropped, the achieved rate falls behind).

Pure: no I/O.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "OVERLOAD_POLICIES",
    "CustomerModel",
    "Overload",
    "SessionFeedback",
    "SessionResult",
    "SessionScript",
    "Summary",
    "TurnResult",
    "Utterance",
    "admit",
    "feedback_for",
    "percentile",
    "rating_for",
    "script_session",
]

Overload = Literal["shed", "wait"]
OVERLOAD_POLICIES: tuple[Overload, ...] = ("shed", "wait")

#: P(1★) … P(5★) of a customer whose every turn was understood / none was.
HAPPY = (0.01, 0.02, 0.07, 0.30, 0.60)
UNHAPPY = (0.45, 0.30, 0.15, 0.07, 0.03)


@dataclass(frozen=True)
class Utterance:
    text: str
    intent: str
    lang: str  # "zh" | "en"


@dataclass(frozen=True)
class SessionScript:
    lang: str
    turns: tuple[Utterance, ...]


def script_session(
    by_lang: Mapping[str, Sequence[Utterance]], rng: random.Random, *, min_turns: int = 2,
    max_turns: int = 4,
) -> SessionScript:  # fmt: skip
    """One conversation: a language (zh or en, as many as the data has of each), then
    ``min_turns``–``max_turns`` utterances of it."""
    langs = sorted(lang for lang, rows in by_lang.items() if rows)
    if not langs:
        raise ValueError("no utterances to replay / 没有可回放的语句")
    lang = rng.choices(langs, weights=[len(by_lang[x]) for x in langs])[0]
    n = rng.randint(min_turns, max_turns)
    return SessionScript(lang, tuple(rng.choice(by_lang[lang]) for _ in range(n)))


@dataclass(frozen=True)
class CustomerModel:
    """How customers react (probabilities; see the module text)."""

    correct_wrong: float = 1.0
    review_right: float = 0.2
    rated_share: float = 0.5
    resolved_share: float = 0.6  # sessions where the customer says whether it was solved
    resolved_if_understood: float = 0.85
    resolved_if_not: float = 0.25

    def __post_init__(self) -> None:
        for name in ("correct_wrong", "review_right", "rated_share", "resolved_share",
                     "resolved_if_understood", "resolved_if_not"):  # fmt: skip
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] / {name} 须在 [0, 1] 之间")


@dataclass(frozen=True)
class TurnResult:
    seq: int  # the bot turn's seq (ConverseReply.turn_seq)
    expected: str
    predicted: str
    latency_ms: float
    model_version: str = ""  # the intent model that answered ("name@version")
    handoff: bool = False
    at: float = 0.0  # wall-clock time the reply arrived

    @property
    def understood(self) -> bool:
        return self.expected == self.predicted


@dataclass(frozen=True)
class SessionFeedback:
    corrections: tuple[tuple[int, str], ...] = ()  # (turn seq, the right intent)
    rating: int = 0  # 0: not rated
    resolved: bool | None = None


def rating_for(understood_share: float, rng: random.Random) -> int:
    """1–5 stars: the happy distribution weighted by the share of turns understood, the
    unhappy one by the rest."""
    u = min(max(understood_share, 0.0), 1.0)
    probs = [u * h + (1 - u) * s for h, s in zip(HAPPY, UNHAPPY, strict=True)]
    return rng.choices(range(1, 6), weights=probs)[0]


def feedback_for(
    turns: Sequence[TurnResult], rng: random.Random, model: CustomerModel
) -> SessionFeedback:
    """The feedback given on one finished session (no turns: none)."""
    if not turns:
        return SessionFeedback()
    corrections = []
    for t in turns:
        p = model.review_right if t.understood else model.correct_wrong
        if rng.random() < p:
            corrections.append((t.seq, t.expected))
    share = sum(t.understood for t in turns) / len(turns)
    rating = rating_for(share, rng) if rng.random() < model.rated_share else 0
    resolved: bool | None = None
    if rng.random() < model.resolved_share:
        handed = any(t.handoff for t in turns)
        p = model.resolved_if_understood if share == 1.0 and not handed else model.resolved_if_not
        resolved = rng.random() < p
    return SessionFeedback(tuple(corrections), rating, resolved)


def admit(in_flight: int, limit: int, policy: Overload) -> Literal["start", "shed", "wait"]:
    """What to do with a session that is due now."""
    if in_flight < limit:
        return "start"
    return "shed" if policy == "shed" else "wait"


@dataclass
class SessionResult:
    node: str
    session_id: str = ""
    turns: list[TurnResult] = field(default_factory=list)
    errors: int = 0
    error: str = ""  # the failed call's status and details
    feedback: SessionFeedback = field(default_factory=SessionFeedback)
    started_at: float = 0.0

    @property
    def versions(self) -> set[str]:
        return {t.model_version for t in self.turns if t.model_version}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, math.ceil(q / 100 * len(s)) - 1)
    return s[min(k, len(s) - 1)]


@dataclass
class Summary:
    """What a run did (the printed summary; counts, never text)."""

    sessions: int = 0
    shed: int = 0
    turns: int = 0
    errors: int = 0
    understood: int = 0
    handoffs: int = 0
    corrections: int = 0
    rated: int = 0
    rating_sum: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, s: SessionResult) -> None:
        self.sessions += 1
        self.turns += len(s.turns)
        self.errors += s.errors
        self.understood += sum(t.understood for t in s.turns)
        self.handoffs += any(t.handoff for t in s.turns)
        self.corrections += len(s.feedback.corrections)
        if s.feedback.rating:
            self.rated += 1
            self.rating_sum += s.feedback.rating
        self.latencies_ms.extend(t.latency_ms for t in s.turns)

    @property
    def accuracy(self) -> float:
        return self.understood / self.turns if self.turns else 0.0

    def to_json(self) -> dict[str, float | int]:
        return {
            "sessions": self.sessions,
            "shed": self.shed,
            "turns": self.turns,
            "errors": self.errors,
            "accuracy": round(self.accuracy, 4),
            "handoffs": self.handoffs,
            "corrections": self.corrections,
            "rated": self.rated,
            "mean_rating": round(self.rating_sum / self.rated, 3) if self.rated else 0.0,
            "p50_ms": round(percentile(self.latencies_ms, 50), 2),
            "p99_ms": round(percentile(self.latencies_ms, 99), 2),
            "seconds": round(self.seconds, 2),
            "sessions_per_s": round(self.sessions / self.seconds, 2) if self.seconds else 0.0,
        }

    def lines(self) -> list[str]:
        j = self.to_json()
        return [
            f"sessions / 会话: {j['sessions']} in {j['seconds']} s ({j['sessions_per_s']}/s),"
            f" shed / 过载丢弃: {j['shed']}",
            f"turns / 轮次: {j['turns']}, errors / 错误: {j['errors']},"
            f" hand-offs / 转人工: {j['handoffs']}",
            f"intent accuracy / 意图准确率: {self.accuracy:.1%},"
            f" corrections / 意图纠正: {j['corrections']},"
            f" rated / 评分会话: {j['rated']} (mean / 平均 {j['mean_rating']})",
            f"latency / 延迟: p50 {j['p50_ms']} ms, p99 {j['p99_ms']} ms",
        ]
