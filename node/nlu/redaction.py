"""Redact personal data from text before it reaches a log line or leaves the region.

Replaced, each by a typed placeholder:

* mobile phone numbers (13812345678, 138-1234-5678, +86 138 1234 5678) → ``<phone>``
* email addresses → ``<email>``
* Chinese resident ID numbers (18 characters with a valid birth date; the check digit is
  **not** required, a mistyped ID is still personal data) → ``<id_number>``
* bank card numbers → ``<card>``: 16–19 digits (contiguous, or in groups of four) that pass
  the Luhn check and start like an issued card (3, 4, 5, 6 or 9, or Mastercard's 2221–2720).

Kept on purpose, because operators need them to follow a conversation: **order numbers and
tracking numbers**. They are not personal data on their own, and a masked phone such as
138****5678 is already safe.

The trade-off between the two: a 16-digit order number and a card number look alike.
A number is kept when it fails Luhn (nine in ten random numbers do), when its prefix is not
a card prefix (the demo shop's date-prefixed 2024112512345678 never is), or when an order cue
("订单号", "order #") immediately precedes it. What is left — a Luhn-valid number with a card
prefix and no cue — is redacted as ``<card>`` even if it was an order number: losing an order
number from a log line costs an operator a lookup in the session store, while leaking a card
number into central logs is a compliance incident. Phones are always redacted, cue or not.

Matching runs on a width-folded copy ("１３８…" counts as "138…"), so full-width digits do not
slip through, and the replacement is spliced into the original text by offset.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date

from kefu.node.nlu.entities import fold_width

__all__ = [
    "PLACEHOLDERS",
    "RedactingFilter",
    "Sensitive",
    "find_sensitive",
    "luhn_valid",
    "redact",
]

PLACEHOLDERS = {
    "phone": "<phone>",
    "email": "<email>",
    "id_number": "<id_number>",
    "card": "<card>",
}

_L = r"(?<![0-9A-Za-z])"
_R = r"(?![0-9A-Za-z])"
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}"
)
_ID = re.compile(
    rf"{_L}[1-9][0-9]{{5}}(?P<y>(?:18|19|20)[0-9]{{2}})(?P<m>0[1-9]|1[0-2])"
    rf"(?P<d>0[1-9]|[12][0-9]|3[01])[0-9]{{3}}[0-9Xx]{_R}"
)
_CARD = re.compile(
    rf"{_L}(?:[0-9]{{16,19}}|[0-9]{{4}}(?:[ \-][0-9]{{4}}){{3}}(?:[ \-]?[0-9]{{1,3}})?){_R}"
)
_PHONE = re.compile(rf"{_L}(?:(?:\+|00)?86[ \-]?)?1[3-9][0-9](?:[ \-]?[0-9]{{4}}){{2}}{_R}")
# An order cue right before a number: "订单号：", "订单号是 ", "order #", "order no. ".
_ORDER_CUE_BEFORE = re.compile(
    r"(?:订单(?:号码?|编号)?|order\s*(?:number|num|no\.?|id|#)?)\s*(?:是|为|:|#)?\s*$",
    re.IGNORECASE,
)
_PRIORITY = {"email": 4, "id_number": 3, "card": 2, "phone": 1}


@dataclass(frozen=True, kw_only=True)
class Sensitive:
    """A span of personal data found in a text."""

    kind: str
    start: int
    end: int


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check that every payment card number passes."""
    if not digits.isdigit() or not digits.isascii():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _card_prefix(digits: str) -> bool:
    if digits[0] in "34569":
        return True
    return 2221 <= int(digits[:4]) <= 2720  # Mastercard 2-series


def find_sensitive(text: str) -> list[Sensitive]:
    """The personal-data spans :func:`redact` would replace, left to right, without overlaps."""
    folded = fold_width(text)
    found: list[Sensitive] = [
        Sensitive(kind="email", start=m.start(), end=m.end()) for m in _EMAIL.finditer(folded)
    ]
    for m in _ID.finditer(folded):
        try:
            date(int(m["y"]), int(m["m"]), int(m["d"]))
        except ValueError:
            continue
        found.append(Sensitive(kind="id_number", start=m.start(), end=m.end()))
    for m in _CARD.finditer(folded):
        digits = re.sub(r"[ \-]", "", m.group())
        if not (16 <= len(digits) <= 19 and luhn_valid(digits) and _card_prefix(digits)):
            continue
        if _ORDER_CUE_BEFORE.search(folded[max(0, m.start() - 24) : m.start()]):
            continue  # the customer said it is an order number
        found.append(Sensitive(kind="card", start=m.start(), end=m.end()))
    found.extend(
        Sensitive(kind="phone", start=m.start(), end=m.end()) for m in _PHONE.finditer(folded)
    )
    found.sort(key=lambda s: (-_PRIORITY[s.kind], -(s.end - s.start), s.start))
    kept: list[Sensitive] = []
    for s in found:
        if all(s.end <= k.start or s.start >= k.end for k in kept):
            kept.append(s)
    kept.sort(key=lambda s: s.start)
    return kept


def redact(text: str) -> str:
    """``text`` with phones, emails, ID numbers and card numbers replaced by placeholders."""
    if not text:
        return text
    spans = find_sensitive(text)
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for s in spans:
        out.append(text[pos : s.start])
        out.append(PLACEHOLDERS[s.kind])
        pos = s.end
    out.append(text[pos:])
    return "".join(out)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message, its arguments, and any exception
    or stack text of every record it sees.

    Attach it to **handlers** (``handler.addFilter(RedactingFilter())``): a filter on a logger
    does not see records propagated from its child loggers. The message is formatted here
    (``msg % args``) and the args are then dropped, so a phone number passed as an int to
    ``%d`` is redacted too; a record whose formatting fails is left for logging to report.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # logging reports bad format strings itself; do not mask that
            return True
        record.msg = redact(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
