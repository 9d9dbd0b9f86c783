"""Words of the flow engine: built-in replies and the phrases it recognises (pure).

Yes / no answers, "算了" / "never mind", and whether a text is a question or a request, in
Chinese and English. Deliberately lexical: these answers are short, and the intent and
sentiment models guess wildly on short texts ("确认" → order_query 0.97).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["ASKS", "REQUEST", "TEXT", "fold", "is_cancel", "yes_or_no"]

TEXT: dict[str, dict[str, str]] = {
    "zh": {
        "cancelled": "好的，这次的{name}先不办了，没有做任何更改。",
        "declined": "好的，已放弃{name}，没有做任何更改。还有其他可以帮您的吗？",
        "confirm_hint": "请回复“是”确认，或回复“否”放弃。",
        "invalid": "抱歉，没有找到 {value}，请核对后重新提供。",
        "invalid_text": "抱歉，这个内容无法使用（需要 {min}–{max} 个字），请重新输入。",
        "failure": (
            "抱歉，系统暂时无法完成{name}，请稍后再试。您也可以回复“转人工”，由人工客服为您处理。"
        ),
        "rejected": "抱歉，{name}没有办成：{code}。",
        "resume": "我们继续刚才的{name}：",
        "aside": "另外，您的{name}还没有办完：",
        "give_up": (
            "抱歉，我还是没能拿到需要的信息，{name}先到这里。您可以稍后再试，或回复“转人工”。"
        ),
        "handoff": "正在为您转接人工客服，请稍候。",
    },
    "en": {
        "cancelled": "OK, I've stopped the {name}; nothing was changed.",
        "declined": "OK, I've dropped the {name}; nothing was changed. Anything else I can do?",
        "confirm_hint": "Please reply “yes” to confirm or “no” to cancel.",
        "invalid": "Sorry, I couldn't find {value}. Please check it and try again.",
        "invalid_text": (
            "Sorry, I can't use that ({min}–{max} characters needed). Please try again."
        ),
        "failure": (
            "Sorry, I can't complete the {name} right now because our system isn't responding. "
            "Please try again later, or reply “agent” and a human agent will help you."
        ),
        "rejected": "Sorry, the {name} could not be completed: {code}.",
        "resume": "Back to your {name}: ",
        "aside": "Also, your {name} isn't finished yet: ",
        "give_up": (
            "Sorry, I still don't have what I need, so I've stopped the {name}. You can try "
            "again later, or reply “agent” to talk to a human."
        ),
        "handoff": "I'm transferring you to a human agent now; please hold on.",
    },
}

# --------------------------------------------------------------------- phrase detection

_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)
_CANCEL_WHOLE = frozenset(
    {"算了", "算了吧", "不用了", "不办了", "不弄了", "先不了", "不改了", "不退了", "不开了",
     "退出", "取消操作", "nevermind", "forgetit", "stop", "quit", "cancelthat", "forgetaboutit",
     "dontbother", "skipit"}
)  # fmt: skip
_CANCEL_PART = ("算了", "never mind", "nevermind", "forget it", "forget about it", "不办了")
_YES = frozenset(
    {"是", "是的", "对", "对的", "确认", "确定", "好", "好的", "可以", "嗯", "嗯嗯", "行", "没问题",
     "要", "需要", "同意", "yes", "y", "yeah", "yep", "yup", "sure", "ok", "okay", "confirm",
     "correct", "right", "goahead", "pleasedo", "doit", "yesplease", "please", "absolutely"}
)  # fmt: skip
_NO = frozenset(
    {"不", "不是", "不要", "不用", "否", "不对", "别", "不行", "不需要", "先不要", "no", "n",
     "nope", "nah", "dont", "notnow", "nothanks", "noway"}
)  # fmt: skip
_YES_PREFIX_ZH = ("是", "对", "确认", "确定", "好", "可以", "嗯", "行", "没问题", "同意")
_NO_PREFIX_ZH = ("不", "别", "否", "先不", "算了")
_YES_EN = frozenset({"yes", "yeah", "yep", "sure", "ok", "okay", "confirm", "confirmed", "correct"})
_NO_EN = frozenset({"no", "nope", "nah", "don't", "dont", "not", "never"})
ASKS = re.compile(
    r"[?？]|吗|呢|什么|怎么|哪|多久|几天|我要|我想|帮我|请帮|麻烦|申请|"
    r"(?<![a-z])(?:how|what|when|where|why|which|can i|can you|could you|i want|i'd like|"
    r"i would like|i need|please|help me)(?![a-z])",
    re.IGNORECASE,
)
REQUEST = re.compile(
    r"我要|我想|我需要|帮我|请帮|麻烦|申请|给我|替我|"
    r"(?<![a-z])(?:i want|i'd like|i would like|i need|please|help me|can you|could you)(?![a-z])",
    re.IGNORECASE,
)


def fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold().strip()


def is_cancel(text: str) -> bool:
    """ "算了" / "never mind": the customer drops the task in progress."""
    folded = fold(text)
    squashed = _PUNCT.sub("", folded).removesuffix("吧").removesuffix("了吧")
    return squashed in _CANCEL_WHOLE or any(p in folded for p in _CANCEL_PART)


def yes_or_no(text: str) -> bool | None:
    """True for a yes, False for a no, None when the text is neither (or too long to tell)."""
    folded = fold(text)
    squashed = _PUNCT.sub("", folded)
    if squashed in _YES:
        return True
    if squashed in _NO or is_cancel(text):
        return False
    if len(squashed) <= 12 and re.search(r"[\u4e00-\u9fff]", squashed):
        if squashed.startswith(_NO_PREFIX_ZH):
            return False
        if squashed.startswith(_YES_PREFIX_ZH):
            return True
    words = re.findall(r"[a-z']+", folded)
    if words and len(words) <= 6:
        if words[0] in _NO_EN:
            return False
        if words[0] in _YES_EN:
            return True
    return None
