"""Whole turns through the service layer with the real pieces: demo tenant YAML, SQLite store,
shipped INT8 bundles in the batching runtime, KB, scenario routing and reply decision."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.grpc_node import second_tenant

from kefu.models.store import ModelStore, trust_for
from kefu.node.dialog.conversation import ConversationService
from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG, TenantRegistry
from kefu.node.dialog.turns import InvalidTurn, RateLimited, SessionNotFound, TurnRequest
from kefu.node.nlu.inference import BatchingModelRuntime
from kefu.node.serving.admission import AdmissionController, RateLimit, RateLimiter
from kefu.node.sessions.sqlite_store import sqlite_store_opener
from kefu.node.sessions.store import TurnRole


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ConversationService]:
    store = ModelStore(tmp_path / "models", trust_for(tmp_path))
    store.seed_shipped()
    runtime = BatchingModelRuntime(trust=store.trust, store=store)
    for name in ("demo-shop-intent", "sentiment"):
        await runtime.load(name, name)
    other = second_tenant(tmp_path, "acme", "acme-key")
    registry = await TenantRegistry.open(
        tmp_path, [DEMO_TENANT_CONFIG, other], open_store=sqlite_store_opener()
    )
    svc = ConversationService(
        registry=registry, runtime=runtime, admission=AdmissionController(8, 64, 1.0)
    )
    try:
        yield svc
    finally:
        await registry.close()
        await runtime.close()


async def test_chinese_delivery_question_goes_to_logistics(service: ConversationService) -> None:
    demo = service.registry.tenants["demo-shop"]
    r = await service.converse(demo, TurnRequest(text="我的订单什么时候到", request_id="r1"))
    assert (r.intent, r.scenario, r.language) == ("delivery_tracking", "logistics", "zh")
    assert any("\u4e00" <= c <= "\u9fff" for c in r.reply)  # answered in Chinese
    assert r.model_versions["intent"].startswith("demo-shop-intent@")
    turns = await demo.store.get_turns(r.session_id)
    assert [t.role for t in turns] == [TurnRole.CUSTOMER, TurnRole.BOT]
    assert turns[1].text == r.reply and turns[0].request_id == "r1"


async def test_english_kb_question_gets_an_english_kb_answer(service: ConversationService) -> None:
    demo = service.registry.tenants["demo-shop"]
    r = await service.converse(demo, TurnRequest(text="how do i get a VAT invoice for my order?"))
    assert r.language == "en" and r.intent == "invoice" and r.scenario == "invoice"
    assert r.kb_entry_id  # answered from the knowledge base
    assert not any("\u4e00" <= c <= "\u9fff" for c in r.reply)  # customer's language
    assert "invoice" in r.reply.lower()


async def test_multi_turn_keeps_session_and_remembers_order_number(
    service: ConversationService,
) -> None:
    demo = service.registry.tenants["demo-shop"]
    first = await service.converse(demo, TurnRequest(text="我的订单2024112512345678还没到"))
    second = await service.converse(
        demo, TurnRequest(text="什么时候能到", session_id=first.session_id)
    )
    assert second.session_id == first.session_id and second.seq == 3
    slots = await demo.store.get_slots(first.session_id)
    assert slots["order_number"].value == "2024112512345678"


async def test_another_tenants_session_is_not_found(service: ConversationService) -> None:
    demo, acme = service.registry.tenants["demo-shop"], service.registry.tenants["acme"]
    r = await service.converse(demo, TurnRequest(text="你好"))
    with pytest.raises(SessionNotFound):
        await service.converse(acme, TurnRequest(text="hi", session_id=r.session_id))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "empty"), ("   ", "empty"), ("a" * 4097, "limit is 4096"), ("hi\x00there", "control")],
)
async def test_bad_text_is_refused(service: ConversationService, text: str, fragment: str) -> None:
    demo = service.registry.tenants["demo-shop"]
    with pytest.raises(InvalidTurn, match=fragment):
        await service.converse(demo, TurnRequest(text=text))


async def test_rate_limit_per_tenant(service: ConversationService) -> None:
    service.limiter = RateLimiter(RateLimit(rate=0.001, burst=2))
    demo, acme = service.registry.tenants["demo-shop"], service.registry.tenants["acme"]
    for _ in range(2):
        await service.converse(demo, TurnRequest(text="hi"))
    with pytest.raises(RateLimited) as ei:
        await service.converse(demo, TurnRequest(text="hi"))
    assert ei.value.retry_after > 0
    await service.converse(acme, TurnRequest(text="hi"))  # another tenant is unaffected


async def test_explicit_human_request_hands_off(service: ConversationService) -> None:
    demo = service.registry.tenants["demo-shop"]
    r = await service.converse(demo, TurnRequest(text="转人工"))
    assert r.handoff and r.handoff_id and r.intent == "human_agent"
    handoffs = await demo.store.list_handoffs(session_id=r.session_id)
    assert [h.id for h in handoffs.items] == [r.handoff_id]


async def test_a_scenarios_pinned_models_serve_its_sessions(tmp_path: Path) -> None:
    from kefu.node.nlu.predictions import StaticModelRuntime

    text = DEMO_TENANT_CONFIG.read_text(encoding="utf-8")
    pinned = text.replace(
        "    kb_scopes: [logistics]\n",
        "    kb_scopes: [logistics]\n"
        "    models: {intent: demo-shop-intent@canary, sentiment: sentiment@canary}\n",
        1,
    )
    assert pinned != text
    config = tmp_path / "demo-shop.yaml"
    config.write_text(pinned, encoding="utf-8")
    runtime = StaticModelRuntime(
        {"demo-shop-intent": lambda t: "delivery_tracking", "sentiment": lambda t: "neutral"},
        version="canary",
    )
    registry = await TenantRegistry.open(tmp_path, [config], open_store=sqlite_store_opener())
    try:
        svc = ConversationService(
            registry=registry, runtime=runtime, admission=AdmissionController(8, 64, 1.0)
        )
        tenant = registry.tenants["demo-shop"]
        first = await svc.converse(tenant, TurnRequest(text="我的快递到哪了"))
        assert first.scenario == "logistics"
        assert [m for m, _ in runtime.calls] == ["demo-shop-intent", "sentiment"]
        await svc.converse(tenant, TurnRequest(text="还没收到呢", session_id=first.session_id))
        # The session is in logistics now: its pinned versions answer.
        assert [m for m, _ in runtime.calls[2:]] == [
            "demo-shop-intent@canary",
            "sentiment@canary",
        ]
    finally:
        await registry.close()
