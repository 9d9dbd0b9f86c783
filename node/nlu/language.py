"""Which language a customer message is written in: Chinese, English, or undecidable.

The node answers in the customer's language, so this runs on every turn and must be cheap,
deterministic and right on the messages a Chinese or English shop really gets — short, mixed,
full of product names and order numbers. It is script-based, not a statistical model:

* Han characters are counted one by one; English is counted in **words** (runs of Latin
  letters). A Han character carries about as much meaning as a short English word, and
  Chinese customers routinely mix in brand and product names ("iPhone 16 有货吗",
  "my快递到哪了") while English customers almost never type Han characters. So the text is
  Chinese when ``han >= ZH_WORD_RATIO * english_words`` (0.5: one Han character outweighs two
  English words), which keeps "Can you tell me where my 快递 is" English.
* Identifiers are not words: a token that mixes letters and digits ("SF1234567890",
  "SO-88231", "45mm", "A1") says nothing about the language, nor do digits and punctuation.
  Text with no evidence at all ("2024112512345678", "???", "👍") is ``und``; the caller falls
  back to the session language (or passes it as ``prior``).
* Full-width CJK punctuation ("，", "？", "。") typed with a Chinese IME is weak evidence for
  Chinese (half a character each, at most one character in total): "ok？" → zh.
* With a ``prior`` (the session language), weak evidence does not flip the session: one or
  two English words such as "ok" or "thanks" in a Chinese session stay Chinese, and an
  undecidable text takes the prior at low confidence.

Other scripts (kana, Hangul, Cyrillic, …) are ignored: the product serves zh and en only.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ZH_WORD_RATIO",
    "Detection",
    "Lang",
    "detect_language",
    "is_han",
]

Lang = Literal["zh", "en", "und"]

#: Chinese wins when Han characters >= this × English words.
ZH_WORD_RATIO = 0.5
#: A prior survives contrary evidence of at most this many English words / Han characters.
_PRIOR_HOLDS_EN_WORDS = 2
_PRIOR_HOLDS_HAN = 0  # a single Han character is unambiguous: nobody types one by accident

# Tokens of ASCII letters/digits joined by - _ . / ' (so "e-mail" and "SO-88231" are one token).
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['\-_./][A-Za-z0-9]+)*")
_HAS_LETTER = re.compile(r"[A-Za-z]")
_HAS_DIGIT = re.compile(r"[0-9]")
_CJK_PUNCT = frozenset("，。？！：；、“”‘’（）《》【】…—～·「」『』")


@dataclass(frozen=True, kw_only=True)
class Detection:
    """The detected language of one message.

    ``cjk_ratio`` is Han characters / (Han characters + Latin letters), 0.0 when the text has
    neither; ``confidence`` is in [0, 1] and grows with how much evidence there is and how
    one-sided it is.
    """

    lang: Lang
    confidence: float
    cjk_ratio: float

    @property
    def known(self) -> bool:
        return self.lang != "und"


def is_han(ch: str) -> bool:
    """True for a CJK unified ideograph (basic block, extensions A–F, compatibility)."""
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0xF900 <= cp <= 0xFAFF
        or 0x20000 <= cp <= 0x3134F
    )


@dataclass(frozen=True)
class _Evidence:
    han: int
    latin_letters: int
    en_words: int
    cjk_punct: int


def _evidence(text: str) -> _Evidence:
    han = 0
    cjk_punct = 0
    chars: list[str] = []
    for ch in text:
        if is_han(ch):
            han += 1
            chars.append(" ")  # a Han character separates Latin tokens: "my快递" → "my"
            continue
        if ch in _CJK_PUNCT:
            cjk_punct += 1
            chars.append(" ")
            continue
        # Full-width Latin letters and digits ("ｏｒｄｅｒ", "１２３") count as their ASCII twins.
        folded = unicodedata.normalize("NFKC", ch) if ord(ch) > 0x7F else ch
        chars.append(folded if len(folded) == 1 else " ")
    plain = "".join(chars)
    en_words = 0
    latin_letters = 0
    for m in _TOKEN.finditer(plain):
        tok = m.group()
        if not _HAS_LETTER.search(tok):
            continue  # a number
        letters = sum(c.isascii() and c.isalpha() for c in tok)
        latin_letters += letters
        if _HAS_DIGIT.search(tok):
            continue  # an identifier: order/tracking number, model number, size
        en_words += 1
    return _Evidence(han=han, latin_letters=latin_letters, en_words=en_words, cjk_punct=cjk_punct)


def _confidence(winner: float, loser: float) -> float:
    """Share of the evidence that agrees, damped when there is little evidence at all."""
    total = winner + loser
    if total <= 0:
        return 0.0
    share = winner / total
    amount = min(1.0, 0.55 + 0.15 * total)  # 1 unit → 0.7, 3 units → 1.0
    return round(max(0.0, min(1.0, share * amount)), 3)


def detect_language(text: str, *, prior: Lang | None = None) -> Detection:
    """Detect zh / en / und for one customer message (see the module docstring for the rules).

    ``prior`` is the session's language so far; it only matters when the text's own evidence
    is weak (a couple of English words, or nothing at all).
    """
    ev = _evidence(text)
    denom = ev.han + ev.latin_letters
    cjk_ratio = round(ev.han / denom, 3) if denom else 0.0
    zh_score = ev.han + min(1.0, 0.5 * ev.cjk_punct)
    en_score = float(ev.en_words)

    if zh_score == 0 and en_score == 0:
        if prior in ("zh", "en"):
            return Detection(lang=prior, confidence=0.3, cjk_ratio=cjk_ratio)
        return Detection(lang="und", confidence=0.0, cjk_ratio=cjk_ratio)

    if zh_score > 0 and zh_score >= ZH_WORD_RATIO * en_score:
        lang: Lang = "zh"
        # Scale English words to Han-equivalents so the confidence reflects the decision rule.
        conf = _confidence(zh_score, ZH_WORD_RATIO * en_score)
    else:
        lang = "en"
        conf = _confidence(en_score, zh_score / ZH_WORD_RATIO)

    if prior is not None and prior != lang and prior in ("zh", "en"):
        weak = (lang == "en" and ev.han == 0 and ev.en_words <= _PRIOR_HOLDS_EN_WORDS) or (
            lang == "zh" and ev.han <= _PRIOR_HOLDS_HAN
        )
        if weak:
            return Detection(lang=prior, confidence=0.5, cjk_ratio=cjk_ratio)
    return Detection(lang=lang, confidence=conf, cjk_ratio=cjk_ratio)
