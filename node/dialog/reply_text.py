"""The words of a reply: the built-in wordings (Chinese and English), recognising a request
for a person ("转人工", "talk to a human") or a "yes", filling a tenant template's
placeholders, and soothing (an empathetic prefix, a sentence joined on in the right style).

Pure helpers of :func:`kefu.node.dialog.reply.decide_reply`, which decides *which* reply to give.
"""

from __future__ import annotations

import re
import string
import unicodedata
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from kefu.config import Template, TenantConfig

__all__ = ["is_explicit_human_request"]

_LABELS: dict[str, tuple[str, str]] = {
    "order_number": ("订单号", "order number"),
    "tracking_number": ("运单号", "tracking number"),
}

_TEXT: dict[str, dict[str, str]] = {
    "zh": {
        "ask": "请提供您的{label}，我马上为您处理。",
        "lookup": (
            "抱歉，我暂时查询不到{subject}的详细信息。"
            "您可以稍后再试，或回复“转人工”由人工客服为您处理。"
        ),
        "subject_order_number": "订单 {value} ",
        "subject_tracking_number": "运单 {value} ",
        "subject": "相关",
        "transfer": "好的，正在为您转接人工客服，请稍候。",
        "offer_low_confidence": (
            "抱歉，我可能没能理解您的意思。需要为您转接人工客服吗？"
            "回复“转人工”即可，我马上为您转接。"
        ),
        "offer": "如需人工客服继续为您处理，请回复“转人工”。",
        "no_answer": (
            "抱歉，我暂时没有找到准确的答案。"
            "您可以换个说法再问一次，或者回复“转人工”由人工客服为您解答。"
        ),
    },
    "en": {
        "ask": "Could you tell me your {label}? I'll take care of it right away.",
        "lookup": (
            "Sorry, I can't retrieve the details of {subject} right now. Please try again "
            "later, or reply “agent” and a human agent will help you."
        ),
        "subject_order_number": "order {value}",
        "subject_tracking_number": "tracking number {value}",
        "subject": "this request",
        "transfer": "Sure, I'm transferring you to a human agent now. Please hold on.",
        "offer_low_confidence": (
            "Sorry, I may not have understood what you need. Would you like me to connect you "
            "to a human agent? Just reply “agent” and I'll transfer you right away."
        ),
        "offer": "If you'd like a human agent to take over, just reply “agent”.",
        "no_answer": (
            "Sorry, I couldn't find an exact answer. You could rephrase the question, or reply "
            "“agent” to talk to a human."
        ),
    },
}

# -------------------------------------------------------------------- phrase detection

_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)
_HUMAN_ZH = (
    "转人工", "人工客服", "人工服务", "真人客服", "找人工", "要人工", "接人工", "人工坐席",
    "找真人", "转接人工", "找客服人员",
)  # fmt: skip
_HUMAN_EN = re.compile(
    r"(?<![a-z])(?:human agent|live agent|real person|real human|live person|"
    r"(?:speak|talk|chat)\s+(?:to|with)\s+(?:a\s+|an\s+|some\s*one\s*|a\s+real\s+)?"
    r"(?:human|person|agent|representative|someone|somebody|staff)|"
    r"customer service (?:agent|representative)|(?:get|want|need)\s+(?:a|an)\s+"
    r"(?:human|agent|representative))(?![a-z])"
)
_HUMAN_WHOLE = frozenset(
    {"人工", "真人", "agent", "human", "anagent", "ahuman", "humanplease", "agentplease",
     "representative", "operator"}
)  # fmt: skip
_AFFIRMATIVE = frozenset(
    {"好", "好的", "好啊", "好吧", "可以", "行", "是", "是的", "对", "嗯", "嗯嗯", "要", "需要",
     "转", "转吧", "转接", "麻烦了", "好的谢谢", "好的麻烦了", "yes", "y", "yeah", "yep", "ok",
     "okay", "sure", "please", "yesplease", "okplease", "surething", "ofcourse"}
)  # fmt: skip
_OFFERS_HUMAN = re.compile(
    r"转人工|人工客服|真人客服|human agent|a human|a person|real person|[“\"]agent[”\"]",
    re.IGNORECASE,
)
_APOLOGY = re.compile(r"抱歉|对不起|sorry|apolog", re.IGNORECASE)
_ACK_OPENER = re.compile(r"^(?:好的[，,]\s*|sure,\s*|ok(?:ay)?,\s*)", re.IGNORECASE)
_ASIDE = re.compile(r"\s*[（(][^（）()]*[）)]")


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def is_explicit_human_request(text: str) -> bool:
    """Whether the customer asks for a person in so many words ("转人工", "talk to a human")."""
    folded = _fold(text)
    if any(p in folded for p in _HUMAN_ZH) or _HUMAN_EN.search(folded):
        return True
    return _PUNCT.sub("", folded) in _HUMAN_WHOLE


def _is_affirmative(text: str) -> bool:
    return _PUNCT.sub("", _fold(text)) in _AFFIRMATIVE


# ---------------------------------------------------------------------------- templates


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _fields_in_order(text: str) -> list[str]:
    out: list[str] = []
    for _, name, _, _ in string.Formatter().parse(text):
        if name is not None and name not in out:
            out.append(name)
    return out


@dataclass(frozen=True, kw_only=True)
class _Filled:
    text: str | None  # None: a required field is missing
    used: tuple[str, ...]  # fields filled in
    missing: tuple[str, ...]  # fields without a value (dropped asides included)


def _fill(template: Template, lang: str, values: Mapping[str, object]) -> _Filled:
    raw = template.en if lang == "en" else template.zh
    names = _fields_in_order(raw)
    missing = tuple(n for n in names if not _present(values.get(n)))
    if missing:

        def drop(m: re.Match[str]) -> str:
            inner = _fields_in_order(m.group())
            return "" if inner and all(n in missing for n in inner) else m.group()

        raw = _ASIDE.sub(drop, raw)
        if any(n in missing for n in _fields_in_order(raw)):
            return _Filled(text=None, used=(), missing=missing)
    used = tuple(n for n in _fields_in_order(raw))
    text = raw.format_map({n: str(values[n]).strip() for n in used})
    return _Filled(text=re.sub(r"[ \t]{2,}", " ", text).strip(), used=used, missing=missing)


def _raw(template: Template, lang: str) -> str:
    return template.en if lang == "en" else template.zh


# ------------------------------------------------------------------------------ soothing


def _end_sentence(text: str, lang: str) -> str:
    text = text.rstrip()
    if not text or text[-1] in '。！？.!?…”"）)':
        return text
    return text + ("。" if lang == "zh" else ".")


def _join(first: str, second: str, lang: str) -> str:
    first = _end_sentence(first, lang)
    return f"{first}{second}" if lang == "zh" else f"{first} {second}"


def _soothe(config: TenantConfig, body: str, lang: str, text: str, streak: int) -> str:
    prefixes = config.soothing.prefixes.get(lang)
    if not prefixes or _APOLOGY.search(body[:40]):
        return body  # one apology is enough
    prefix = prefixes[(zlib.crc32(text.encode("utf-8")) + streak) % len(prefixes)]
    rest = _ACK_OPENER.sub("", body, count=1) or body
    if lang == "en":
        return f"{prefix.rstrip()} {rest[:1].upper()}{rest[1:]}"
    return f"{prefix}{rest}"
