"""Entity patterns: the regex for each entity type, the built-in defaults (order and tracking
numbers, emails, ID numbers, phones, amounts, dates), tenant lookup tables, and how a
tenant's patterns override the defaults (:func:`merge_patterns`).

A pattern's span is its ``(?P<value>…)`` group when it has one, so a cue such as "订单号"
can anchor a match without being part of the entity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kefu.node.nlu.entity_values import (
    _D_AGO,
    _D_EN_DM,
    _D_EN_MD,
    _D_EN_WEEK,
    _D_IN,
    _D_ZH,
    _D_ZH_WEEK,
    _EN_DAY_WORDS,
    _YEAR,
    _ZH_DAY_WORDS,
    _ZH_NUM_CHARS,
)

__all__ = ["DEFAULT_PATTERNS", "EntityPattern", "LookupTable", "merge_patterns"]


@dataclass(frozen=True, kw_only=True)
class EntityPattern:
    """A regex for one entity type. Higher ``priority`` wins an overlap; ``langs`` limits the
    pattern to messages detected as those languages when the caller passes ``lang``."""

    type: str
    regex: str
    langs: tuple[str, ...] = ("zh", "en")
    normaliser: str = "text"
    priority: int = 50
    name: str = ""
    ignore_case: bool = True


@dataclass(frozen=True, kw_only=True)
class LookupTable:
    """Known values of a type, each with synonyms: ``{"SF": ["顺丰", "SF Express"]}``.

    A match is normalised to its canonical key. Latin synonyms match whole words only and
    ignore case; Chinese synonyms match anywhere (Chinese has no spaces between words).
    """

    type: str
    values: Mapping[str, Sequence[str]]
    langs: tuple[str, ...] = ("zh", "en")
    priority: int = 30


# --------------------------------------------------------------------------- default patterns

_L = r"(?<![0-9A-Za-z])"  # ASCII boundaries: Python's \b treats Han characters as letters
_R = r"(?![0-9A-Za-z])"
_ORDER_CODE = r"(?:SO|ORD|PO|DD)-?\d{4,20}"
_ZH_NUM_OR_DIGIT = r"[0-9一二三四五六七八九十两]{1,2}"
_ZH_ORDER_CUE = r"订单(?:号码?|编号)?"
_EN_ORDER_CUE = r"order\s*(?:number|num|no\.?|id|#)?"
_EN_DIGITS = r"(?:\d|three|four|five|six|seven|eight)"


def _p(
    type_: str, name: str, regex: str, norm: str, prio: int, langs: str = "zh en"
) -> EntityPattern:
    langs_t = tuple(langs.split())
    return EntityPattern(
        type=type_, name=name, regex=regex, normaliser=norm, priority=prio, langs=langs_t
    )


DEFAULT_PATTERNS: tuple[EntityPattern, ...] = (
    # Order numbers: a cue ("订单号", "order #") makes any 5+ digit run an order number.
    _p("order_number", "order_partial_zh",
       rf"{_ZH_ORDER_CUE}的?\s*(?:最后|末尾|后|尾|末)\s*(?:{_ZH_NUM_OR_DIGIT}\s*位)?(?:数字|数|号)?"
       r"\s*(?:是|为|:)?\s*(?P<value>\d{3,8})(?!\d)", "order_suffix", 95, "zh"),
    _p("order_number", "order_partial_zh_prefix",
       rf"{_ZH_ORDER_CUE}的?\s*前\s*(?:{_ZH_NUM_OR_DIGIT}\s*位)(?:数字|数)?"
       r"\s*(?:是|为|:)?\s*(?P<value>\d{3,8})(?!\d)", "order_prefix", 95, "zh"),
    _p("order_number", "order_partial_zh_after",
       rf"(?<!手机)(?<!电话)(?:尾号|后\s*{_ZH_NUM_OR_DIGIT}\s*位)(?:是|为)?\s*(?P<value>\d{{3,8}})"
       r"\s*的\s*(?:那个|这个|那笔|这笔)?\s*订单", "order_suffix", 95, "zh"),
    _p("order_number", "order_partial_en",
       rf"{_L}(?:{_EN_ORDER_CUE}\s*(?:that\s+)?(?:ending|ends)\s+(?:in|with)"
       rf"|last\s+{_EN_DIGITS}\s+digits?\s+of\s+(?:my|the)\s+order(?:\s+(?:number|no\.?))?"
       r"(?:\s+(?:is|are))?)\s*:?\s*(?P<value>\d{3,8})(?!\d)", "order_suffix", 95, "en"),
    _p("order_number", "order_cue",
       rf"(?:{_ZH_ORDER_CUE}|{_L}{_EN_ORDER_CUE})\s*(?:是|为|:|#)?\s*"
       rf"(?P<value>{_ORDER_CODE}|\d{{5,24}}){_R}", "order_number", 90),
    # 16 digits starting with a date (20241125…), the demo shop's format.
    _p("order_number", "order_dated",
       rf"{_L}20\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{{8}}{_R}", "order_number", 70),
    _p("order_number", "order_code", rf"{_L}{_ORDER_CODE}{_R}", "order_number", 70),
    # Tracking numbers: carrier prefix + digits, or any number after a tracking cue.
    _p("tracking_number", "tracking_cue",
       r"(?:快递单号|运单号|物流单号|快递号|tracking\s*(?:number|no\.?|id|#)?)\s*(?:是|为|:|#)?"
       rf"\s*(?P<value>[A-Za-z]{{0,4}}\d{{8,20}}){_R}", "tracking_number", 88),
    _p("tracking_number", "tracking_carrier",
       rf"{_L}(?:SF|YT|JD|ZTO|YD|JT)\d{{10,15}}{_R}", "tracking_number", 85),
    _p("email", "email",
       r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![A-Za-z0-9])",
       "email", 80),
    _p("id_number", "id_number_cn",
       rf"{_L}[1-9]\d{{5}}(?:18|19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{{3}}[0-9Xx]{_R}",
       "id_number", 75),
    _p("phone", "phone_cn_mobile",
       rf"{_L}(?:(?:\+|00)?86[\s\-]?)?1[3-9]\d(?:[\s\-]?\d{{4}}){{2}}{_R}", "phone", 60),
    _p("phone", "phone_cn_masked",
       rf"{_L}(?:(?:\+|00)?86[\s\-]?)?1[3-9]\d[\s\-]?(?:\*{{4}}|[xX]{{4}})[\s\-]?\d{{4}}{_R}",
       "phone", 60),
    # Amounts.
    _p("amount", "amount_prefix",
       r"(?:(?:US|HK)?\$|¥|€|(?<![A-Za-z])(?:RMB|CNY|USD|HKD|EUR)\s?)\s?\d[\d,]*(?:\.\d+)?"
       r"(?:\s?万)?(?!\d)", "amount", 50),
    _p("amount", "amount_suffix",
       r"(?<![0-9A-Za-z.,])\d[\d,]*(?:\.\d+)?\s?(?:万\s?)?"
       r"(?:(?:元|块)钱?(?:[1-9](?:毛|角)?)?|人民币|美元|美金|欧元|港币"
       rf"|\s?(?:RMB|CNY|USD|HKD|EUR|dollars?|bucks|yuan){_R})", "amount", 50),
    _p("amount", "amount_zh_numerals",
       rf"(?<![{_ZH_NUM_CHARS}])[{_ZH_NUM_CHARS}]+\s*(?:块|元)钱?(?:[一二两三四五六七八九](?:毛|角)?)?",
       "amount", 50, "zh"),
    # Dates.
    _p("date", "date_iso", rf"(?<![0-9]){_YEAR}[-/.]\d{{1,2}}[-/.]\d{{1,2}}(?![0-9])", "date", 40),
    _p("date", "date_zh", _D_ZH.pattern, "date", 40, "zh"),
    _p("date", "date_zh_words", "|".join(sorted(_ZH_DAY_WORDS, key=len, reverse=True)),
       "date", 40, "zh"),
    _p("date", "date_zh_week", _D_ZH_WEEK.pattern, "date", 40, "zh"),
    # Start only at the beginning of a numeral run: keeps a long run linear, not quadratic.
    _p("date", "date_ago", rf"{_L}(?<![{_ZH_NUM_CHARS}]){_D_AGO.pattern}", "date", 40),
    _p("date", "date_in_days", rf"{_L}{_D_IN.pattern}{_R}", "date", 40, "en"),
    # "may 2 hours ago" is not May 2nd.
    _p("date", "date_en_md",
       rf"{_L}{_D_EN_MD.pattern}{_R}(?!\s+(?:hours?|days?|weeks?|months?|years?|minutes?|items?"
       r"|pieces?|pcs|times?|of)\b)", "date", 40, "en"),
    _p("date", "date_en_dm", rf"{_L}{_D_EN_DM.pattern}{_R}", "date", 40, "en"),
    _p("date", "date_en_words",
       rf"{_L}(?:{'|'.join(sorted(_EN_DAY_WORDS, key=len, reverse=True))}){_R}", "date", 40, "en"),
    _p("date", "date_en_week", rf"{_L}{_D_EN_WEEK.pattern}{_R}", "date", 40, "en"),
)  # fmt: skip


def merge_patterns(
    overrides: Iterable[EntityPattern], defaults: Iterable[EntityPattern] = DEFAULT_PATTERNS
) -> list[EntityPattern]:
    """A tenant's patterns replace the defaults **of the same type**; other defaults stay."""
    over = list(overrides)
    replaced = {p.type for p in over}
    return [p for p in defaults if p.type not in replaced] + over
