"""The WeChat Official Account webhook against a local fake of WeChat's servers that follows
the documented contract (access token, customer-service messages), in front of a real node."""

from __future__ import annotations

import asyncio
import contextlib
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from gateway_support import Stack, gateway_stack, node_session_count, wait_until

from kefu.node.gateway.wechat import TEXT_ONLY, signature

TOKEN, APP_ID, APP_SECRET = "wx-token-123", "wx1234567890", "app-secret-xyz"


class FakeWeChat:
    """api.weixin.qq.com as documented: /cgi-bin/token and /cgi-bin/message/custom/send."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.tokens_issued = 0
        self.app = web.Application()
        self.app.router.add_get("/cgi-bin/token", self.token)
        self.app.router.add_post("/cgi-bin/message/custom/send", self.custom_send)

    async def token(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("grant_type") != "client_credential" or (q.get("appid"), q.get("secret")) != (
            APP_ID,
            APP_SECRET,
        ):
            return web.json_response({"errcode": 40013, "errmsg": "invalid appid"})
        self.tokens_issued += 1
        return web.json_response({"access_token": f"AT{self.tokens_issued}", "expires_in": 7200})

    async def custom_send(self, request: web.Request) -> web.Response:
        if request.query.get("access_token") != f"AT{self.tokens_issued}":
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        body = await request.json()
        if body.get("msgtype") != "text" or not body.get("touser") or "content" not in body["text"]:
            return web.json_response({"errcode": 44002, "errmsg": "empty post data"})
        self.sent.append(body)
        return web.json_response({"errcode": 0, "errmsg": "ok"})


@contextlib.asynccontextmanager
async def wechat_stack(tmp: Path, **wechat: Any) -> AsyncIterator[tuple[Stack, FakeWeChat]]:
    fake = FakeWeChat()
    runner = web.AppRunner(fake.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    (tmp / "wx.token").write_text(TOKEN, encoding="utf-8")
    (tmp / "wx.secret").write_text(APP_SECRET, encoding="utf-8")
    tenant = {
        "wechat": {
            "token_file": "wx.token",
            "app_id": APP_ID,
            "app_secret_file": "wx.secret",
            "api_base": f"http://127.0.0.1:{port}",
            **wechat,
        }
    }
    try:
        async with gateway_stack(tmp, tenant=tenant) as s:
            yield s, fake
    finally:
        await runner.cleanup()


def signed(s: Stack, *, token: str = TOKEN, **extra: str) -> str:
    ts, nonce = str(int(time.time())), "n0nce"
    q = {"signature": signature(token, ts, nonce), "timestamp": ts, "nonce": nonce, **extra}
    return f"{s.url}/wechat/demo-shop?" + "&".join(f"{k}={v}" for k, v in q.items())


def text_xml(content: str, msg_id: str, kind: str = "text") -> bytes:
    return (
        "<xml><ToUserName><![CDATA[gh_shop]]></ToUserName>"
        "<FromUserName><![CDATA[oCustomer1]]></FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[{kind}]]></MsgType>"
        f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>"
    ).encode()


def reply_of(body: bytes) -> dict[str, str]:
    root = ET.fromstring(body)
    return {child.tag: (child.text or "") for child in root}


async def test_url_verification_and_bad_signatures(tmp_path: Path) -> None:
    async with wechat_stack(tmp_path) as (s, _):
        r = await s.http.get(signed(s, echostr="e123"))
        assert r.status == 200 and await r.text() == "e123"
        r = await s.http.get(signed(s, token="wrong", echostr="e123"))
        assert r.status == 403 and "e123" not in await r.text()
        r = await s.http.post(signed(s, token="wrong"), data=text_xml("你好", "1"))
        assert r.status == 403
        r = await s.http.post(f"{s.url}/wechat/demo-shop", data=text_xml("你好", "2"))
        assert r.status == 403
        bomb = b'<!DOCTYPE x [<!ENTITY a SYSTEM "file:///etc/passwd">]><xml>&a;</xml>'
        r = await s.http.post(signed(s), data=bomb)
        assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_xml"
        r = await s.http.post(signed(s), data=b"<xml><broken>")
        assert r.status == 400
        assert await node_session_count(s) == 0  # nothing was processed


async def test_text_is_answered_passively_and_duplicates_once(tmp_path: Path) -> None:
    async with wechat_stack(tmp_path) as (s, fake):
        body = text_xml("我的订单什么时候到", "1001")
        replies = await asyncio.gather(*(s.http.post(signed(s), data=body) for _ in range(3)))
        xmls = [reply_of(await r.read()) for r in replies]
        assert all(r.status == 200 for r in replies)
        first = xmls[0]
        assert first["MsgType"] == "text" and "订单号" in first["Content"]
        assert (first["ToUserName"], first["FromUserName"]) == ("oCustomer1", "gh_shop")
        assert all(x["Content"] == first["Content"] for x in xmls)
        assert await node_session_count(s) == 1
        node = s.nodes["n1"]
        assert node.registry is not None
        page = await node.registry.tenants["demo-shop"].store.list_sessions(limit=10)
        assert page.items[0].turn_count == 2 and page.items[0].channel == "social"
        # The same customer's next message continues the conversation.
        r = await s.http.post(signed(s), data=text_xml("2024112512345678", "1002"))
        assert r.status == 200 and await node_session_count(s) == 1
        r = await s.http.post(signed(s), data=text_xml("", "1003", kind="image"))
        assert reply_of(await r.read())["Content"] == TEXT_ONLY
        assert fake.sent == []


async def test_slow_answer_goes_out_as_a_customer_service_message(tmp_path: Path) -> None:
    async with wechat_stack(tmp_path, passive_deadline_s=0.001) as (s, fake):
        body = text_xml("我的订单什么时候到", "2001")
        r = await s.http.post(signed(s), data=body)
        assert r.status == 200 and await r.text() == "success"
        await wait_until(lambda: len(fake.sent) == 1, 10, "customer-service message")
        assert (
            fake.sent[0]["touser"] == "oCustomer1" and "订单号" in fake.sent[0]["text"]["content"]
        )
        r = await s.http.post(signed(s), data=body)  # WeChat's retry
        assert await r.text() == "success"
        await asyncio.sleep(0.3)
        assert len(fake.sent) == 1 and await node_session_count(s) == 1


async def test_handoff_uses_the_transfer_to_human_customer_service(tmp_path: Path) -> None:
    async with wechat_stack(tmp_path) as (s, fake):
        r = await s.http.post(signed(s), data=text_xml("转人工", "3001"))
        assert reply_of(await r.read())["MsgType"] == "transfer_customer_service"
        await wait_until(lambda: len(fake.sent) == 1, 10, "the bot's hand-off words")
        assert "人工" in fake.sent[0]["text"]["content"]
        event = (
            b"<xml><ToUserName>gh_shop</ToUserName><FromUserName>oX</FromUserName>"
            b"<CreateTime>1</CreateTime><MsgType>event</MsgType><Event>subscribe</Event></xml>"
        )
        r = await s.http.post(signed(s), data=event)
        assert await r.text() == "success"
