"""Knowledge-base retrieval: Chinese + English BM25, scopes, confidence, clarification, fusion."""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from kefu.errors import ConfigError
from kefu.node.dialog.knowledge import (
    Clarification,
    KBAnswer,
    KBEntry,
    KnowledgeBase,
    RetrievalConfig,
    entries_from_dicts,
    guess_lang,
    tokenize,
)


def _e(
    id: str, scopes: Sequence[str], zh: list[str], en: list[str], azh: str, aen: str | None = None
) -> KBEntry:
    answers = {"zh": azh} if aen is None else {"zh": azh, "en": aen}
    return KBEntry(id=id, scopes=tuple(scopes), questions={"zh": zh, "en": en}, answers=answers)


SHOP = [
    _e(
        "shipping_time",
        ["logistics"],
        ["多久发货", "下单后几天能发货", "什么时候发货"],
        [
            "When will my order ship?",
            "How long does it take to ship an order?",
            "How many days until my order is dispatched?",
        ],
        "付款后48小时内发货。",
        "Orders ship within 48 hours of payment.",
    ),
    _e(
        "delivery_time",
        ["logistics"],
        ["快递几天能到", "我的订单什么时候到", "收货要等多久"],
        [
            "When will my package arrive?",
            "How long does delivery take?",
            "How many days for delivery?",
        ],
        "发货后一般2-4天送达。",
        "Delivery usually takes 2-4 days after dispatch.",
    ),
    _e(
        "tracking",
        ["logistics"],
        ["怎么查物流", "快递单号在哪里看", "物流信息查不到"],
        [
            "How do I track my order?",
            "Where can I find my tracking number?",
            "Tracking information is not updating",
        ],
        "在“我的订单”中点击“查看物流”即可。",
        "Open My Orders and tap Track Package.",
    ),
    _e(
        "shipping_fee",
        ["logistics", "orders"],
        ["运费谁出", "运费多少钱", "包邮吗"],
        ["Who pays for shipping?", "How much is the shipping fee?", "Is shipping free?"],
        "订单满99元包邮，退货运费由我们承担。",
        "Orders over ¥99 ship free; we pay return shipping.",
    ),
    _e(
        "return_policy",
        ["after_sales"],
        ["可以退货吗", "七天无理由退货", "怎么申请退货"],
        ["What is your return policy?", "Can I return an item?", "How do I return a product?"],
        "签收后7天内可无理由退货。",
        "You can return items within 7 days of delivery, no reason needed.",
    ),
    _e(
        "refund_time",
        ["after_sales", "payment"],
        ["退款多久到账", "退款什么时候到", "钱什么时候退回来"],
        [
            "How long does a refund take?",
            "When will I get my money back?",
            "When will my refund be credited?",
        ],
        "退款审核通过后1-3个工作日原路退回。",
        "Refunds reach your original payment method within 1-3 business days of approval.",
    ),
    _e(
        "exchange",
        ["after_sales"],
        ["可以换货吗", "尺码不合适怎么换"],
        ["Can I exchange an item?", "How do I exchange for a different size?"],
        "签收后15天内可换货。",
        "Exchanges are accepted within 15 days of delivery.",
    ),
    _e(
        "invoice",
        ["invoice", "orders"],
        ["怎么开发票", "可以开增值税专用发票吗", "发票什么时候寄"],
        [
            "How do I get an invoice?",
            "Can you issue a VAT invoice?",
            "When will the invoice be sent?",
        ],
        "在订单详情页点击“申请发票”，电子发票24小时内发送到邮箱。",
        "Request an invoice on the order page; the e-invoice is emailed within 24 hours.",
    ),
    _e(
        "password_reset",
        ["account"],
        ["忘记密码怎么办", "怎么重置密码", "修改登录密码"],
        [
            "How do I reset my password?",
            "I forgot my password",
            "How can I change my login password?",
        ],
        "在登录页点击“忘记密码”，通过手机验证码重置。",
        "Tap Forgot Password on the login page and verify with an SMS code.",
    ),
    _e(
        "account_locked",
        ["account"],
        ["账号被冻结了", "账户被锁定怎么办"],
        ["My account is locked", "How do I unlock my account?"],
        "账户因多次输错密码被锁定，30分钟后自动解锁。",
        "Accounts lock after repeated wrong passwords and unlock after 30 minutes.",
    ),
    _e(
        "payment_methods",
        ["payment"],
        ["支持哪些付款方式", "可以用微信支付吗", "能用信用卡付款吗"],
        [
            "What payment methods do you accept?",
            "Can I pay with a credit card?",
            "Do you accept PayPal?",
        ],
        "支持微信支付、支付宝、银联和信用卡。",
        "We accept WeChat Pay, Alipay, UnionPay and credit cards.",
    ),
    _e(
        "payment_failed",
        ["payment"],
        ["付款失败怎么办", "支付不成功", "扣款了但订单显示未付款"],
        [
            "My payment failed",
            "Why was my card declined?",
            "I was charged but the order shows unpaid",
        ],
        "请检查余额或更换支付方式；重复扣款会在24小时内自动退回。",
        "Check your balance or try another method; duplicate charges are returned within 24 hours.",
    ),
    _e(
        "cancel_order",
        ["orders"],
        ["怎么取消订单", "订单可以取消吗", "不想要了能取消吗"],
        ["How do I cancel my order?", "Can I cancel an order after paying?"],
        "发货前可在订单页直接取消。",
        "You can cancel on the order page before it ships.",
    ),
    _e(
        "change_address",
        ["orders", "logistics"],
        ["怎么修改收货地址", "地址填错了"],
        ["How do I change my delivery address?", "I entered the wrong address"],
        "发货前可在订单页修改地址。",
        "You can edit the address on the order page before it ships.",
    ),
    _e(
        "human_agent",
        ["*"],
        ["转人工", "人工客服", "我要找真人"],
        ["Talk to a human", "Can I speak to an agent?"],
        "正在为您转接人工客服。",
        "Connecting you to a human agent.",
    ),
    # Chinese answer only: an English customer gets it, flagged as a fallback.
    _e(
        "reward_points",
        ["account"],
        ["会员积分怎么用", "积分可以抵现吗"],
        ["How do I use my reward points?"],
        "100积分可抵1元，结算时勾选使用积分。",
    ),
]


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase(SHOP)


def toy_embed(texts: Sequence[str], dim: int = 512) -> np.ndarray:
    """Deterministic stand-in for a sentence encoder: hashed character 2- and 3-grams.

    Unlike the stemmed word index it sees "cancellation" as close to "cancel".
    """
    out = np.zeros((len(texts), dim))
    for i, text in enumerate(texts):
        s = " " + "".join(c.lower() for c in text if c.isalnum() or c == " ") + " "
        for n in (2, 3):
            for k in range(len(s) - n + 1):
                out[i, zlib.crc32(s[k : k + n].encode()) % dim] += 1.0
    return out


# -- tokenisation ----------------------------------------------------------------------------------


def test_tokenize_cjk_unigrams_and_bigrams() -> None:
    toks = tokenize("退款多久到账")
    assert {"退款", "到账", "多久"} <= set(toks)
    assert {"退", "款"} <= set(toks)
    # Function characters are no unigram of their own but stay inside bigrams.
    mine = tokenize("我的订单")
    assert "的" not in mine and "我的" in mine and "订单" in mine


def test_tokenize_english_normalisation() -> None:
    assert tokenize("Refunds refunded REFUNDING refund!") == ["refund"] * 4
    assert len(set(tokenize("ship ships shipped shipping"))) == 1
    assert len(set(tokenize("arrive arrived arriving"))) == 1
    assert len(set(tokenize("invoice invoices"))) == 1
    assert tokenize("Ｒｅｆｕｎｄ，ｐｌｅａｓｅ") == ["refund"]  # full-width text folds
    assert tokenize("order 12345 and 678") == ["order", "0", "0"]  # digits collapse
    assert tokenize("the a to is") == []  # function words only
    assert tokenize("") == [] and tokenize("？！。…") == []


def test_tokenize_mixed_language() -> None:
    toks = tokenize("我的order什么时候到？")
    assert "order" in toks and "什么" in toks and "时候" in toks
    assert guess_lang("我的order什么时候到") == "zh"
    assert guess_lang("where is my 快递 now please") == "en"


# -- Chinese and English retrieval -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "entry_id"),
    [
        ("退款多久到账", "refund_time"),
        ("怎么开发票", "invoice"),
        ("运费谁出", "shipping_fee"),
        ("发票怎么开？", "invoice"),
        ("退款", "refund_time"),
        ("忘记密码了怎么办", "password_reset"),
        ("我的order什么时候到", "delivery_time"),
    ],
)
def test_chinese_queries_with_two_character_words(
    kb: KnowledgeBase, query: str, entry_id: str
) -> None:
    result = kb.answer(query)
    assert isinstance(result, KBAnswer), result
    assert result.entry.id == entry_id
    assert result.lang == "zh" and not result.fallback
    assert result.text == result.entry.answers["zh"]


@pytest.mark.parametrize(
    ("query", "entry_id"),
    [
        ("How long do refunds take?", "refund_time"),
        ("I forgot my password, how can I reset it?", "password_reset"),
        ("which payment methods are accepted", "payment_methods"),
        ("returning items", "return_policy"),
        ("my card got declined", "payment_failed"),
        ("cancelling my order", "cancel_order"),
        ("how do I get invoices", "invoice"),
        ("who pays the shipping fees", "shipping_fee"),
        ("my accounts got locked", "account_locked"),
    ],
)
def test_english_paraphrase_plural_and_tense(kb: KnowledgeBase, query: str, entry_id: str) -> None:
    result = kb.answer(query)
    assert isinstance(result, KBAnswer), result
    assert result.entry.id == entry_id
    assert result.lang == "en"
    assert result.hit.matched_lang == "en"


def test_answer_follows_customer_language(kb: KnowledgeBase) -> None:
    en = kb.answer("How long does a refund take?")
    assert isinstance(en, KBAnswer) and en.lang == "en"
    assert en.text.startswith("Refunds reach")
    # The customer's configured language wins over the language the question was typed in.
    zh = kb.answer("How long does a refund take?", lang="zh")
    assert isinstance(zh, KBAnswer) and zh.lang == "zh" and zh.text.startswith("退款审核")
    en2 = kb.answer("退款多久到账", lang="en")
    assert isinstance(en2, KBAnswer) and en2.lang == "en" and not en2.fallback


def test_missing_language_falls_back_and_says_so(kb: KnowledgeBase) -> None:
    result = kb.answer("How do I use my reward points?", lang="en")
    assert isinstance(result, KBAnswer)
    assert result.fallback and result.lang == "zh" and result.requested_lang == "en"
    assert "积分" in result.text


# -- scopes ----------------------------------------------------------------------------------------


def test_scope_filter_excludes_other_business_lines(kb: KnowledgeBase) -> None:
    ids = [h.entry.id for h in kb.search("退款多久到账", scopes={"logistics"}, top_k=20)]
    assert "refund_time" not in ids
    assert all({"logistics", "*"} & set(kb.get(i).scopes) for i in ids)
    result = kb.answer("退款多久到账", scopes={"logistics"})
    assert not (isinstance(result, KBAnswer) and result.entry.id == "refund_time")

    inside = kb.answer("退款多久到账", scopes={"after_sales"})
    assert isinstance(inside, KBAnswer) and inside.entry.id == "refund_time"
    # A bare string is one scope, not a set of characters.
    assert kb.search("退款多久到账", scopes="payment")[0].entry.id == "refund_time"


def test_wildcard_scope_is_visible_everywhere(kb: KnowledgeBase) -> None:
    result = kb.answer("转人工", scopes={"payment"})
    assert isinstance(result, KBAnswer) and result.entry.id == "human_agent"
    assert [h.entry.id for h in kb.search("转人工", scopes=())] == ["human_agent"]
    assert kb.search("退款多久到账", scopes=()) == []


# -- confidence and clarification ------------------------------------------------------------------


@pytest.mark.parametrize(
    "query", ["今天天气怎么样", "tell me a joke", "what's the meaning of life"]
)
def test_unrelated_query_asks_instead_of_guessing(kb: KnowledgeBase, query: str) -> None:
    result = kb.answer(query)
    assert isinstance(result, Clarification)
    assert result.reason in {"no_match", "low_confidence"}
    assert all(h.score < 0.5 for h in kb.search(query))


def test_confidence_is_meaningful(kb: KnowledgeBase) -> None:
    exact = kb.search("怎么重置密码")[0]
    assert exact.entry.id == "password_reset" and exact.score > 0.9
    assert exact.lexical_score == pytest.approx(1.0)
    partial = kb.search("passwd reset")[0]
    assert partial.entry.id == "password_reset"
    assert 0 < partial.score < exact.score and partial.lexical_score < 1.0
    hits = kb.search("what payment methods", top_k=5)
    assert all(0.0 <= h.score <= 1.0 and 0.0 <= h.lexical_score <= 1.0 for h in hits)
    assert sum(h.score for h in hits) <= 1.0 + 1e-9
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.dense_score is None for h in hits)


def test_weak_match_offers_candidates_in_both_languages(kb: KnowledgeBase) -> None:
    result = kb.answer("可以用支付宝付款吗？")  # 支付宝 is in no question: weak match only
    assert isinstance(result, Clarification) and result.reason == "low_confidence"
    assert result.candidates[0].entry.id == "payment_methods"
    zh = result.prompt()
    assert zh.startswith("抱歉") and "1. 支持哪些付款方式" in zh and "人工" in zh
    en = result.prompt("en", offer_human=False)
    assert "Did you mean" in en and "1. What payment methods do you accept?" in en
    assert "agent" not in en


def test_two_good_candidates_are_ambiguous(kb: KnowledgeBase) -> None:
    result = kb.answer("Is shipping free for returned items?")
    assert isinstance(result, Clarification) and result.reason == "ambiguous"
    assert {h.entry.id for h in result.candidates[:2]} == {"shipping_fee", "return_policy"}


def test_threshold_is_respected(kb: KnowledgeBase) -> None:
    assert isinstance(kb.answer("passwd reset"), Clarification)
    loose = kb.answer("passwd reset", threshold=0.2)
    assert isinstance(loose, KBAnswer) and loose.entry.id == "password_reset"
    assert isinstance(kb.answer("怎么重置密码", threshold=0.999), Clarification)


def test_exact_ties_are_deterministic_and_never_answered() -> None:
    twins = KnowledgeBase(
        [
            _e("b_first", ["s"], ["怎么退货"], ["How do I return it?"], "甲", "A"),
            _e("a_second", ["s"], ["怎么退货"], ["How do I return it?"], "乙", "B"),
            _e("other", ["s"], ["怎么开发票"], [], "丙", "C"),
        ]
    )
    hits = twins.search("怎么退货")
    assert [h.entry.id for h in hits[:2]] == ["b_first", "a_second"]  # knowledge-base order
    assert hits[0].score == hits[1].score < 0.5
    result = twins.answer("怎么退货")
    assert isinstance(result, Clarification) and result.reason == "ambiguous"
    assert [h.entry.id for h in result.candidates[:2]] == ["b_first", "a_second"]


def test_variant_language_breaks_ties_within_an_entry() -> None:
    kb = KnowledgeBase([_e("phone", ["s"], ["iPhone 15"], ["iPhone 15"], "有货", "In stock")])
    assert kb.search("iphone 15", lang="en")[0].matched_lang == "en"
    assert kb.search("iphone 15", lang="zh")[0].matched_lang == "zh"


@pytest.mark.parametrize("query", ["", "   ", "？！。", "the"])
def test_empty_queries(kb: KnowledgeBase, query: str) -> None:
    assert kb.search(query) == []
    result = kb.answer(query)
    assert isinstance(result, Clarification) and result.reason == "empty"
    assert not result.candidates
    assert "换个说法" in result.prompt("zh") and "rephrase" in result.prompt("en")


def test_empty_knowledge_base() -> None:
    empty = KnowledgeBase([])
    assert len(empty) == 0 and empty.search("退款") == []
    assert isinstance(empty.answer("退款"), Clarification)


# -- dense fusion ----------------------------------------------------------------------------------


def test_dense_fusion_changes_the_ranking() -> None:
    calls: list[int] = []

    def embed(texts: Sequence[str]) -> np.ndarray:
        calls.append(len(texts))
        return toy_embed(texts)

    lexical = KnowledgeBase(SHOP)
    fused = KnowledgeBase(SHOP, embed=embed)
    n_variants = sum(len(q) for e in SHOP for q in e.questions.values())
    assert calls == [n_variants] and fused.has_dense and not lexical.has_dense

    # "cancellation" is no stem of "cancel": lexically only "order" matches, a three-way tie.
    lex_hits = lexical.search("order cancellation")
    assert lex_hits[0].entry.id != "cancel_order"
    assert lex_hits[0].relevance == pytest.approx(lex_hits[1].relevance)
    hits = fused.search("order cancellation")
    assert calls == [n_variants, 1]  # one embedding per query
    assert hits[0].entry.id == "cancel_order"
    assert hits[0].dense_score is not None and hits[0].dense_score > hits[1].dense_score
    assert hits[0].score > hits[1].score

    # Exact matches stay confident, unrelated text still asks.
    exact = fused.answer("退款多久到账")
    assert isinstance(exact, KBAnswer) and exact.entry.id == "refund_time"
    assert isinstance(fused.answer("tell me a joke"), Clarification)


def test_fusion_weights_are_configurable() -> None:
    lexical_only = KnowledgeBase(
        SHOP, embed=toy_embed, config=RetrievalConfig(lexical_weight=1.0, dense_weight=0.0)
    )
    plain = KnowledgeBase(SHOP)
    for q in ("order cancellation", "退款多久到账", "who pays the shipping fees"):
        a, b = lexical_only.search(q), plain.search(q)
        assert [h.entry.id for h in a] == [h.entry.id for h in b]
        assert a[0].dense_score is not None
    dense_only = KnowledgeBase(
        SHOP, embed=toy_embed, config=RetrievalConfig(lexical_weight=0.0, dense_weight=1.0)
    )
    assert dense_only.search("cancellation")[0].entry.id == "cancel_order"
    assert plain.search("cancellation") == []


def test_embed_with_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        KnowledgeBase(SHOP, embed=lambda texts: np.zeros((1, 8)))


# -- validation ------------------------------------------------------------------------------------


def test_invalid_entries_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        KnowledgeBase([SHOP[0], SHOP[0]])
    with pytest.raises(ConfigError, match="answer"):
        KBEntry(id="x", scopes=("s",), questions={"zh": ["退款"]}, answers={"zh": " "})
    with pytest.raises(ConfigError, match="question"):
        KBEntry(id="x", scopes=("s",), questions={"en": []}, answers={"en": "a"})
    with pytest.raises(ConfigError, match="language"):
        KBEntry(id="x", scopes=("s",), questions={"fr": ["allo"]}, answers={"en": "a"})
    with pytest.raises(ConfigError):
        RetrievalConfig(lexical_weight=0.0, dense_weight=0.0)


def test_entries_from_dicts() -> None:
    rows = [
        {
            "id": "invoice",
            "scopes": ["invoice"],
            "questions": {"zh": ["怎么开发票"], "en": ["How do I get an invoice?"]},
            "answers": {"zh": "订单页申请。", "en": "Request it on the order page."},
            "tags": ["billing"],
        },
        {"id": "broken", "questions": {"zh": ["退款"]}},
    ]
    (entry,) = entries_from_dicts(rows[:1])
    assert entry.scopes == ("invoice",) and entry.tags == ("billing",)
    with pytest.raises(ConfigError) as info:
        entries_from_dicts(rows, path="kb.yaml")
    assert info.value.field == "entries[1].answers" and info.value.path == "kb.yaml"


def test_core_module_imports_no_transport_or_storage() -> None:
    code = (
        "import sys, kefu.node.dialog.knowledge; "
        "print(sorted(m for m in ('grpc', 'nats', 'onnxruntime', 'sqlite3') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
