"""WeChat Official Account (公众号) message webhook rules, as WeChat's documentation specifies
them (plain-text mode). Pure: signatures, XML in and out, duplicate deliveries.

* **Signature** (every request, GET and POST): ``sha1("".join(sorted([token, timestamp,
  nonce])))`` in lower-case hex equals the ``signature`` query parameter. The URL check (GET)
  answers the ``echostr`` parameter as-is.
* **Messages** (POST) are XML: ``ToUserName`` (the account), ``FromUserName`` (the customer's
  OpenID), ``CreateTime``, ``MsgType``, ``Content`` (text), ``MsgId``. Only text is answered
  by the bot; other kinds get a polite "text only" reply; events get ``success``.
* **Deadline**: WeChat waits 5 s and retries up to 3 times. A reply is passive XML in the
  response, or the body ``success`` and a later customer-service message
  (``/cgi-bin/message/custom/send``).
* **Hand-off**: the passive reply ``MsgType transfer_customer_service`` moves the customer to
  the account's human customer-service system.
* **XML safety**: a body with a DTD (``<!DOCTYPE``/``<!ENTITY``) is refused before parsing, so
  no entity is ever expanded, internal or external.
"""

from __future__ import annotations

import hashlib
import hmac
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from kefu.node.gateway.answers import ApiError

__all__ = [
    "TEXT_ONLY",
    "WeChatMessage",
    "child_text",
    "parse_message",
    "parse_xml",
    "passive_text",
    "passive_transfer",
    "signature",
    "verify_signature",
]

MAX_XML_BYTES = 16_384
TEXT_ONLY = (
    "抱歉，目前只能处理文字消息，请用文字描述您的问题。\n"
    "Sorry, I can only read text messages for now; please type your question."
)


def signature(token: str, timestamp: str, nonce: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode("utf-8")).hexdigest()


def verify_signature(token: str, query: dict[str, str]) -> None:
    """``bad_signature`` (403) unless the query is signed with ``token``."""
    sig = query.get("signature", "")
    ts, nonce = query.get("timestamp", ""), query.get("nonce", "")
    if not (sig and ts and nonce) or len(ts) > 32 or len(nonce) > 64:
        raise ApiError.of("bad_signature")
    if not hmac.compare_digest(signature(token, ts, nonce), sig.lower()):
        raise ApiError.of("bad_signature")


@dataclass(frozen=True, kw_only=True)
class WeChatMessage:
    to_user: str
    from_user: str
    create_time: int
    msg_type: str
    content: str = ""
    msg_id: str = ""
    event: str = ""

    @property
    def dedupe_key(self) -> str:
        """MsgId; events have none, so sender + CreateTime (as WeChat documents)."""
        return self.msg_id or f"{self.from_user}:{self.create_time}:{self.event}"


def parse_xml(raw: bytes) -> ET.Element:
    """WeChat's ``<xml>`` body, parsed; DTDs and entities refused before parsing."""
    if len(raw) > MAX_XML_BYTES:
        raise ApiError.of("body_too_large")
    head = raw.lower()
    if b"<!doctype" in head or b"<!entity" in head:
        raise ApiError.of("invalid_xml", detail="DTDs and entities are not accepted")
    try:
        root = ET.fromstring(raw.decode("utf-8"))
    except (ET.ParseError, UnicodeDecodeError) as exc:
        raise ApiError.of("invalid_xml") from exc
    if root.tag != "xml":
        raise ApiError.of("invalid_xml", detail="root element must be <xml>")
    return root


def child_text(root: ET.Element, tag: str) -> str:
    el = root.find(tag)
    return (el.text or "").strip() if el is not None else ""


def parse_message(raw: bytes) -> WeChatMessage:
    root = parse_xml(raw)

    def text(tag: str) -> str:
        return child_text(root, tag)

    to_user, from_user, msg_type = text("ToUserName"), text("FromUserName"), text("MsgType")
    if not (to_user and from_user and msg_type):
        raise ApiError.of("invalid_xml", detail="ToUserName, FromUserName, MsgType required")
    created = text("CreateTime")
    if not created.isdigit():
        raise ApiError.of("invalid_xml", detail="CreateTime must be a number")
    return WeChatMessage(
        to_user=to_user,
        from_user=from_user,
        create_time=int(created),
        msg_type=msg_type,
        content=text("Content"),
        msg_id=text("MsgId"),
        event=text("Event"),
    )


def _cdata(value: str) -> str:
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _envelope(msg: WeChatMessage, now: int, msg_type: str, extra: str = "") -> bytes:
    return (
        "<xml>"
        f"<ToUserName>{_cdata(msg.from_user)}</ToUserName>"
        f"<FromUserName>{_cdata(msg.to_user)}</FromUserName>"
        f"<CreateTime>{now}</CreateTime>"
        f"<MsgType>{_cdata(msg_type)}</MsgType>"
        f"{extra}</xml>"
    ).encode()


def passive_text(msg: WeChatMessage, text: str, now: int) -> bytes:
    return _envelope(msg, now, "text", f"<Content>{_cdata(text)}</Content>")


def passive_transfer(msg: WeChatMessage, now: int) -> bytes:
    return _envelope(msg, now, "transfer_customer_service")


def custom_text(openid: str, text: str) -> dict[str, Any]:
    """The customer-service message API's body for a text."""
    return {"touser": openid, "msgtype": "text", "text": {"content": text}}


@dataclass
class Delivery:
    """One MsgId: the answer (once computed) and whether it went out asynchronously."""

    answer: Any = None  # set by the adapter: an asyncio task
    went_async: bool = False


class Deliveries:
    """MsgIds seen recently (bounded LRU): WeChat's retries are answered from the first."""

    def __init__(self, max_entries: int = 10_000):
        self.max_entries = max_entries
        self._seen: OrderedDict[str, Delivery] = OrderedDict()

    def get_or_add(self, key: str) -> tuple[Delivery, bool]:
        """(the delivery, True when this key was new)."""
        d = self._seen.get(key)
        if d is not None:
            self._seen.move_to_end(key)
            return d, False
        d = Delivery()
        self._seen[key] = d
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return d, True
