"""Scenario routing: which business line (logistics, orders, payment, ...) answers this turn.

The tenant config lists scenarios with a ``match`` block and a ``priority``;
:func:`select_scenario` turns one customer turn plus its context (intent, text, channel, entry
path, user attributes, recent intents, the session's current scenario) into a
:class:`ScenarioChoice`. It is pure and deterministic: the same inputs give the same choice.

Rules
    *Conditions* (``channels``, ``user``): every one given must hold, else the scenario is
    out. A channel or user attribute the request does not carry fails the condition (a VIP
    desk must not open to someone whose membership is unknown). User values compare leniently
    across types: ``vip: true`` matches ``True``, ``"true"``, ``"1"`` and ``"yes"``, because
    channel metadata arrives as strings; a list on either side means "any of them".

    *Triggers* (``intents``, ``keywords``, ``recent_intents``, ``entry_paths``): any one fires
    the scenario; a scenario with no trigger at all is selected by its conditions alone.

    ``entry_paths`` is treated as a **trigger**, not as a condition as the schema docstring
    says: read as a condition, a customer asking "我的订单什么时候到" from the home page could
    never reach the logistics scenario of the demo tenant, whose entry paths name the tracking
    pages. The page a chat was opened from is a hint about the topic, not a gate.

Evidence
    Each matching scenario carries the strength of its best evidence (:class:`Evidence`):

    * ``STRONG``: the intent model names one of the scenario's intents with a confidence at or
      above the threshold; a scenario selected by its conditions alone (no triggers) also
      counts as strong, since its author asked for every such request;
    * ``CORROBORATED``: a low-confidence intent (at least :data:`WEAK_INTENT_FLOOR`) agrees
      with a keyword of the scenario;
    * ``MODERATE``: a keyword of the scenario occurs in the text, or the entry path matches;
    * ``WEAK``: a low-confidence intent alone (at least :data:`WEAK_INTENT_FLOOR`), or an
      intent seen earlier in the session (``recent_intents``).

Ranking (the tie-breaks, in order)
    stronger evidence; higher ``priority``; more specific keyword evidence (total length of
    the distinct keywords found: "什么时候到" says more than "订单"); the session's current
    scenario; the order of the scenarios in the config. Priority thus orders scenarios backed
    by equally strong evidence: the intent model is better evidence than a keyword that
    happens to occur in the message ("我要退货，快递怎么寄回" is a return, not a tracking
    question).

Staying on topic ("no irrelevant answers")
    When the session is in a scenario other than the fallback and that scenario's conditions
    still hold, only ``STRONG`` evidence for another scenario moves the session. A bare order
    number, a low-confidence intent, a passing keyword or both together ("订单号是 2024…"
    while the bot waits for an order number to track a parcel) keep the customer where the
    conversation is. With no matching scenario at all the session stays too; without a
    current scenario it goes to the fallback.

Keywords
    Matched in NFKC-folded, case-folded text, in every language (a Chinese customer may type
    "package", an English one "快递"), with the customer's language listed first. A keyword
    with Han characters matches as a substring (Chinese has no spaces; whitespace in the text
    is ignored); any other keyword matches whole words only, case-insensitively, with common
    inflections (``-s``, ``-es``, ``-d``, ``-ed``, ``-ing``, ``arrive`` → ``arriving``), so
    "return" matches "returned" but "pay" does not match "payment" or "repay".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

from kefu.config import Scenario, ScenarioMatch, TenantConfig
from kefu.node.nlu.language import is_han

__all__ = [
    "DEFAULT_INTENT_THRESHOLD",
    "WEAK_INTENT_FLOOR",
    "Evidence",
    "ScenarioChoice",
    "find_keywords",
    "intent_threshold",
    "select_scenario",
    "user_condition_holds",
]

#: Intent confidence at or above which the intent alone is strong evidence. The demo intent
#: model is calibrated (ECE ~0.03), so 0.6 means "right about 6 times in 10 or better".
DEFAULT_INTENT_THRESHOLD = 0.6
#: Below this an intent is noise (14 classes: uniform guessing is ~0.07) and is ignored.
WEAK_INTENT_FLOOR = 0.3

_TRUE = frozenset({"true", "1", "yes", "y", "on"})
_FALSE = frozenset({"false", "0", "no", "n", "off", ""})


class Evidence(IntEnum):
    """How strongly a turn points at a scenario (see the module docstring)."""

    NONE = 0
    WEAK = 1
    MODERATE = 2
    CORROBORATED = 3
    STRONG = 4


@dataclass(frozen=True, kw_only=True)
class ScenarioChoice:
    """The scenario for this turn, and why (``reason`` is for logs, never for customers).

    ``matched`` lists the evidence of the chosen scenario as ``kind:value`` strings
    (``intent:delivery_tracking``, ``keyword:快递``, ``channel:web``, ``user:vip``, ...).
    ``stayed`` is True when the session kept its current scenario although another one
    matched or nothing matched; ``fallback`` when the tenant's fallback scenario was chosen.
    """

    scenario_id: str
    reason: str
    matched: list[str] = field(default_factory=list)
    evidence: Evidence = Evidence.NONE
    stayed: bool = False
    fallback: bool = False


def intent_threshold(config: TenantConfig, scenario_id: str | None = None) -> float:
    """The session policy's ``intent_confidence_threshold`` for a scenario (unknown scenario:
    the default policy). Routing and the reply decision share this one source."""
    try:
        policy = config.policy_for(scenario_id)
    except KeyError:
        policy = config.session_policy.default
    return float(policy.intent_confidence_threshold)


# ------------------------------------------------------------------------------ matching


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _is_cjk_keyword(keyword: str) -> bool:
    return any(is_han(ch) for ch in keyword)


@lru_cache(maxsize=4096)
def _latin_pattern(keyword: str) -> re.Pattern[str] | None:
    words = _fold(keyword).split()
    if not words:
        return None
    head = [re.escape(w) for w in words[:-1]]
    last = words[-1]
    stems = [re.escape(last)]
    if len(last) > 3 and last.endswith("e"):
        stems.append(re.escape(last[:-1]) + "ing")  # arrive → arriving
    tail = "(?:" + "|".join(stems) + ")"
    body = r"\s+".join([*head, tail])
    return re.compile(rf"(?<![a-z0-9])(?:{body})(?:s|es|d|ed|ing)?(?![a-z0-9])")


@lru_cache(maxsize=8192)
def _matcher(keyword: str) -> tuple[str | None, re.Pattern[str] | None]:
    """(Chinese needle, Latin pattern) for a keyword, prepared once: routing runs every turn."""
    if not keyword.strip():
        return None, None
    if _is_cjk_keyword(keyword):
        return "".join(_fold(keyword).split()), None
    return None, _latin_pattern(keyword)


def find_keywords(keywords: Iterable[str], text: str) -> list[str]:
    """The keywords that occur in ``text`` (in the order given, without repeats)."""
    folded = _fold(text)
    squeezed = "".join(folded.split())
    found: list[str] = []
    seen: set[str] = set()
    for kw in keywords:
        if kw in seen:
            continue
        needle, rx = _matcher(kw)
        if (needle is not None and needle in squeezed) or (rx is not None and rx.search(folded)):
            found.append(kw)
            seen.add(kw)
    return found


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value) if value in (0, 1) else None
    if isinstance(value, str):
        v = value.strip().casefold()
        return True if v in _TRUE else False if v in _FALSE else None
    return None


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool):
        return _as_bool(actual) is expected
    if isinstance(expected, int | float):
        if isinstance(actual, bool):
            return False
        try:
            return float(actual) == float(expected)
        except (TypeError, ValueError):
            return False
    return str(actual).strip().casefold() == str(expected).strip().casefold()


def user_condition_holds(actual: Any, expected: Any) -> bool:
    """Whether a user attribute satisfies a ``match.user`` condition (lists mean any-of)."""
    actuals = list(actual) if isinstance(actual, list | tuple | set | frozenset) else [actual]
    expecteds = expected if isinstance(expected, list | tuple) else [expected]
    return any(_same(a, e) for a in actuals if a is not None for e in expecteds)


def _conditions(
    match: ScenarioMatch, channel: str | None, user: Mapping[str, Any]
) -> list[str] | None:
    """The satisfied conditions as evidence strings, or None when one fails."""
    out: list[str] = []
    if match.channels:
        if channel not in match.channels:
            return None
        out.append(f"channel:{channel}")
    for key, expected in sorted(match.user.items()):
        if key not in user or not user_condition_holds(user[key], expected):
            return None
        out.append(f"user:{key}")
    return out


def _path_only(entry_path: str | None) -> str:
    if not entry_path:
        return ""
    return entry_path.split("#", 1)[0].split("?", 1)[0].strip()


@dataclass(frozen=True, kw_only=True)
class _Candidate:
    scenario: Scenario
    index: int
    evidence: Evidence
    matched: tuple[str, ...]
    specificity: int  # total length of the distinct keywords found

    def key(self, current: str | None) -> tuple[int, int, int, int, int]:
        # Sorted ascending: the best candidate comes first.
        return (
            -int(self.evidence),
            -self.scenario.priority,
            -self.specificity,
            0 if self.scenario.id == current else 1,
            self.index,
        )


def _evaluate(
    index: int,
    s: Scenario,
    *,
    intent: str | None,
    confident: bool,
    weak: bool,
    text: str,
    lang: str,
    channel: str | None,
    path: str,
    user: Mapping[str, Any],
    recent: Sequence[str],
) -> _Candidate | None:
    m = s.match
    matched = _conditions(m, channel, user)
    if matched is None:
        return None
    evidence = Evidence.NONE
    intent_hit = intent is not None and intent in m.intents
    if intent_hit and confident:
        matched.append(f"intent:{intent}")
        evidence = Evidence.STRONG
    elif intent_hit and weak:
        matched.append(f"weak_intent:{intent}")
        evidence = Evidence.WEAK
    ordered = (*m.keywords.get(lang), *m.keywords.all())
    keywords = find_keywords(ordered, text)
    if keywords:
        matched += [f"keyword:{k}" for k in keywords]
        # A hesitant intent and a keyword of the same scenario corroborate each other.
        agreed = Evidence.CORROBORATED if intent_hit and weak else Evidence.MODERATE
        evidence = max(evidence, agreed)
    pattern = next((p for p in m.entry_paths if path and fnmatchcase(path, p)), None)
    if pattern is not None:
        matched.append(f"entry_path:{pattern}")
        evidence = max(evidence, Evidence.MODERATE)
    earlier = [i for i in m.recent_intents if i in recent]
    if earlier:
        matched += [f"recent_intent:{i}" for i in earlier]
        evidence = max(evidence, Evidence.WEAK)
    has_triggers = bool(m.intents or m.keywords.all() or m.recent_intents or m.entry_paths)
    if not has_triggers:
        if s.fallback and not matched:
            return None  # a rule-less fallback is the default, not a match
        evidence = Evidence.STRONG
    if evidence is Evidence.NONE:
        return None
    return _Candidate(
        scenario=s,
        index=index,
        evidence=evidence,
        matched=tuple(matched),
        specificity=sum(len(k) for k in keywords),
    )


def _describe(c: _Candidate) -> str:
    return f"{c.evidence.name.lower()} evidence [{', '.join(c.matched) or 'conditions'}]"


# ------------------------------------------------------------------------------- routing


def select_scenario(
    config: TenantConfig,
    *,
    intent: str | None,
    intent_confidence: float,
    text: str,
    lang: str,
    channel: str | None = None,
    entry_path: str | None = None,
    user_attributes: Mapping[str, Any] | None = None,
    recent_intents: Sequence[str] = (),
    current_scenario: str | None = None,
    threshold: float | None = None,
) -> ScenarioChoice:
    """Choose the scenario for one customer turn (rules: see the module docstring).

    ``intent_confidence`` is the intent model's probability for ``intent``; ``threshold``
    overrides :func:`intent_threshold` of the current scenario's policy. ``recent_intents``
    are the session's earlier intents, ``current_scenario`` its scenario so far (an id the
    config no longer has, after a hot reload, counts as none).
    """
    ids = {s.id for s in config.scenarios}
    current_id = current_scenario if current_scenario in ids else None
    limit = intent_threshold(config, current_id) if threshold is None else threshold
    confident = intent is not None and intent_confidence >= limit
    weak = intent is not None and WEAK_INTENT_FLOOR <= intent_confidence < limit
    user = dict(user_attributes or {})
    path = _path_only(entry_path)

    candidates: list[_Candidate] = []
    for i, s in enumerate(config.scenarios):
        c = _evaluate(
            i,
            s,
            intent=intent,
            confident=confident,
            weak=weak,
            text=text,
            lang=lang,
            channel=channel,
            path=path,
            user=user,
            recent=recent_intents,
        )
        if c is not None:
            candidates.append(c)
    candidates.sort(key=lambda c: c.key(current_id))

    fallback = config.fallback_scenario
    current = config.scenario(current_id) if current_id is not None else None
    # Only an ongoing, still-permitted business line is worth staying on.
    can_stay = (
        current is not None
        and not current.fallback
        and _conditions(current.match, channel, user) is not None
    )
    if not candidates:
        if can_stay and current is not None:
            return ScenarioChoice(
                scenario_id=current.id,
                reason=f"stayed on {current.id}: no scenario matched this turn",
                stayed=True,
            )
        return ScenarioChoice(
            scenario_id=fallback.id,
            reason=f"fallback {fallback.id}: no scenario matched",
            fallback=True,
        )

    best = candidates[0]
    if can_stay and current is not None and best.scenario.id != current.id:
        if best.evidence < Evidence.STRONG:
            own = next((c for c in candidates if c.scenario.id == current.id), None)
            return ScenarioChoice(
                scenario_id=current.id,
                reason=(
                    f"stayed on {current.id}: {best.scenario.id} has only {_describe(best)}, "
                    "not enough to leave the ongoing topic"
                ),
                matched=list(own.matched) if own else [],
                evidence=own.evidence if own else Evidence.NONE,
                stayed=True,
            )
        verb = f"switched from {current.id} to"
    elif best.scenario.id == current_id:
        verb = "continued"
    else:
        verb = "selected"
    runner_up = next((c for c in candidates[1:]), None)
    beat = f"; ahead of {runner_up.scenario.id} ({_describe(runner_up)})" if runner_up else ""
    return ScenarioChoice(
        scenario_id=best.scenario.id,
        reason=(
            f"{verb} {best.scenario.id}: {_describe(best)}, priority {best.scenario.priority}{beat}"
        ),
        matched=list(best.matched),
        evidence=best.evidence,
        fallback=best.scenario.fallback,
    )
