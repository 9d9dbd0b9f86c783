"""Task flows end to end: multi-turn conversations over real gRPC against the real demo order
center (HTTP + its own SQLite, started here on a free port), in Chinese and English, checked
against the order center's final state."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest
import pytest_asyncio

from kefu.dev.stack import DemoStack
from kefu.v1 import node_pb2 as pb

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoStack]:
    async with DemoStack(tmp_path_factory.mktemp("flows")) as s:
        yield s


class Orders:
    """Hands out distinct seeded orders in a given state, so tests never share one."""

    used: ClassVar[set[str]] = set()

    @classmethod
    def take(cls, stack: DemoStack, status: str) -> sqlite3.Row:
        with stack.db() as db:
            for row in db.execute(
                "SELECT o.*, c.phone, c.email FROM orders o JOIN customers c "
                "ON c.id = o.customer_id WHERE o.status = ? ORDER BY o.order_number",
                (status,),
            ):
                if row["order_number"] not in cls.used:
                    cls.used.add(row["order_number"])
                    return row
        raise AssertionError(f"no unused {status} order left")


def status_of(stack: DemoStack, number: str) -> str:
    with stack.db() as db:
        return str(
            db.execute("SELECT status FROM orders WHERE order_number=?", (number,)).fetchone()[0]
        )


async def chat(stack: DemoStack, *texts: str) -> list[pb.ConverseReply]:
    out: list[pb.ConverseReply] = []
    sid = ""
    for text in texts:
        r = await stack.say(text, sid)
        sid = r.session_id
        out.append(r)
    return out


# ------------------------------------------------------------------ lookups


async def test_delivery_tracking_zh_asks_for_the_order_then_answers_live(
    stack: DemoStack,
) -> None:
    order = Orders.take(stack, "shipped")
    asked, answer = await chat(stack, "我的订单什么时候到", order["order_number"])
    assert asked.intent == "delivery_tracking" and "订单号" in asked.text
    with stack.db() as db:
        ship = db.execute(
            "SELECT * FROM shipments WHERE order_number=?", (order["order_number"],)
        ).fetchone()
    assert ship["tracking_number"] in answer.text and ship["eta"] in answer.text
    assert "运单号" in answer.text and not answer.handoff
    calls = (await stack.tenant_store().get_slots(answer.session_id))["_plugin_calls"].value
    assert [(c["plugin"], c["outcome"]) for c in calls] == [
        ("get_order", "ok"),
        ("get_tracking", "ok"),
    ]
    assert all(c["latency_ms"] > 0 and c["at"] for c in calls)


async def test_delivery_tracking_en_with_the_order_number_in_the_question(
    stack: DemoStack,
) -> None:
    order = Orders.take(stack, "delivered")
    (r,) = await chat(stack, f"where is my package? order {order['order_number']}")
    assert r.language == "en" and "tracking number" in r.text and "delivered" in r.text


async def test_tracking_an_unshipped_order_says_so(stack: DemoStack) -> None:
    order = Orders.take(stack, "paid")
    (r,) = await chat(stack, f"我的订单{order['order_number']}什么时候到")
    assert "还没有发货" in r.text


async def test_order_query_zh_and_en(stack: DemoStack) -> None:
    a, b = Orders.take(stack, "paid"), Orders.take(stack, "delivered")
    zh = await chat(stack, "帮我查一下订单", a["order_number"])
    assert "已付款，待发货" in zh[-1].text and a["address"] in zh[-1].text
    en = await chat(stack, "I want to check my order status", b["order_number"])
    assert "currently: delivered" in en[-1].text


async def test_a_bare_order_number_looks_the_order_up(stack: DemoStack) -> None:
    order = Orders.take(stack, "delivered")
    (r,) = await chat(stack, f"订单号 {order['order_number']}")
    assert "已签收" in r.text and order["order_number"] in r.text and not r.handoff


async def test_unknown_order_number_is_refused_and_asked_again(stack: DemoStack) -> None:
    order = Orders.take(stack, "delivered")
    _asked, bad, good = await chat(stack, "我要退货", "2024010199999999", order["order_number"])
    assert "没有找到订单 2024010199999999" in bad.text and "订单号" in bad.text
    assert "退货原因" in good.text  # moved on to the next slot


# ------------------------------------------------------------------ state changes


async def test_address_change_en_updates_the_order(stack: DemoStack) -> None:
    order = Orders.take(stack, "paid")
    new = "Room 501, 88 Jianguo Road, Chaoyang, Beijing"
    replies = await chat(
        stack,
        "I need to change the delivery address of my order",
        order["order_number"],
        new,
        "yes",
    )
    assert "yes or no" in replies[2].text and new in replies[2].text
    assert "now" in replies[3].text
    with stack.db() as db:
        row = db.execute(
            "SELECT address FROM orders WHERE order_number=?", (order["order_number"],)
        ).fetchone()
    assert row["address"] == new


async def test_address_change_zh_after_shipping_is_refused(stack: DemoStack) -> None:
    order = Orders.take(stack, "shipped")
    replies = await chat(
        stack,
        f"我想改一下订单{order['order_number']}的收货地址",
        "上海市浦东新区世纪大道100号3栋1202室",
        "是的",
    )
    assert "已经发货，无法再修改地址" in replies[-1].text
    with stack.db() as db:
        row = db.execute(
            "SELECT address FROM orders WHERE order_number=?", (order["order_number"],)
        ).fetchone()
    assert row["address"] == order["address"]


async def test_cancellation_zh_confirmed_cancels(stack: DemoStack) -> None:
    order = Orders.take(stack, "paid")
    _asked, confirm, done = await chat(stack, "帮我取消订单", order["order_number"], "是的")
    assert "确认要取消吗" in confirm.text
    assert "已取消" in done.text and status_of(stack, order["order_number"]) == "cancelled"


async def test_cancellation_en_confirmation_refused_changes_nothing(stack: DemoStack) -> None:
    order = Orders.take(stack, "paid")
    confirm, refused = await chat(stack, f"I want to cancel my order {order['order_number']}", "no")
    assert "yes or no" in confirm.text and "nothing was changed" in refused.text
    assert status_of(stack, order["order_number"]) == "paid"


async def test_return_request_en_creates_a_return(stack: DemoStack) -> None:
    order = Orders.take(stack, "delivered")
    replies = await chat(
        stack,
        "I'd like to return an item and get a refund",
        order["order_number"],
        "the size is too small",
        "yes",
    )
    with stack.db() as db:
        ret = db.execute(
            "SELECT * FROM returns WHERE order_number=?", (order["order_number"],)
        ).fetchone()
    assert ret is not None and ret["reason"] == "the size is too small"
    assert ret["id"] in replies[-1].text


async def test_invoice_zh_request_issues_an_invoice(stack: DemoStack) -> None:
    order = Orders.take(stack, "delivered")
    replies = await chat(stack, "我要开发票", order["order_number"], "杭州某某科技有限公司", "确认")
    with stack.db() as db:
        inv = db.execute(
            "SELECT * FROM invoices WHERE order_number=?", (order["order_number"],)
        ).fetchone()
    assert inv is not None and inv["title"] == "杭州某某科技有限公司"
    assert inv["id"] in replies[-1].text and order["email"] in replies[-1].text


async def test_invoice_how_to_question_gets_the_kb_answer_not_the_flow(stack: DemoStack) -> None:
    (r,) = await chat(stack, "how do i get a VAT invoice for my order?")
    assert r.kb_entry_id and "order number" not in r.text.lower()


async def test_invoice_en_request(stack: DemoStack) -> None:
    order = Orders.take(stack, "paid")
    replies = await chat(
        stack, f"I need an invoice for my order {order['order_number']}", "Acme Trading Ltd", "yes"
    )
    assert "issued" in replies[-1].text
    with stack.db() as db:
        assert (
            db.execute(
                "SELECT title FROM invoices WHERE order_number=?", (order["order_number"],)
            ).fetchone()["title"]
            == "Acme Trading Ltd"
        )


# ------------------------------------------------------------------ dialog management


async def test_topic_switch_then_resume(stack: DemoStack) -> None:
    paid, shipped = Orders.take(stack, "paid"), Orders.take(stack, "shipped")
    _asked, confirm, tracking, done = await chat(
        stack,
        "帮我取消订单",
        paid["order_number"],
        f"我的订单{shipped['order_number']}什么时候到",
        "是的",
    )
    assert "确认要取消吗" in confirm.text
    with stack.db() as db:
        number = db.execute(
            "SELECT tracking_number FROM shipments WHERE order_number=?",
            (shipped["order_number"],),
        ).fetchone()[0]
    # the tracking question is answered, then the suspended cancellation resumes
    assert number in tracking.text and "我们继续刚才的取消订单" in tracking.text
    assert paid["order_number"] in tracking.text.split("我们继续刚才的取消订单")[1]
    assert "已取消" in done.text
    assert status_of(stack, paid["order_number"]) == "cancelled"
    assert status_of(stack, shipped["order_number"]) == "shipped"


async def test_question_mid_flow_is_answered_and_the_flow_waits(stack: DemoStack) -> None:
    order = Orders.take(stack, "paid")
    _confirm, aside, done = await chat(
        stack,
        f"I want to cancel my order {order['order_number']}",
        "what payment methods do you accept?",
        "yes",
    )
    assert "Alipay" in aside.text and "isn't finished yet" in aside.text
    assert "cancelled" in done.text and status_of(stack, order["order_number"]) == "cancelled"


async def test_slot_memory_across_flows(stack: DemoStack) -> None:
    order = Orders.take(stack, "paid")
    replies = await chat(stack, "帮我查一下订单", order["order_number"], "帮我取消订单")
    assert order["order_number"] in replies[-1].text and "确认要取消吗" in replies[-1].text


@pytest.mark.parametrize("stop", ["算了", "never mind"])
async def test_cancel_the_flow(stack: DemoStack, stop: str) -> None:
    order = Orders.take(stack, "paid")
    first = "帮我取消订单" if stop == "算了" else "please cancel my order"
    replies = await chat(stack, first, order["order_number"], stop)
    assert "没有做任何更改" in replies[-1].text or "nothing was changed" in replies[-1].text
    assert status_of(stack, order["order_number"]) == "paid"
    state = (await stack.tenant_store().get_slots(replies[-1].session_id))["_flow"].value
    assert state["active"] is None


async def test_explicit_human_request_mid_flow_hands_off(stack: DemoStack) -> None:
    replies = await chat(stack, "我想改一下收货地址", "转人工")
    assert replies[-1].handoff and replies[-1].handoff_reason == "explicit_request"


# ------------------------------------------------------------------ security + hand-off


async def test_account_freeze_then_full_handoff_cycle(stack: DemoStack) -> None:
    with stack.db() as db:
        cust = db.execute("SELECT * FROM customers WHERE lang='zh' AND status='active'").fetchone()
    ask, confirm, done = await chat(
        stack, "我的账号好像被盗了，帮我冻结一下", cust["phone"], "是的"
    )
    assert "手机号" in ask.text and "确认冻结吗" in confirm.text
    assert done.handoff and done.handoff_reason == "flow_handoff" and done.handoff_id
    assert "转接人工客服" in done.text
    with stack.db() as db:
        assert (
            db.execute("SELECT status FROM customers WHERE id=?", (cust["id"],)).fetchone()[0]
            == "frozen"
        )
    sid, md, stub = done.session_id, stack.metadata, stack.stub

    waiting = await stub.ListHandoffs(pb.ListHandoffsRequest(), metadata=md)
    mine = next(h for h in waiting.handoffs if h.handoff_id == done.handoff_id)
    assert mine.status == pb.HANDOFF_STATUS_WAITING and mine.reason == "flow_handoff"
    assert mine.summary.slots["phone"] == cust["phone"]
    assert "account_security" in mine.summary.intents
    assert [m.role for m in mine.summary.last_messages][-1] == pb.ROLE_BOT
    assert mine.last_user_text == "是的"

    hold = await stack.say("还在吗", sid)
    assert "排队" in hold.text  # waiting: the bot says so

    claimed = await stub.ClaimHandoff(
        pb.ClaimHandoffRequest(handoff_id=done.handoff_id, agent_id="agent-7"), metadata=md
    )
    assert claimed.status == pb.HANDOFF_STATUS_CLAIMED and claimed.agent_id == "agent-7"
    with pytest.raises(Exception) as other:
        await stub.ClaimHandoff(
            pb.ClaimHandoffRequest(handoff_id=done.handoff_id, agent_id="agent-9"), metadata=md
        )
    assert "FAILED_PRECONDITION" in str(other.value)

    silent = await stack.say("你好，有人吗？", sid)
    assert silent.text == ""  # a human owns the session: the bot stays silent
    sent = await stub.AgentReply(
        pb.AgentReplyRequest(
            handoff_id=done.handoff_id, agent_id="agent-7", text="您好，我是安全专员小李。"
        ),
        metadata=md,
    )
    view = await stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=md)
    agent_turn = next(t for t in view.turns if t.seq == sent.turn_seq)
    assert agent_turn.role == pb.ROLE_AGENT and agent_turn.agent_id == "agent-7"
    assert view.status == pb.SESSION_STATUS_HANDOFF and view.handoff_id == done.handoff_id

    closed = await stub.CloseHandoff(
        pb.CloseHandoffRequest(
            handoff_id=done.handoff_id,
            agent_id="agent-7",
            resolution=pb.HANDOFF_RESOLUTION_RETURNED_TO_BOT,
            note="verified by phone",
        ),
        metadata=md,
    )
    assert closed.status == pb.HANDOFF_STATUS_CLOSED and closed.note == "verified by phone"
    assert closed.resolution == pb.HANDOFF_RESOLUTION_RETURNED_TO_BOT
    back = await stack.say("谢谢", sid)
    assert back.text and not back.handoff  # the bot answers again


async def test_account_freeze_en(stack: DemoStack) -> None:
    with stack.db() as db:
        cust = db.execute(
            "SELECT * FROM customers WHERE lang='en' AND status='active' ORDER BY id DESC"
        ).fetchone()
    replies = await chat(
        stack,
        "I think my account was hacked, please freeze it",
        f"my phone is {cust['phone']}",
        "yes",
    )
    assert replies[-1].handoff and "frozen" in replies[-1].text
    with stack.db() as db:
        assert (
            db.execute("SELECT status FROM customers WHERE id=?", (cust["id"],)).fetchone()[0]
            == "frozen"
        )


async def test_plugin_calls_reach_the_metrics(stack: DemoStack) -> None:
    import urllib.request

    assert stack.node is not None
    await chat(stack, "帮我查一下订单", Orders.take(stack, "paid")["order_number"])
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.node.metrics_port}/metrics") as resp:
        body = resp.read().decode()
    assert (
        'kefu_plugin_calls_total{code="",outcome="ok",plugin="get_order",tenant="demo-shop"}'
        in body
    )
    assert "kefu_flow_events_total" in body
