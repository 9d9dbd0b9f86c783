"""The WeChat Official Account webhook: ``GET|POST /wechat/{public_id}`` (the URL entered in
the account's server configuration), and the customer-service message client for answers that
miss WeChat's deadline. Rules and XML: :mod:`.wechat`.

Each customer (OpenID) keeps one conversation per gateway process (an LRU map OpenID →
session id; several gateway replicas each keep their own, so a customer moving between them
starts a new conversation — documented in docs/gateway.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Any

import aiohttp
from aiohttp import web

from kefu.node.gateway.answers import ApiError
from kefu.node.gateway.config import TenantAccess
from kefu.node.gateway.http_api import CONVERSATIONS, INFO, MAX_BODY
from kefu.node.gateway.wechat import (
    TEXT_ONLY,
    Deliveries,
    WeChatMessage,
    custom_text,
    parse_message,
    passive_text,
    passive_transfer,
    verify_signature,
)
from kefu.node.gateway.wechat_crypto import WeChatCrypto

__all__ = ["WECHAT", "WeChatLink", "add_wechat_routes"]

log = logging.getLogger("kefu.gateway.wechat")

_BUSY = "客服繁忙，请稍后再试。/ We are busy, please try again shortly."


class WeChatLink:
    """Per-process WeChat state: deliveries seen, OpenID → session, access tokens, and the
    background sends (cancelled on shutdown)."""

    def __init__(self, max_users: int = 100_000):
        self.deliveries = Deliveries()
        self.sessions: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.max_users = max_users
        self.tokens: dict[str, tuple[str, float]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.http: aiohttp.ClientSession | None = None
        self.sent = 0

    async def start(self, app: web.Application) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def stop(self, app: web.Application) -> None:
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.close()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def remember(self, key: tuple[str, str], sid: str) -> None:
        self.sessions[key] = sid
        self.sessions.move_to_end(key)
        while len(self.sessions) > self.max_users:
            self.sessions.popitem(last=False)

    async def access_token(self, tenant: TenantAccess) -> str:
        cached = self.tokens.get(tenant.id)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        assert self.http is not None and tenant.wechat is not None
        async with self.http.get(
            f"{tenant.wechat.api_base}/cgi-bin/token",
            params={
                "grant_type": "client_credential",
                "appid": tenant.wechat.app_id,
                "secret": tenant.wechat_secret,
            },
        ) as resp:
            data = await resp.json(content_type=None)
        token = data.get("access_token") if isinstance(data, dict) else None
        if not token:
            raise RuntimeError(
                f"WeChat token refused: {data.get('errcode') if isinstance(data, dict) else data}"
            )
        ttl = float(data.get("expires_in", 7200))
        self.tokens[tenant.id] = (token, time.monotonic() + max(60.0, ttl - 300))
        return str(token)

    async def send_text(self, tenant: TenantAccess, openid: str, text: str) -> None:
        """A customer-service message (the answer that missed the passive deadline)."""
        assert self.http is not None and tenant.wechat is not None
        for attempt in range(2):
            token = await self.access_token(tenant)
            async with self.http.post(
                f"{tenant.wechat.api_base}/cgi-bin/message/custom/send",
                params={"access_token": token},
                json=custom_text(openid, text),
            ) as resp:
                data = await resp.json(content_type=None)
            code = data.get("errcode", 0) if isinstance(data, dict) else -1
            if code == 0:
                self.sent += 1
                return
            if code in (40001, 42001) and attempt == 0:  # token invalid or expired: fetch anew
                self.tokens.pop(tenant.id, None)
                continue
            raise RuntimeError(f"WeChat customer-service message refused: errcode {code}")


WECHAT: web.AppKey[WeChatLink] = web.AppKey("wechat", WeChatLink)


def _tenant(request: web.Request) -> TenantAccess:
    tenant = request.app[CONVERSATIONS].tenant(request.match_info["public_id"])
    if tenant.wechat is None:
        raise ApiError.of("unknown_tenant")
    request[INFO].tenant, request[INFO].channel = tenant.id, "social"
    return tenant


async def verify_url(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    verify_signature(tenant.wechat_token, dict(request.query))
    return web.Response(text=request.query.get("echostr", ""))


async def _answer(
    request: web.Request, tenant: TenantAccess, msg: WeChatMessage
) -> tuple[str, bool]:
    """(text, hand over) for one message; never raises for the customer's sake."""
    if msg.msg_type != "text":
        return TEXT_ONLY, False
    convs, link = request.app[CONVERSATIONS], request.app[WECHAT]
    key = (tenant.id, msg.from_user)
    body: dict[str, Any] = {"text": msg.content[:4096], "request_id": f"wx-{msg.dedupe_key}"[:64]}
    try:
        caller = convs.admit(
            tenant.public_id,
            origin=None,
            identity_token=None,
            channel="social",
            request_id=request[INFO].request_id,
            traceparent=request[INFO].traceparent,
        )
        sid = link.sessions.get(key)
        try:
            reply = await convs.send(caller, {**body, "session_id": sid} if sid else body)
        except ApiError as err:
            if not sid or err.code not in ("conversation_closed", "not_found", "node_down"):
                raise
            reply = await convs.send(caller, body)  # the old conversation is over: a new one
    except ApiError as err:
        log.warning("wechat message not answered: %s", err.code)
        return (_BUSY if err.status >= 500 or err.status == 429 else err.zh), False
    link.remember(key, reply["session_id"])
    return reply["text"], bool(reply["handoff"] or not reply["text"])


async def receive(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    query = dict(request.query)
    verify_signature(tenant.wechat_token, query)  # before reading anything
    limit = request.app[MAX_BODY]
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise ApiError.of("body_too_large")
    crypto = None
    if tenant.wechat_aes_key:  # safe mode: msg_signature, then decrypt (appid checked)
        assert tenant.wechat is not None
        crypto = WeChatCrypto(tenant.wechat_token, tenant.wechat_aes_key, tenant.wechat.app_id)
        raw = crypto.open(query, raw)
    msg = parse_message(raw)
    if msg.msg_type == "event":
        return web.Response(text="success")
    link = request.app[WECHAT]
    assert tenant.wechat is not None
    delivery, new = link.deliveries.get_or_add(f"{tenant.id}:{msg.dedupe_key}")
    if new:
        delivery.answer = link.spawn(_answer(request, tenant, msg))
    if delivery.went_async:
        return web.Response(text="success")  # a retry of a message answered asynchronously
    try:
        text, handoff = await asyncio.wait_for(
            asyncio.shield(delivery.answer), tenant.wechat.passive_deadline_s
        )
    except TimeoutError:
        delivery.went_async = True
        link.spawn(_send_later(link, tenant, msg, delivery.answer))
        return web.Response(text="success")
    now = int(time.time())
    if handoff and not text:
        xml = passive_transfer(msg, now)
    elif handoff:
        # One passive reply only: the bot's words go as a customer-service message, the
        # passive reply moves the customer to the human system.
        link.spawn(_send_quietly(link, tenant, msg.from_user, text))
        xml = passive_transfer(msg, now)
    else:
        xml = passive_text(msg, text, now)
    if crypto is not None:
        xml = crypto.seal(xml, str(now), query["nonce"])
    return web.Response(body=xml, content_type="application/xml", charset="utf-8")


async def _send_quietly(link: WeChatLink, tenant: TenantAccess, openid: str, text: str) -> None:
    try:
        await link.send_text(tenant, openid, text)
    except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError) as exc:
        log.warning("wechat customer-service message failed: %s", exc)


async def _send_later(
    link: WeChatLink, tenant: TenantAccess, msg: WeChatMessage, answer: asyncio.Task[Any]
) -> None:
    with contextlib.suppress(Exception):
        text, _ = await answer
        await _send_quietly(link, tenant, msg.from_user, text)


def add_wechat_routes(app: web.Application) -> None:
    link = WeChatLink()
    app[WECHAT] = link
    app.on_startup.append(link.start)
    app.on_cleanup.append(link.stop)
    app.router.add_get("/wechat/{public_id}", verify_url)
    app.router.add_post("/wechat/{public_id}", receive)
