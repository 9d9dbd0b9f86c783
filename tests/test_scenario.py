"""Scenario routing with the real demo tenant: intents, keywords, conditions, staying on topic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kefu.config import TenantConfig, load_tenant_config, tenant_config_from_mapping
from kefu.node.dialog.scenario import (
    DEFAULT_INTENT_THRESHOLD,
    Evidence,
    ScenarioChoice,
    find_keywords,
    intent_threshold,
    select_scenario,
    user_condition_holds,
)

DEMO = Path(__file__).resolve().parents[1] / "node" / "tenants" / "demo-shop.yaml"


@pytest.fixture(scope="module")
def demo() -> TenantConfig:
    return load_tenant_config(DEMO)


def route(
    cfg: TenantConfig,
    text: str,
    intent: str | None = None,
    confidence: float = 0.0,
    *,
    lang: str = "zh",
    channel: str | None = "web",
    entry_path: str | None = None,
    user: dict[str, Any] | None = None,
    recent: tuple[str, ...] = (),
    current: str | None = None,
    threshold: float | None = None,
) -> ScenarioChoice:
    return select_scenario(
        cfg,
        intent=intent,
        intent_confidence=confidence,
        text=text,
        lang=lang,
        channel=channel,
        entry_path=entry_path,
        user_attributes=user,
        recent_intents=recent,
        current_scenario=current,
        threshold=threshold,
    )


# --------------------------------------------------------------------------- intents


def test_seed_example_routes_to_logistics(demo: TenantConfig) -> None:
    choice = route(demo, "我的订单什么时候到", "delivery_tracking", 0.93)
    assert choice.scenario_id == "logistics"
    assert choice.evidence is Evidence.STRONG
    assert "intent:delivery_tracking" in choice.matched
    assert "keyword:什么时候到" in choice.matched
    # "订单" is an orders keyword: the reason names the runner-up for the logs
    assert "logistics" in choice.reason and "orders" in choice.reason
    assert not choice.stayed and not choice.fallback


def test_confident_intent_beats_a_keyword_of_a_higher_priority_scenario(
    demo: TenantConfig,
) -> None:
    # 快递 is a logistics keyword (priority 60) but the customer wants to return something
    choice = route(demo, "我要退货，快递怎么寄回", "return_refund", 0.91)
    assert choice.scenario_id == "returns_refunds"
    # a hesitant intent that a keyword confirms beats a keyword alone
    hesitant = route(demo, "我要退货，快递怎么寄回", "return_refund", 0.45)
    assert hesitant.scenario_id == "returns_refunds"
    assert hesitant.evidence is Evidence.CORROBORATED
    assert "weak_intent:return_refund" in hesitant.matched


def test_intent_below_the_floor_is_ignored(demo: TenantConfig) -> None:
    choice = route(demo, "嗯嗯", "invoice", 0.1)
    assert choice.scenario_id == "general" and choice.fallback
    assert "no scenario matched" in choice.reason


def test_each_demo_intent_reaches_a_scenario_that_templates_it(demo: TenantConfig) -> None:
    for intent in demo.intent_labels:
        choice = route(demo, "……", intent, 0.95, lang="en")
        scenario = demo.scenario(choice.scenario_id)
        assert intent in scenario.templates, (intent, choice)


# -------------------------------------------------------------------------- keywords


def test_keyword_routing_without_a_confident_intent(demo: TenantConfig) -> None:
    zh = route(demo, "我的快递到哪了", None, 0.0)
    assert zh.scenario_id == "logistics" and zh.evidence is Evidence.MODERATE
    assert zh.matched == ["keyword:快递", "keyword:到哪了"]
    en = route(demo, "Where is my PARCEL??", "out_of_scope", 0.2, lang="en")
    assert en.scenario_id == "logistics" and "keyword:parcel" in en.matched
    pay = route(demo, "I was charged twice for one order", "order_query", 0.35, lang="en")
    # weak order_query + keyword "order" (orders, 50) beats the keyword "charged twice" alone
    assert pay.scenario_id == "orders"
    pay_no_intent = route(demo, "I was charged twice for one order", lang="en")
    # equal (moderate) evidence: payment's priority 55 beats orders' 50
    assert pay_no_intent.scenario_id == "payment"


def test_keywords_match_in_either_language(demo: TenantConfig) -> None:
    # an English keyword in a Chinese message, a Chinese keyword in an English one
    assert route(demo, "我的package还没到", lang="zh").scenario_id == "logistics"
    assert route(demo, "where is my 快递", lang="en").scenario_id == "logistics"


def test_find_keywords_word_boundaries_and_substrings() -> None:
    assert find_keywords(["pay"], "I can't pay") == ["pay"]
    assert find_keywords(["pay"], "the payment failed, can I repay?") == []
    assert find_keywords(["return"], "I RETURNED it yesterday") == ["return"]
    assert find_keywords(["arrive"], "when is it arriving") == ["arrive"]
    assert find_keywords(["in stock"], "is it in\tstock?") == ["in stock"]
    assert find_keywords(["VAT"], "ＶＡＴ invoice please") == ["VAT"]  # full-width letters
    assert find_keywords(["order"], "我的order到了吗") == ["order"]  # Han next to Latin
    assert find_keywords(["什么时候到"], "请问什么时候 到？") == ["什么时候到"]
    assert find_keywords(["退款", "退货", "退款"], "申请退款") == ["退款"]
    assert find_keywords(["password"], "passwords") == ["password"]
    assert find_keywords(["login"], "bloginfo") == []


def test_specificity_then_config_order_break_priority_ties(demo: TenantConfig) -> None:
    # orders and invoice share priority 50; "订单号" + "订单" say more than "发票"
    assert route(demo, "订单号发票").scenario_id == "orders"
    # one two-character keyword each: the config order decides (orders is listed first)
    tie = route(demo, "订单发票")
    assert tie.scenario_id == "orders"
    assert route(demo, "订单发票") == tie  # deterministic


# ------------------------------------------------------------------------ conditions


def test_vip_desk_needs_vip_user_and_a_verified_channel(demo: TenantConfig) -> None:
    text = "你们的服务太差了，我要投诉"
    vip = route(demo, text, "complaint", 0.9, user={"vip": True})
    assert vip.scenario_id == "vip_service"
    assert {"channel:web", "user:vip", "intent:complaint"} <= set(vip.matched)
    # channel metadata arrives as strings
    for value in ("true", "1", "yes", "TRUE"):
        assert route(demo, text, "complaint", 0.9, user={"vip": value}).scenario_id == (
            "vip_service"
        )
    assert route(demo, text, "complaint", 0.9, user={"vip": "false"}).scenario_id == "general"
    assert route(demo, text, "complaint", 0.9, user={}).scenario_id == "general"
    # social channels carry no verified membership
    social = route(demo, text, "complaint", 0.9, channel="social", user={"vip": True})
    assert social.scenario_id == "general"
    unknown = route(demo, text, "complaint", 0.9, channel=None, user={"vip": True})
    assert unknown.scenario_id == "general"
    # the VIP desk is for complaints and hand-offs, not for tracking questions
    tracking = route(demo, "我的快递到哪了", "delivery_tracking", 0.9, user={"vip": True})
    assert tracking.scenario_id == "logistics"


def test_user_condition_values() -> None:
    assert user_condition_holds(True, True)
    assert user_condition_holds("yes", True) and not user_condition_holds("maybe", True)
    assert not user_condition_holds(1, "gold")
    assert user_condition_holds("Gold", ["gold", "platinum"])
    assert user_condition_holds(["new", "gold"], "gold")
    assert user_condition_holds("3", 3) and not user_condition_holds(True, 1)
    assert not user_condition_holds(None, False)


def test_entry_path_is_a_hint(demo: TenantConfig) -> None:
    page = "/orders/2024112512345678/tracking?from=app#top"
    bare = route(demo, "2024112512345678", entry_path=page)
    assert bare.scenario_id == "logistics"
    assert "entry_path:/orders/*/tracking" in bare.matched
    # a confident intent for something else wins over the page the chat was opened from
    refund = route(demo, "I want a refund", "return_refund", 0.9, lang="en", entry_path=page)
    assert refund.scenario_id == "returns_refunds"
    # and the page is not a gate: the same question from the home page reaches logistics
    home = route(demo, "我的订单什么时候到", "delivery_tracking", 0.9, entry_path="/")
    assert home.scenario_id == "logistics"


# --------------------------------------------------------------------- staying on topic


def test_bare_order_number_stays_on_the_current_topic(demo: TenantConfig) -> None:
    choice = route(demo, "2024112512345678", "order_query", 0.4, current="logistics")
    assert choice.scenario_id == "logistics" and choice.stayed
    assert "stayed on logistics" in choice.reason and "orders" in choice.reason
    # "订单号" (an orders keyword) agreeing with the hesitant intent is not enough either
    cued = route(demo, "订单号是2024112512345678", "order_query", 0.45, current="logistics")
    assert cued.scenario_id == "logistics" and cued.stayed
    # without a current scenario the hesitant intent is all there is to go on
    fresh = route(demo, "2024112512345678", "order_query", 0.4)
    assert fresh.scenario_id == "orders" and fresh.evidence is Evidence.WEAK


def test_a_passing_keyword_does_not_switch_but_a_confident_intent_does(
    demo: TenantConfig,
) -> None:
    kept = route(demo, "那退款呢", None, 0.0, current="logistics")
    assert kept.scenario_id == "logistics" and kept.stayed
    assert "moderate evidence [keyword:退款]" in kept.reason
    moved = route(demo, "那退款呢", "return_refund", 0.88, current="logistics")
    assert moved.scenario_id == "returns_refunds" and not moved.stayed
    assert moved.reason.startswith("switched from logistics to returns_refunds")


def test_low_confidence_intent_alone_does_not_switch(demo: TenantConfig) -> None:
    assert intent_threshold(demo, "logistics") == DEFAULT_INTENT_THRESHOLD
    text = "这个能弄吗"
    kept = route(demo, text, "return_refund", 0.55, current="logistics")
    assert kept.scenario_id == "logistics" and kept.stayed
    # with a lower threshold the same confidence is strong enough
    moved = route(demo, text, "return_refund", 0.55, current="logistics", threshold=0.5)
    assert moved.scenario_id == "returns_refunds"


def test_gibberish_stays_and_fallback_is_left_freely(demo: TenantConfig) -> None:
    kept = route(demo, "asdf qwer", "out_of_scope", 0.2, lang="en", current="logistics")
    assert kept.scenario_id == "logistics" and kept.stayed and kept.matched == []
    # the fallback is not a topic worth staying on
    left = route(demo, "我的快递呢", None, 0.0, current="general")
    assert left.scenario_id == "logistics"
    assert route(demo, "asdf", None, 0.0, current="general").scenario_id == "general"
    # a scenario removed by a config reload counts as no current scenario
    gone = route(demo, "asdf", None, 0.0, current="no-such-scenario")
    assert gone.scenario_id == "general" and gone.fallback


def test_greeting_mid_conversation_goes_to_the_fallback(demo: TenantConfig) -> None:
    choice = route(demo, "谢谢", "goodbye", 0.97, current="logistics")
    assert choice.scenario_id == "general" and not choice.stayed
    assert choice.evidence is Evidence.STRONG


def test_vip_desk_is_left_when_conditions_no_longer_hold(demo: TenantConfig) -> None:
    # membership lapsed mid-session: the VIP desk cannot be kept
    choice = route(demo, "asdf", None, 0.0, current="vip_service", user={"vip": False})
    assert choice.scenario_id == "general"


# --------------------------------------------------------------- config-driven rules


def _derived(cfg: TenantConfig, **scenario_updates: dict[str, Any]) -> TenantConfig:
    data = cfg.model_dump(mode="json")
    for s in data["scenarios"]:
        s.update(scenario_updates.get(s["id"], {}))
    return tenant_config_from_mapping(data)


def test_recent_intents_trigger_weakly(demo: TenantConfig) -> None:
    orders = demo.scenario("orders").match.model_dump(mode="json")
    cfg = _derived(demo, orders={"match": {**orders, "recent_intents": ["order_query"]}})
    choice = route(cfg, "那个呢", recent=("greeting", "order_query"))
    assert choice.scenario_id == "orders" and choice.evidence is Evidence.WEAK
    assert choice.matched == ["recent_intent:order_query"]
    assert route(cfg, "那个呢", recent=("greeting",)).scenario_id == "general"


def test_conditions_only_scenario_takes_every_matching_request(demo: TenantConfig) -> None:
    vip_match = {"user": {"vip": True}, "channels": ["app"]}
    cfg = _derived(demo, vip_service={"match": vip_match})
    choice = route(cfg, "我的快递到哪了", "delivery_tracking", 0.9, channel="app", user={"vip": 1})
    assert choice.scenario_id == "vip_service" and choice.evidence is Evidence.STRONG
    assert choice.matched == ["channel:app", "user:vip"]
    web = route(cfg, "我的快递到哪了", "delivery_tracking", 0.9, channel="web", user={"vip": 1})
    assert web.scenario_id == "logistics"
