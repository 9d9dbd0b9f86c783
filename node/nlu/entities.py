"""Entity extraction for customer messages: order and tracking numbers, phones, emails, ID
numbers, amounts, dates, and tenant lookup tables (product names, carriers, …).

Regexes find candidates, a named **normaliser** turns each one into a canonical value (or
rejects it: 2月30日 is not a date), and overlaps are resolved by **priority, then longest
span, then leftmost**. So a 16-digit order number is never also a phone number, a phone
inside a tracking number or an email address is not extracted, and "订单号13812345678" is an
order number because the cue says so.

Offsets are into the caller's original text: full-width digits and letters ("１３８…") are
folded to ASCII one character at a time for matching, which keeps every offset valid.

Tenants override the built-in patterns per entity type (:func:`merge_patterns`) or replace
them outright; a pattern's span is its ``(?P<value>…)`` group when it has one, so a cue such
as "订单号" can anchor a match without being part of the entity.

The values are read by :mod:`kefu.node.nlu.entity_values`, the patterns live in
:mod:`kefu.node.nlu.entity_patterns`; this module holds the extractor and re-exports both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from kefu.errors import ConfigError
from kefu.node.nlu.entity_patterns import (
    _L,
    _R,
    DEFAULT_PATTERNS,
    EntityPattern,
    LookupTable,
    merge_patterns,
)
from kefu.node.nlu.entity_values import (
    _NO_FLAGS,
    NORMALISERS,
    Normaliser,
    Normalized,
    fold_width,
    id_number_checksum_ok,
    parse_amount,
    parse_date,
    parse_zh_number,
)

__all__ = [
    "DEFAULT_PATTERNS",
    "NORMALISERS",
    "Entity",
    "EntityExtractor",
    "EntityPattern",
    "LookupTable",
    "Normaliser",
    "Normalized",
    "fold_width",
    "id_number_checksum_ok",
    "merge_patterns",
    "parse_amount",
    "parse_date",
    "parse_zh_number",
]


@dataclass(frozen=True, kw_only=True)
class Entity:
    """One extracted entity. ``value`` is ``text[start:end]`` exactly as the customer typed it.

    ``flags`` qualify the value: ``partial`` + ``suffix``/``prefix`` (only some digits of an
    order number were given), ``masked`` (138****5678), ``relative`` (a date such as 昨天),
    ``year_inferred`` (a date without a year), ``invalid_checksum`` (an ID number whose check
    digit is wrong: probably a typo, worth asking again).
    """

    type: str
    value: str
    normalized: Normalized
    start: int
    end: int
    flags: frozenset[str] = _NO_FLAGS
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "value": self.value,
            "normalized": self.normalized,
            "start": self.start,
            "end": self.end,
            "flags": sorted(self.flags),
            "source": self.source,
        }


@dataclass(frozen=True)
class _Compiled:
    type: str
    rx: re.Pattern[str]
    langs: frozenset[str]
    priority: int
    source: str
    norm: Normaliser | None = None
    canon: Mapping[str, str] = field(default_factory=dict)  # lookup: lowercase synonym → key


class EntityExtractor:
    """Extract entities with the given patterns (``None`` = :data:`DEFAULT_PATTERNS`) and
    lookup tables. Compiles everything once; ``extract`` is safe to call from many threads.

    Raises :class:`ConfigError` for an invalid regex, an unknown normaliser or a synonym that
    maps to two different values, naming the offending pattern or table.
    """

    def __init__(
        self,
        patterns: Sequence[EntityPattern] | None = None,
        lookups: Sequence[LookupTable] = (),
        *,
        normalisers: Mapping[str, Normaliser] | None = None,
    ):
        norms = dict(NORMALISERS) | dict(normalisers or {})
        pats = DEFAULT_PATTERNS if patterns is None else tuple(patterns)
        self.patterns = pats
        self.lookups = tuple(lookups)
        self._compiled: list[_Compiled] = []
        for i, p in enumerate(pats):
            where = f"entities.patterns[{i}]"
            if p.normaliser not in norms:
                raise ConfigError(
                    f"unknown normaliser {p.normaliser!r} (choose from {', '.join(sorted(norms))})",
                    field=f"{where}.normaliser",
                )
            try:
                rx = re.compile(p.regex, re.IGNORECASE if p.ignore_case else 0)
            except re.error as exc:
                raise ConfigError(f"invalid regex: {exc}", field=f"{where}.regex") from exc
            self._compiled.append(
                _Compiled(
                    type=p.type,
                    rx=rx,
                    langs=frozenset(p.langs),
                    priority=p.priority,
                    source=p.name or p.type,
                    norm=norms[p.normaliser],
                )
            )
        for i, t in enumerate(self.lookups):
            self._compiled.append(self._compile_lookup(t, f"entities.lookups[{i}]"))

    @staticmethod
    def _compile_lookup(table: LookupTable, where: str) -> _Compiled:
        canon: dict[str, str] = {}
        for key, synonyms in table.values.items():
            for syn in (key, *synonyms):
                folded = " ".join(fold_width(syn).lower().split())
                if not folded:
                    continue
                if canon.get(folded, key) != key:
                    raise ConfigError(
                        f"synonym {syn!r} maps to both {canon[folded]!r} and {key!r}",
                        field=f"{where}.values",
                    )
                canon[folded] = key
        alts = []
        for syn in sorted(canon, key=len, reverse=True):  # longest first: "SF Express" > "SF"
            body = r"\s+".join(re.escape(w) for w in syn.split())
            left = _L if syn[0].isascii() and syn[0].isalnum() else ""
            right = _R if syn[-1].isascii() and syn[-1].isalnum() else ""
            alts.append(f"{left}{body}{right}")
        rx = re.compile("|".join(alts) or r"(?!x)x", re.IGNORECASE)
        return _Compiled(
            type=table.type,
            rx=rx,
            langs=frozenset(table.langs),
            priority=table.priority,
            source=f"lookup:{table.type}",
            canon=canon,
        )

    def extract(
        self, text: str, *, lang: str | None = None, today: date | None = None
    ) -> list[Entity]:
        """Entities in ``text``, left to right, without overlaps.

        ``lang`` ("zh"/"en") skips patterns meant only for the other language; ``None`` or
        "und" runs them all. ``today`` anchors relative dates (昨天, last Tuesday, 11月20号).
        """
        today = today or date.today()
        folded = fold_width(text)
        cands: list[tuple[int, Entity]] = []
        for c in self._compiled:
            if lang in ("zh", "en") and c.langs and lang not in c.langs:
                continue
            for m in c.rx.finditer(folded):
                span = m.span("value") if "value" in c.rx.groupindex else m.span()
                start, end = span
                if start < 0 or end <= start:
                    continue
                raw = folded[start:end]
                result: tuple[Normalized, frozenset[str]] | None
                if c.norm is None:
                    result = c.canon.get(" ".join(raw.lower().split()), raw), _NO_FLAGS
                else:
                    result = c.norm(raw, today)
                if result is None:
                    continue
                entity = Entity(
                    type=c.type,
                    value=text[start:end],
                    normalized=result[0],
                    start=start,
                    end=end,
                    flags=result[1],
                    source=c.source,
                )
                cands.append((c.priority, entity))
        return _resolve(cands)


def _resolve(cands: list[tuple[int, Entity]]) -> list[Entity]:
    """Greedy: highest priority, then longest span, then leftmost wins; losers that overlap
    a winner are dropped."""
    cands.sort(key=lambda pe: (-pe[0], -(pe[1].end - pe[1].start), pe[1].start))
    taken: list[Entity] = []
    for _, e in cands:
        if all(e.end <= t.start or e.start >= t.end for t in taken):
            taken.append(e)
    taken.sort(key=lambda e: e.start)
    return taken
