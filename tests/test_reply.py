"""The reply decision with the real demo tenant, its knowledge base and entity patterns."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kefu.config import TenantConfig, load_tenant_config, tenant_config_from_mapping
from kefu.node.dialog.knowledge import KBAnswer, KnowledgeBase, entries_from_dicts
from kefu.node.dialog.reply import (
    ReplyDecision,
    TurnHistory,
    decide_reply,
    is_explicit_human_request,
    kb_answer_for,
)
from kefu.node.dialog.scenario import ScenarioChoice, select_scenario
from kefu.node.nlu.entities import EntityExtractor

DEMO = Path(__file__).resolve().parents[1] / "node" / "tenants" / "demo-shop.yaml"
HAN = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def demo() -> TenantConfig:
    return load_tenant_config(DEMO)


@pytest.fixture(scope="module")
def kb(demo: TenantConfig) -> KnowledgeBase:
    return KnowledgeBase(entries_from_dicts(e.model_dump() for e in demo.kb.entries))


@pytest.fixture(scope="module")
def extractor() -> EntityExtractor:
    return EntityExtractor()


class Chat:
    """Runs turns through routing, KB retrieval and the reply decision, keeping history."""

    def __init__(
        self,
        cfg: TenantConfig,
        kb: KnowledgeBase,
        extractor: EntityExtractor,
        *,
        lang: str = "zh",
        channel: str = "web",
        user: dict[str, Any] | None = None,
        history: TurnHistory | None = None,
    ) -> None:
        self.cfg, self.kb, self.extractor = cfg, kb, extractor
        self.lang, self.channel, self.user = lang, channel, user or {}
        self.history = history or TurnHistory(vip=bool(self.user.get("vip")))
        self.scenario: str | None = None
        self.choice: ScenarioChoice | None = None

    def say(
        self,
        text: str,
        intent: str | None = None,
        confidence: float = 0.0,
        *,
        sentiment: str = "neutral",
        score: float = 0.9,
        values: Mapping[str, object] | None = None,
        lang: str | None = None,
    ) -> ReplyDecision:
        lang = lang or self.lang
        self.choice = select_scenario(
            self.cfg,
            intent=intent,
            intent_confidence=confidence,
            text=text,
            lang=lang,
            channel=self.channel,
            entry_path=None,
            user_attributes=self.user,
            recent_intents=self.history.recent_intents,
            current_scenario=self.scenario,
        )
        self.scenario = self.choice.scenario_id
        decision = decide_reply(
            config=self.cfg,
            scenario=self.choice,
            intent=intent,
            intent_confidence=confidence,
            sentiment=sentiment,
            sentiment_score=score,
            lang=lang,
            text=text,
            entities=self.extractor.extract(text, lang=lang),
            kb_result=kb_answer_for(self.kb, self.cfg, self.scenario, text=text, lang=lang),
            history=self.history,
            values=values,
        )
        self.history = self.history.advance(decision, intent=intent, sentiment=sentiment)
        return decision


@pytest.fixture
def zh(demo: TenantConfig, kb: KnowledgeBase, extractor: EntityExtractor) -> Chat:
    return Chat(demo, kb, extractor, lang="zh")


@pytest.fixture
def en(demo: TenantConfig, kb: KnowledgeBase, extractor: EntityExtractor) -> Chat:
    return Chat(demo, kb, extractor, lang="en")


def assert_no_placeholder(text: str) -> None:
    assert "{" not in text and "}" not in text, text


# ------------------------------------------------------------------- knowledge base


def test_kb_answer_for_a_kb_question_in_both_languages(zh: Chat, en: Chat) -> None:
    d = zh.say("七天无理由退货怎么算", "return_refund", 0.8)
    assert zh.scenario == "returns_refunds"
    assert d.source == "kb" and d.kb_entry_id == "seven-day-return"
    assert "7 天" in d.text and HAN.search(d.text)
    assert not (d.handoff or d.clarify or d.low_confidence)

    d = en.say("The invoice title is wrong, can it be corrected?", "invoice", 0.9)
    assert en.scenario == "invoice"
    assert d.source == "kb" and d.kb_entry_id == "invoice-change"
    assert not HAN.search(d.text) and "invoice" in d.text.lower()


def test_kb_answer_counts_even_when_the_intent_is_unsure(zh: Chat) -> None:
    d = zh.say("发票抬头开错了能改吗", "invoice", 0.4)
    assert d.source == "kb" and d.kb_entry_id == "invoice-change"
    assert not d.low_confidence  # the bot understood: the KB was sure


def test_kb_answer_is_re_read_in_the_customer_language(
    demo: TenantConfig, kb: KnowledgeBase
) -> None:
    zh_result = kb.answer("退款多久到账", lang="zh", scopes=["returns"])
    assert isinstance(zh_result, KBAnswer)
    d = decide_reply(
        config=demo, scenario="returns_refunds", intent="return_refund", intent_confidence=0.5,
        sentiment="neutral", sentiment_score=0.9, lang="en", text="退款多久到账",
        kb_result=zh_result,
    )  # fmt: skip
    assert d.source == "kb" and d.lang == "en" and not HAN.search(d.text)


def test_kb_threshold_and_scope_come_from_the_scenario(
    demo: TenantConfig, kb: KnowledgeBase
) -> None:
    real = kb.answer("退款多久到账", lang="zh", scopes=["payment"])
    assert isinstance(real, KBAnswer) and real.entry.id == "refund-timeline"
    borderline = replace(real, confidence=0.6)  # between 0.55 (default) and 0.65 (payment)

    def decide(scenario: str, result: KBAnswer) -> ReplyDecision:
        return decide_reply(
            config=demo, scenario=scenario, intent=None, intent_confidence=0.0,
            sentiment="neutral", sentiment_score=0.9, lang="zh", text="退款多久到账",
            kb_result=result,
        )  # fmt: skip

    assert decide("returns_refunds", borderline).source == "kb"
    below = decide("payment", borderline)
    assert below.source == "clarify" and below.kb_entry_id is None
    assert "退款" in below.text  # the entry is offered as a "did you mean" candidate
    # an entry outside the scenario's KB scopes is never given
    outside = decide("invoice", real)
    assert outside.source == "clarify" and "退款" not in outside.text


# ------------------------------------------------------------------------- templates


def test_seed_example_asks_for_the_order_number_then_answers_personally(zh: Chat) -> None:
    d = zh.say("我的订单什么时候到", "delivery_tracking", 0.93)
    assert zh.scenario == "logistics"
    assert d.template_id == "ask_order_number" and d.asked_for == "order_number"
    assert d.text == zh.cfg.templates["ask_order_number"].zh
    assert zh.history.pending_intent == "delivery_tracking"

    # the next turn carries only the number: it resumes the tracking question
    values = {
        "courier": "顺丰速运", "tracking_number": "SF1234567890123", "status": "派送中",
        "updated_at": "今天 09:12", "eta": "今天 18:00 前",
    }  # fmt: skip
    d = zh.say("2024112512345678", "order_query", 0.4, values=values)
    assert zh.scenario == "logistics" and zh.choice is not None and zh.choice.stayed
    assert d.source == "template" and d.template_id == "delivery_tracking"
    assert "顺丰速运" in d.text and "SF1234567890123" in d.text and "今天 18:00 前" in d.text
    assert not d.low_confidence and zh.history.pending_intent is None


def test_missing_backend_data_gives_a_safe_wording(zh: Chat, en: Chat) -> None:
    zh.say("我的订单什么时候到", "delivery_tracking", 0.93)
    d = zh.say("订单号是2024112512345678", "order_query", 0.3)
    assert d.source == "fallback" and d.offer_human
    assert "2024112512345678" in d.text and "转人工" in d.text
    assert {"status", "eta"} <= set(d.missing_fields)
    assert_no_placeholder(d.text)

    d = en.say("Where is order SO-88231?", "delivery_tracking", 0.9)
    assert d.source == "fallback" and "SO-88231" in d.text and "agent" in d.text
    assert not HAN.search(d.text)
    assert_no_placeholder(d.text)


def test_template_filled_with_entities_and_values(zh: Chat, en: Chat) -> None:
    d = en.say(
        "What's the status of order SO-88231?", "order_query", 0.92,
        values={"status": "shipped", "created_at": "Nov 3", "amount": "¥299"},
    )  # fmt: skip
    assert en.scenario == "orders"
    assert d.source == "template" and d.template_id == "order_query"
    assert d.text.startswith("Order SO-88231 is currently: shipped.")
    # entities alone can fill a template: order number and e-mail from the text
    d = zh.say("订单2024112512345678的发票发到 li.na@example.com", "invoice", 0.9)
    assert d.source == "template" and d.template_id == "invoice"
    assert "2024112512345678" in d.text and "li.na@example.com" in d.text
    # this turn's entity beats a stale slot value of the same name
    d = zh.say(
        "订单2024112512345678的发票发到 li.na@example.com", "invoice", 0.9,
        values={"order_number": "SO-1111", "email": "old@example.com"},
    )  # fmt: skip
    assert "2024112512345678" in d.text and "SO-1111" not in d.text


def test_optional_aside_is_dropped_when_its_value_is_missing(zh: Chat, en: Chat) -> None:
    d = en.say("This is the worst service ever, I want to complain", "complaint", 0.9)
    assert d.template_id == "complaint" and "ticket" not in d.text
    assert_no_placeholder(d.text)
    assert "recorded and a customer-care" in d.text  # no stray spaces left behind
    d = zh.say("我要投诉", "complaint", 0.9, values={"ticket_id": "T-20241125-0042"})
    assert "工单号 T-20241125-0042" in d.text


@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.parametrize("with_order", [False, True])
def test_no_placeholder_ever_leaks(
    demo: TenantConfig, kb: KnowledgeBase, extractor: EntityExtractor, lang: str, with_order: bool
) -> None:
    text = "订单号 2024112512345678" if with_order else "嗯"
    for intent in demo.intent_labels:
        for scenario in demo.scenarios:
            d = decide_reply(
                config=demo, scenario=scenario.id, intent=intent, intent_confidence=0.95,
                sentiment="neutral", sentiment_score=0.9, lang=lang, text=text,
                entities=extractor.extract(text), kb_result=None,
            )  # fmt: skip
            assert_no_placeholder(d.text)
            assert bool(HAN.search(d.text)) == (lang == "zh"), (intent, scenario.id, d)


def test_greeting_and_out_of_scope_use_their_templates(zh: Chat, en: Chat) -> None:
    d = zh.say("你好", "greeting", 0.97)
    assert d.source == "template" and d.template_id == "greeting"
    d = en.say("What's the weather like in Paris?", "out_of_scope", 0.9)
    assert d.template_id == "out_of_scope" and d.text == en.cfg.templates["out_of_scope"].en


# -------------------------------------------------------------------------- hand-off


def test_explicit_request_transfers(zh: Chat, en: Chat) -> None:
    d = zh.say("转人工", "human_agent", 0.96)
    assert d.handoff and d.handoff_reason == "explicit_request" and d.source == "handoff"
    assert "转接" in d.text and HAN.search(d.text)
    assert_no_placeholder(d.text)  # the template's {queue_position} is unknown here
    # the phrase is enough even when the intent model is unsure
    d = en.say("Can I talk to a real person please", "out_of_scope", 0.3)
    assert d.handoff and d.handoff_reason == "explicit_request" and not HAN.search(d.text)
    # with the queue position known, the tenant's template is used
    d = zh.say("人工", "human_agent", 0.9, values={"queue_position": 3})
    assert d.template_id == "human_agent" and "还有 3 位" in d.text


def test_explicit_request_phrases() -> None:
    for text in ("转人工", "人工客服在吗？", "人工！", "agent", "Agent.", "talk to a human",
                 "I want to speak with a representative", "human please"):  # fmt: skip
        assert is_explicit_human_request(text), text
    for text in ("我想了解人工智能", "Is the agent fee refundable?", "human resources",
                 "真人秀"):  # fmt: skip
        assert not is_explicit_human_request(text), text


def test_complaint_offers_a_human_and_vip_complaint_transfers(
    demo: TenantConfig, kb: KnowledgeBase, extractor: EntityExtractor, zh: Chat
) -> None:
    d = zh.say("你们服务太差了，我要投诉", "complaint", 0.9)
    assert zh.scenario == "general"
    assert d.handoff_reason == "complaint" and not d.handoff and d.offer_human
    assert "转接人工客服" in d.text
    # the offer was made because a condition held: "好的" accepts it
    d = zh.say("好的", "greeting", 0.5)
    assert d.handoff and d.handoff_reason == "explicit_request"

    vip = Chat(demo, kb, extractor, lang="zh", user={"vip": True})
    d = vip.say("你们服务太差了，我要投诉", "complaint", 0.9)
    assert vip.scenario == "vip_service"
    assert d.handoff and d.handoff_reason == "complaint"  # offer_human: false → at once
    assert d.template_id == "vip_complaint" and d.text.startswith("尊敬的 VIP 会员")


def test_consecutive_negative_turns_trigger_the_handoff_condition(
    demo: TenantConfig, kb: KnowledgeBase, extractor: EntityExtractor, zh: Chat
) -> None:
    first = zh.say("快递怎么还没到，气死了", "delivery_tracking", 0.9, sentiment="negative")
    assert first.negative and first.soothing and first.handoff_reason is None
    second = zh.say("到底什么时候能到！！", "delivery_tracking", 0.9, sentiment="negative")
    assert second.handoff_reason == "negative_sentiment" and second.offer_human
    assert not second.handoff and zh.history.consecutive_negative == 2
    # payment hands off after one negative turn
    pay = Chat(demo, kb, extractor, lang="en")
    d = pay.say("I was charged twice, this is outrageous", "payment_issue", 0.9,
                sentiment="negative")  # fmt: skip
    assert pay.scenario == "payment" and d.handoff_reason == "negative_sentiment"
    # a weak negative score is not negative sentiment
    calm = Chat(demo, kb, extractor, lang="en")
    d = calm.say("I was charged twice", "payment_issue", 0.9, sentiment="negative", score=0.4)
    assert not (d.negative or d.soothing or d.handoff_reason)


def test_consecutive_low_confidence_turns_offer_then_transfer(zh: Chat) -> None:
    first = zh.say("啊啊啊啊", "out_of_scope", 0.3)
    assert first.clarify and first.low_confidence and first.source == "clarify"
    assert first.handoff_reason is None
    second = zh.say("嗯嗯呃呃", "greeting", 0.25)
    assert second.handoff_reason == "low_confidence" and second.offer_human
    assert second.source == "handoff" and not second.handoff and "转人工" in second.text
    third = zh.say("好", "greeting", 0.4)
    assert third.handoff and third.handoff_reason == "explicit_request"


def test_plugin_failure_offers_a_human(demo: TenantConfig, extractor: EntityExtractor) -> None:
    text = "Where is order SO-88231?"
    choice = ScenarioChoice(scenario_id="logistics", reason="test")
    d = decide_reply(
        config=demo, scenario=choice, intent="delivery_tracking", intent_confidence=0.9,
        sentiment="neutral", sentiment_score=0.9, lang="en", text=text,
        entities=extractor.extract(text), plugin_failed=True,
    )  # fmt: skip
    assert d.handoff_reason == "plugin_failure" and d.offer_human and not d.handoff
    assert "SO-88231" in d.text and not HAN.search(d.text)
    # a scenario id the config no longer has is answered as the fallback scenario would
    gone = decide_reply(
        config=demo, scenario="removed-scenario", intent="greeting", intent_confidence=0.9,
        sentiment="neutral", sentiment_score=0.9, lang="en", text="hi",
    )  # fmt: skip
    assert gone.template_id == "greeting"


def test_account_security_offers_a_human_after_one_unclear_turn(en: Chat) -> None:
    d = en.say("my account thing is weird", "account_security", 0.5)
    assert en.scenario == "account_security"
    assert d.handoff_reason == "low_confidence" and d.offer_human and not HAN.search(d.text)


def test_a_yes_after_a_clarifying_question_is_not_a_handoff(zh: Chat) -> None:
    d = zh.say("我要退货，快递怎么寄回", "return_refund", 0.45)
    assert d.clarify and not zh.history.human_offered
    assert not zh.say("是的", "greeting", 0.4).handoff


def test_handoff_conditions_disabled_by_policy(
    demo: TenantConfig, kb: KnowledgeBase, extractor: EntityExtractor
) -> None:
    data = demo.model_dump(mode="json")
    data["session_policy"]["default"]["handoff"]["explicit_request"] = False
    cfg = tenant_config_from_mapping(data)
    d = Chat(cfg, kb, extractor).say("转人工", "human_agent", 0.95)
    assert not d.handoff and d.handoff_reason is None
    assert d.template_id != "human_agent"  # it would announce a transfer that is not happening


# -------------------------------------------------------------------------- soothing


def test_soothing_prefix_and_offer_in_the_customer_language(zh: Chat, en: Chat) -> None:
    cfg = zh.cfg
    d = zh.say("怎么还没到，太慢了", "delivery_tracking", 0.9, sentiment="negative")
    assert d.soothing
    assert any(d.text.startswith(p) for p in cfg.soothing.prefixes.zh)
    assert d.text.endswith(cfg.soothing.handoff_offer.zh) and d.offer_human

    d = en.say("Where is my parcel? This is ridiculous", "delivery_tracking", 0.9,
               sentiment="negative", score=0.8)  # fmt: skip
    assert d.soothing and any(d.text.startswith(p) for p in cfg.soothing.prefixes.en)
    assert d.text.endswith(cfg.soothing.handoff_offer.en) and not HAN.search(d.text)


def test_no_soothing_where_the_scenario_disables_it(zh: Chat) -> None:
    d = zh.say("发票抬头开错了能改吗，烦死了", "invoice", 0.9, sentiment="negative")
    assert zh.scenario == "invoice" and d.negative and not d.soothing
    assert not any(d.text.startswith(p) for p in zh.cfg.soothing.prefixes.zh)


def test_soothing_does_not_apologise_twice(zh: Chat) -> None:
    d = zh.say("你们服务太差了，我要投诉", "complaint", 0.9, sentiment="negative")
    assert d.soothing and d.text.startswith("非常抱歉给您带来了不好的体验")
    assert d.text.count("抱歉") == 1


# ---------------------------------------------------------------------- clarification


def test_clarification_for_gibberish_in_both_languages(zh: Chat, en: Chat) -> None:
    d = en.say("asdfgh qwerty zxcv", "out_of_scope", 0.22)
    assert d.source == "clarify" and d.clarify and not d.handoff
    assert "rephrase" in d.text and not HAN.search(d.text)
    d = zh.say("呃呃呃呃呃", "greeting", 0.3)
    assert d.source == "clarify" and "换个说法" in d.text


def test_after_the_clarify_attempts_a_human_is_offered(
    demo: TenantConfig, kb: KnowledgeBase, extractor: EntityExtractor
) -> None:
    chat = Chat(demo, kb, extractor, lang="en", history=TurnHistory(consecutive_clarifications=1))
    d = chat.say("asdfgh qwerty zxcv", "out_of_scope", 0.22)
    assert not d.clarify and d.offer_human
    assert d.template_id == "no_answer" and d.text == demo.templates["no_answer"].en


def test_unsupported_language_falls_back_to_the_tenant_default(zh: Chat) -> None:
    d = zh.say("????", None, 0.0, lang="und")
    assert d.lang == "zh" and HAN.search(d.text)


# --------------------------------------------------------------------------- history


def test_history_round_trips_and_tolerates_damage() -> None:
    h = TurnHistory(
        recent_intents=("greeting", "order_query"), recent_sentiments=("neutral",),
        consecutive_low_confidence=1, consecutive_negative=2, consecutive_clarifications=1,
        vip=True, human_offered=True, pending_intent="delivery_tracking",
    )  # fmt: skip
    assert TurnHistory.from_dict(h.to_dict()) == h
    damaged = TurnHistory.from_dict(
        {"recent_intents": "oops", "consecutive_negative": -3, "vip": "yes", "extra": 1}
    )
    assert damaged == TurnHistory()
    assert TurnHistory.from_dict(None) == TurnHistory()


def test_history_keeps_only_recent_turns(zh: Chat) -> None:
    for _ in range(8):
        zh.say("你好", "greeting", 0.95)
    assert zh.history.recent_intents == ("greeting",) * 5
