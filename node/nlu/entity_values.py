"""Reading entity values: Chinese and English numerals, amounts of money, dates (absolute and
relative to today), full-width folding, and the named **normalisers** that turn a matched
candidate into its canonical value (or reject it: 2月30日 is not a date).

The extractor (:mod:`kefu.node.nlu.entities`) finds candidates with the patterns of
:mod:`kefu.node.nlu.entity_patterns` and calls a normaliser from :data:`NORMALISERS` on each.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation

__all__ = [
    "NORMALISERS",
    "Normaliser",
    "Normalized",
    "fold_width",
    "id_number_checksum_ok",
    "parse_amount",
    "parse_date",
    "parse_zh_number",
]

Normalized = str | dict[str, str]
#: (matched value text, today) → (normalized, flags), or None to reject the candidate.
Normaliser = Callable[[str, date], tuple[Normalized, frozenset[str]] | None]

_NO_FLAGS: frozenset[str] = frozenset()


# --------------------------------------------------------------------------- numbers


_ZH_DIGITS = {
    "零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4,
    "五": 5, "六": 6, "七": 7, "八": 8, "九": 9,
}  # fmt: skip
_ZH_DIGITS.update({str(i): i for i in range(10)})
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000}
_ZH_BIG = {"万": 10_000, "亿": 100_000_000}
_ZH_NUM_CHARS = "零〇一二两三四五六七八九十百千万亿"


def parse_zh_number(s: str) -> int | None:
    """Chinese numerals to an int, including colloquial forms: 两百 → 200, 十五 → 15,
    一百零五 → 105, 一千五 → 1500, 两百五 → 250, 三万五 → 35000, 3千 → 3000."""
    s = s.strip()
    if not s or any(ch not in _ZH_DIGITS and ch not in _ZH_UNITS and ch not in _ZH_BIG for ch in s):
        return None
    total = section = 0
    num: int | None = None
    last_unit = 1  # the unit just before a trailing digit ("一千五": 千)
    for ch in s:
        if ch in _ZH_DIGITS:
            if num is not None and ch not in "零〇":
                return None  # two digits in a row ("一二") is not a number
            num = _ZH_DIGITS[ch]
            if ch in "零〇":
                last_unit = 1
                num = None
        elif ch in _ZH_UNITS:
            unit = _ZH_UNITS[ch]
            section += (1 if num is None else num) * unit  # 十五: an implicit 一
            num = None
            last_unit = unit
        else:
            big = _ZH_BIG[ch]
            section += num or 0
            total += (section or 1) * big
            section, num = 0, None
            last_unit = big
    if num is not None:
        # A digit right after 百/千/万 is colloquially the next-lower unit (一千五 = 1500).
        section += num * (last_unit // 10 if last_unit >= 100 else 1)
    return total + section


_EN_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip


def _int_of(s: str) -> int | None:
    s = s.strip().lower()
    if s.isdigit():
        return int(s)
    if s in _EN_NUMBERS:
        return _EN_NUMBERS[s]
    return parse_zh_number(s)


# --------------------------------------------------------------------------- amounts

_CURRENCY_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Checked in order: 美元 contains 元, HK$ contains $.
    ("HKD", ("hk$", "hkd", "港币", "港元")),
    ("USD", ("us$", "usd", "dollar", "buck", "美元", "美金", "$")),
    ("EUR", ("eur", "€", "欧元")),
    ("CNY", ("¥", "rmb", "cny", "yuan", "人民币", "元", "块", "毛", "角")),
)
_ARABIC = re.compile(r"\d[\d,]*(?:\.\d+)?")
_ZH_COLLOQUIAL = re.compile(
    rf"(?P<int>[{_ZH_NUM_CHARS}0-9]+)\s*(?:块|元)钱?"
    rf"(?:(?P<jiao>[一二两三四五六七八九1-9])\s*(?:毛|角)?)?(?:钱)?$"
)
_CENT = Decimal("0.01")


def parse_amount(text: str) -> dict[str, str] | None:
    """ "¥299", "59.9元", "$45.20", "RMB 100", "1.5万元", "两百块", "九块九" →
    ``{"currency": "CNY", "value": "299.00"}``; None when no amount can be read."""
    low = fold_width(text).lower().strip()
    currency = next((c for c, marks in _CURRENCY_MARKERS if any(m in low for m in marks)), None)
    if currency is None:
        return None
    value: Decimal | None = None
    m = _ARABIC.search(low)
    if m:
        try:
            value = Decimal(m.group().replace(",", ""))
        except InvalidOperation:
            return None
        if "万" in low[m.end() :]:
            value *= 10_000
        tail = re.search(r"(?:块|元)([1-9])(?:毛|角)?$", low[m.end() :])
        if tail and "." not in m.group():
            value += Decimal(tail.group(1)) / 10  # 9块9
    else:
        zm = _ZH_COLLOQUIAL.search(low)
        if not zm:
            return None
        whole = parse_zh_number(zm.group("int"))
        if whole is None:
            return None
        bare = not any(u in zm.group("int") for u in "十百千万亿")
        if bare and not zm.group("jiao") and "钱" not in low and "元" not in low:
            return None  # 两块 is as likely two pieces as two yuan
        value = Decimal(whole)
        if zm.group("jiao"):
            value += Decimal(_ZH_DIGITS[zm.group("jiao")]) / 10
    return {"currency": currency, "value": str(value.quantize(_CENT))}


# --------------------------------------------------------------------------- dates

_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
_MONTH_RE = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_WEEKDAYS_EN = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY_ZH = {"一": 0, "二": 1, "三": 2, "四": 3, "五": 4, "六": 5, "日": 6, "天": 6}
_WEEKDAY_ZH.update({str(i + 1): i for i in range(7)})
_ZH_WEEK_SHIFT = {"上上": -2, "上": -1, "这": 0, "本": 0, "下": 1, "下下": 2, "": 0}
_ZH_DAY_WORDS = {
    "大前天": -3, "前天": -2, "昨天": -1, "昨日": -1, "今天": 0, "今日": 0,
    "明天": 1, "明日": 1, "后天": 2, "大后天": 3,
}  # fmt: skip
_EN_DAY_WORDS = {
    "the day before yesterday": -2, "day before yesterday": -2, "yesterday": -1,
    "today": 0, "tonight": 0, "tomorrow": 1, "the day after tomorrow": 2,
    "day after tomorrow": 2,
}  # fmt: skip
_ZH_MONTH = r"(?:1[0-2]|0?[1-9]|十[一二]?|[一二三四五六七八九])"
_ZH_DAY = r"(?:3[01]|[12]\d|0?[1-9]|三十一?|[二]?十[一二三四五六七八九]?|[一二三四五六七八九])"
_ORD = r"(?:st|nd|rd|th)?"
_YEAR = r"(?:19|20)\d{2}"

_D_ISO = re.compile(rf"(?P<y>{_YEAR})[-/.](?P<m>\d{{1,2}})[-/.](?P<d>\d{{1,2}})")
_D_ZH = re.compile(
    rf"(?:(?P<y>{_YEAR})\s*年\s*)?(?P<m>{_ZH_MONTH})\s*月\s*(?P<d>{_ZH_DAY})\s*[日号]"
)
_D_EN_MD = re.compile(rf"(?P<mon>{_MONTH_RE})\.?\s+(?P<d>\d{{1,2}}){_ORD}(?:,?\s*(?P<y>{_YEAR}))?")
_D_EN_DM = re.compile(
    rf"(?P<d>\d{{1,2}}){_ORD}\s+(?:of\s+)?(?P<mon>{_MONTH_RE})\.?(?:,?\s*(?P<y>{_YEAR}))?"
)
_D_ZH_WEEK = re.compile(
    r"(?P<shift>上上|上|这|本|下下|下)?\s*个?\s*(?:周|星期|礼拜)(?P<wd>[一二三四五六日天1-7])"
)
_D_EN_WEEK = re.compile(
    rf"(?:(?P<mod>last|this|next|coming|on)\s+)?(?P<wd>{'|'.join(_WEEKDAYS_EN)})"
)
_D_AGO = re.compile(
    rf"(?P<n>\d{{1,3}}|[{_ZH_NUM_CHARS}]+|a|an|one|two|three|four|five|six|seven|eight|nine|ten)"
    r"\s*(?:个)?\s*(?P<unit>天|days?|weeks?|周|星期|个?礼拜)\s*(?P<dir>前|以前|之前|后|以后|之后|ago)"
)
_D_IN = re.compile(r"in\s+(?P<n>\d{1,3}|a|an|one|two|three|four|five|six|seven|eight|nine|ten)"
                   r"\s+(?P<unit>days?|weeks?)")  # fmt: skip


def _nearest(month: int, day: int, today: date) -> date | None:
    """The date with this month/day closest to ``today`` (a year without a year is ambiguous;
    customers talk about the recent past and the near future)."""
    best: date | None = None
    for year in (today.year - 1, today.year, today.year + 1):
        try:
            cand = date(year, month, day)
        except ValueError:
            continue
        if best is None or abs((cand - today).days) < abs((best - today).days):
            best = cand
    return best


def _ymd(y: str | None, month: int, day: int, today: date) -> tuple[date, frozenset[str]] | None:
    if y:
        try:
            return date(int(y), month, day), _NO_FLAGS
        except ValueError:
            return None
    found = _nearest(month, day, today)
    return None if found is None else (found, frozenset({"year_inferred"}))


def parse_date(text: str, today: date) -> tuple[date, frozenset[str]] | None:
    """Read one date expression relative to ``today``; None when it is not a valid date.

    Weeks start on Monday. 上周三 is Wednesday of last week, 周三/这周三/this Wednesday is
    Wednesday of this week, 下周三 of next week. "last Tuesday" is the most recent Tuesday
    before today and "next Friday" the first Friday after today (the everyday English sense,
    which differs from 上周/下周 when today is early or late in the week); a bare "Sunday" or
    "on Sunday" is the nearest Sunday (at most three days away, past or future).
    """
    s = " ".join(fold_width(text).lower().split())
    rel = frozenset({"relative"})
    if s in _ZH_DAY_WORDS:
        return today + timedelta(days=_ZH_DAY_WORDS[s]), rel
    if s in _EN_DAY_WORDS:
        return today + timedelta(days=_EN_DAY_WORDS[s]), rel
    if m := _D_ISO.fullmatch(s):
        return _ymd(m["y"], int(m["m"]), int(m["d"]), today)
    if m := _D_ZH.fullmatch(s):
        mo, dd = _int_of(m["m"]), _int_of(m["d"])
        return None if mo is None or dd is None else _ymd(m["y"], mo, dd, today)
    for rx in (_D_EN_MD, _D_EN_DM):
        if m := rx.fullmatch(s):
            return _ymd(m["y"], _MONTHS[m["mon"][:3]], int(m["d"]), today)
    monday = today - timedelta(days=today.weekday())
    if m := _D_ZH_WEEK.fullmatch(s):
        shift = _ZH_WEEK_SHIFT[m["shift"] or ""]
        return monday + timedelta(days=7 * shift + _WEEKDAY_ZH[m["wd"]]), rel
    if m := _D_EN_WEEK.fullmatch(s):
        wd = _WEEKDAYS_EN.index(m["wd"])
        mod = m["mod"] or ""
        if mod == "last":
            back = (today.weekday() - wd) % 7 or 7
            return today - timedelta(days=back), rel
        if mod in ("next", "coming"):
            ahead = (wd - today.weekday()) % 7 or 7
            return today + timedelta(days=ahead), rel
        if mod == "this":
            return monday + timedelta(days=wd), rel
        offset = (wd - today.weekday()) % 7  # bare "Sunday" / "on Sunday": within 3 days
        return today + timedelta(days=offset - 7 if offset > 3 else offset), rel
    if (m := _D_AGO.fullmatch(s)) or (m := _D_IN.fullmatch(s)):
        n = _int_of(m["n"])
        if n is None:
            return None
        days = n * (1 if m["unit"].startswith(("天", "day")) else 7)
        past = (m.groupdict().get("dir") or "") in ("前", "以前", "之前", "ago")
        return today + timedelta(days=-days if past else days), rel
    return None


# --------------------------------------------------------------------------- normalisers


def id_number_checksum_ok(value: str) -> bool:
    """GB 11643 check digit of an 18-character Chinese resident ID number."""
    v = value.upper()
    if len(v) != 18 or not v[:17].isdigit():
        return False
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(c) * w for c, w in zip(v[:17], weights, strict=True))
    return "10X98765432"[total % 11] == v[17]


def _squash(s: str) -> str:
    return re.sub(r"[\s\-]", "", fold_width(s))


def _n_text(v: str, _t: date) -> tuple[Normalized, frozenset[str]]:
    return " ".join(fold_width(v).split()), _NO_FLAGS


def _n_upper(v: str, _t: date) -> tuple[Normalized, frozenset[str]]:
    return _squash(v).upper(), _NO_FLAGS


def _n_lower(v: str, _t: date) -> tuple[Normalized, frozenset[str]]:
    return fold_width(v).strip().lower(), _NO_FLAGS


def _n_digits(v: str, _t: date) -> tuple[Normalized, frozenset[str]] | None:
    d = re.sub(r"\D", "", fold_width(v))
    return (d, _NO_FLAGS) if d else None


def _n_order(v: str, _t: date) -> tuple[Normalized, frozenset[str]]:
    return re.sub(r"\s", "", fold_width(v)).upper(), _NO_FLAGS


def _n_suffix(v: str, t: date) -> tuple[Normalized, frozenset[str]] | None:
    r = _n_digits(v, t)
    return None if r is None else (r[0], frozenset({"partial", "suffix"}))


def _n_prefix(v: str, t: date) -> tuple[Normalized, frozenset[str]] | None:
    r = _n_digits(v, t)
    return None if r is None else (r[0], frozenset({"partial", "prefix"}))


def _n_phone(v: str, _t: date) -> tuple[Normalized, frozenset[str]] | None:
    s = re.sub(r"[\s\-()]", "", fold_width(v)).replace("x", "*").replace("X", "*")
    s = re.sub(r"^(?:\+86|0086|86)(?=1\d)", "", s)
    if not re.fullmatch(r"1[3-9][0-9*]{9}", s):
        return None
    if "*" in s:
        return s, frozenset({"masked"})
    return s, _NO_FLAGS


def _n_id(v: str, _t: date) -> tuple[Normalized, frozenset[str]] | None:
    s = _squash(v).upper()
    if len(s) != 18:
        return None
    try:
        date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return None
    return s, (_NO_FLAGS if id_number_checksum_ok(s) else frozenset({"invalid_checksum"}))


def _n_amount(v: str, _t: date) -> tuple[Normalized, frozenset[str]] | None:
    a = parse_amount(v)
    return None if a is None else (a, _NO_FLAGS)


def _n_date(v: str, today: date) -> tuple[Normalized, frozenset[str]] | None:
    r = parse_date(v, today)
    return None if r is None else (r[0].isoformat(), r[1])


NORMALISERS: Mapping[str, Normaliser] = {
    "text": _n_text,
    "upper": _n_upper,
    "lower": _n_lower,
    "digits": _n_digits,
    "order_number": _n_order,
    "order_suffix": _n_suffix,
    "order_prefix": _n_prefix,
    "tracking_number": _n_upper,
    "phone": _n_phone,
    "email": _n_lower,
    "id_number": _n_id,
    "amount": _n_amount,
    "date": _n_date,
}


def fold_width(text: str) -> str:
    """Full-width to ASCII one character at a time ("１３８" → "138", "：" → ":"), so that
    offsets into the folded text are offsets into the original."""
    if text.isascii():
        return text
    out = []
    for ch in text:
        if ord(ch) > 0x7F:
            n = unicodedata.normalize("NFKC", ch)
            out.append(n if len(n) == 1 else ch)
        else:
            out.append(ch)
    return "".join(out)
