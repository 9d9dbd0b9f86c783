"""Language detection, entity extraction and log redaction on realistic zh and en messages."""

from __future__ import annotations

import logging
import time
from datetime import date

import pytest

from kefu.errors import ConfigError
from kefu.node.nlu.entities import (
    DEFAULT_PATTERNS,
    Entity,
    EntityExtractor,
    EntityPattern,
    LookupTable,
    id_number_checksum_ok,
    merge_patterns,
    parse_amount,
    parse_date,
    parse_zh_number,
)
from kefu.node.nlu.language import detect_language
from kefu.node.nlu.redaction import RedactingFilter, find_sensitive, luhn_valid, redact

TODAY = date(2024, 11, 25)  # a Monday
VALID_ID = "11010519491231002X"  # the GB 11643 worked example
EXTRACTOR = EntityExtractor()


def ents(text: str, **kw: object) -> list[tuple[str, str, object]]:
    return [(e.type, e.value, e.normalized) for e in EXTRACTOR.extract(text, today=TODAY, **kw)]


def only(text: str, type_: str) -> Entity:
    found = [e for e in EXTRACTOR.extract(text, today=TODAY) if e.type == type_]
    assert len(found) == 1, (text, found)
    return found[0]


# --------------------------------------------------------------------------- language


@pytest.mark.parametrize(
    "text",
    [
        "我的订单什么时候到",
        "my快递到哪了",
        "iPhone 16 有货吗",
        "AirPods Pro 2 的降噪坏了",
        "Apple Watch Series 9 GPS 45mm 有吗",
        "退款多久到账？",
        "What is 快递",
        "订单号2024112512345678",
        "SF1234567890 到哪了",
        "ok？",  # typed with a Chinese IME
        "发票抬头写错了，能重开吗",
    ],
)
def test_chinese_and_mixed_messages_are_zh(text: str) -> None:
    d = detect_language(text)
    assert d.lang == "zh", d
    assert 0 < d.confidence <= 1


@pytest.mark.parametrize(
    "text",
    [
        "Where is my order?",
        "order 2024112512345678",
        "I want a refund for order SO-88231",
        "Can you tell me where my 快递 is",
        "My card was charged twice, $45.20 each",
        "I want to talk to a human",
        "ｏｒｄｅｒ status please",  # full-width Latin letters
        "hi",
    ],
)
def test_english_messages_are_en(text: str) -> None:
    assert detect_language(text).lang == "en"


@pytest.mark.parametrize(
    "text", ["2024112512345678", "???", "", "   ", "123 456", "SF1234567890", "SO-88231", "👍"]
)
def test_no_language_evidence_is_und(text: str) -> None:
    d = detect_language(text)
    assert d.lang == "und" and d.confidence == 0.0 and not d.known


def test_confidence_and_cjk_ratio() -> None:
    pure = detect_language("您好，请问退款多久到账")
    mixed = detect_language("iPhone 16 有货吗")
    assert pure.cjk_ratio == 1.0 and pure.confidence == 1.0
    assert 0 < mixed.cjk_ratio < 1 and mixed.confidence < pure.confidence
    assert detect_language("hello, I want a refund").cjk_ratio == 0.0
    assert detect_language("hi").confidence < detect_language("where is my parcel").confidence


def test_session_prior_breaks_weak_evidence_only() -> None:
    # Nothing to go on: the session language, at low confidence.
    assert detect_language("2024112512345678", prior="en").lang == "en"
    assert detect_language("???", prior="zh").confidence < 0.5
    # One or two English words in a Chinese session stay Chinese…
    assert detect_language("ok", prior="zh").lang == "zh"
    assert detect_language("thanks!", prior="zh").lang == "zh"
    # …but a real English sentence switches, and Han characters are never overridden.
    assert detect_language("where is my parcel now", prior="zh").lang == "en"
    assert detect_language("好的", prior="en").lang == "zh"
    assert detect_language("ok？", prior="en").lang == "en"  # IME punctuation alone is weak


# --------------------------------------------------------------------------- order & tracking


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("我的订单2024112512345678什么时候到", "2024112512345678"),
        ("order 2024112512345678 hasn't arrived", "2024112512345678"),
        ("2024112512345678", "2024112512345678"),
        ("订单号：SO-88231", "SO-88231"),
        ("refund for so-88231 please", "SO-88231"),
        ("Order #88231 was wrong", "88231"),
        ("订单号是 723456789012", "723456789012"),
        ("订单号１２３４５６７８", "12345678"),  # full-width digits, offsets preserved
    ],
)
def test_order_numbers(text: str, value: str) -> None:
    e = only(text, "order_number")
    assert e.normalized == value
    assert text[e.start : e.end] == e.value
    assert not e.flags


@pytest.mark.parametrize(
    ("text", "digits", "where"),
    [
        ("订单号后四位5678", "5678", "suffix"),
        ("订单尾号是5678，还没发货", "5678", "suffix"),
        ("订单号最后4位是 5678", "5678", "suffix"),
        ("尾号5678的那个订单退了吗", "5678", "suffix"),
        ("the order ending in 5678", "5678", "suffix"),
        ("last 4 digits of my order are 5678", "5678", "suffix"),
        ("订单号前四位2024", "2024", "prefix"),
    ],
)
def test_partial_order_numbers(text: str, digits: str, where: str) -> None:
    e = only(text, "order_number")
    assert e.normalized == digits and e.value == digits
    assert e.flags == {"partial", where}


def test_phone_tail_is_not_a_partial_order() -> None:
    assert all(e.type != "order_number" for e in EXTRACTOR.extract("手机尾号5678的订单"))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("快递单号SF1234567890到哪了", "SF1234567890"),
        ("sf1234567890", "SF1234567890"),
        ("my tracking is YT1234567890123", "YT1234567890123"),
        ("JD0012345678901 还没到", "JD0012345678901"),
        ("中通 ZTO123456789012", "ZTO123456789012"),
        ("韵达YD1234567890", "YD1234567890"),
        ("极兔jt1234567890123", "JT1234567890123"),
        ("运单号：773012345678", "773012345678"),
        ("tracking number: 9876543210", "9876543210"),
    ],
)
def test_tracking_numbers(text: str, value: str) -> None:
    assert only(text, "tracking_number").normalized == value


def test_tracking_needs_ten_to_fifteen_digits() -> None:
    assert ents("SF123456789") == []  # 9 digits
    assert ents("SF1234567890123456") == []  # 16 digits


# --------------------------------------------------------------------------- phone, email, ID


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("手机13812345678", "13812345678"),
        ("call me on 138-1234-5678", "13812345678"),
        ("+86 138 1234 5678", "13812345678"),
        ("0086 15912345678", "15912345678"),
        ("电话：１３８１２３４５６７８", "13812345678"),
        ("我的号码是19912345678。", "19912345678"),
    ],
)
def test_phones(text: str, value: str) -> None:
    e = only(text, "phone")
    assert e.normalized == value and not e.flags


def test_masked_phone_is_recognised_as_masked() -> None:
    for text in ("注册手机138****5678", "phone 138 **** 5678", "138xxxx5678"):
        e = only(text, "phone")
        assert e.flags == {"masked"}
        assert e.normalized == "138****5678"


def test_not_phones() -> None:
    assert ents("12812345678") == []  # 12x is not a mobile prefix
    assert ents("1381234567") == []  # ten digits


def test_emails() -> None:
    assert only("邮箱是Foo.Bar@Example.com谢谢", "email").normalized == "foo.bar@example.com"
    assert only("send to li_ming+shop@mail.qq.com.", "email").normalized == (
        "li_ming+shop@mail.qq.com"
    )


def test_id_numbers() -> None:
    assert id_number_checksum_ok(VALID_ID)
    e = only(f"身份证号{VALID_ID}", "id_number")
    assert e.normalized == VALID_ID and not e.flags
    lower = only(VALID_ID.lower(), "id_number")
    assert lower.normalized == VALID_ID
    typo = only("110105194912310021", "id_number")
    assert typo.flags == {"invalid_checksum"}
    assert [e.type for e in EXTRACTOR.extract("110105194913310021")] == []  # month 13


# --------------------------------------------------------------------------- overlaps


def test_overlaps_resolved_by_priority_and_span() -> None:
    # A 16-digit order number is not also a phone (13012345678 sits inside it).
    assert ents("2024013012345678") == [("order_number", "2024013012345678", "2024013012345678")]
    assert ents("我的订单2024013012345678") == ents("2024013012345678")
    # A phone inside a tracking number or an email address is not extracted.
    assert [t for t, _, _ in ents("SF13812345678")] == ["tracking_number"]
    assert [t for t, _, _ in ents("13812345678@163.com")] == ["email"]
    # The cue wins: the customer says this 11-digit number is an order.
    assert ents("订单号13812345678") == [("order_number", "13812345678", "13812345678")]
    assert ents("运单号13812345678") == [("tracking_number", "13812345678", "13812345678")]


def test_many_entities_in_one_message_in_order() -> None:
    text = (
        f"订单2024112512345678昨天付了¥299，快递SF1234567890还没到，"
        f"手机13812345678，邮箱a@b.cn，身份证{VALID_ID}"
    )
    got = EXTRACTOR.extract(text, today=TODAY)
    assert [e.type for e in got] == [
        "order_number",
        "date",
        "amount",
        "tracking_number",
        "phone",
        "email",
        "id_number",
    ]
    assert [e.start for e in got] == sorted(e.start for e in got)
    for e in got:
        assert text[e.start : e.end] == e.value


# --------------------------------------------------------------------------- amounts


@pytest.mark.parametrize(
    ("text", "currency", "value"),
    [
        ("¥299", "CNY", "299.00"),
        ("￥299", "CNY", "299.00"),  # full-width yen sign
        ("付了299元", "CNY", "299.00"),
        ("59.9元包邮吗", "CNY", "59.90"),
        ("it cost $45.20", "USD", "45.20"),
        ("RMB 100", "CNY", "100.00"),
        ("rmb100", "CNY", "100.00"),
        ("100 RMB", "CNY", "100.00"),
        ("1,299元", "CNY", "1299.00"),
        ("1.5万元", "CNY", "15000.00"),
        ("两百块", "CNY", "200.00"),
        ("退我两百五十块钱", "CNY", "250.00"),
        ("九块九包邮", "CNY", "9.90"),
        ("9块9", "CNY", "9.90"),
        ("30块钱", "CNY", "30.00"),
        ("20 dollars", "USD", "20.00"),
        ("US$15", "USD", "15.00"),
        ("HK$88", "HKD", "88.00"),
        ("€12.5", "EUR", "12.50"),
        ("100美元", "USD", "100.00"),
    ],
)
def test_amounts(text: str, currency: str, value: str) -> None:
    assert only(text, "amount").normalized == {"currency": currency, "value": value}


def test_two_pieces_is_not_two_yuan() -> None:
    assert ents("两块蛋糕") == []
    assert only("两块钱", "amount").normalized == {"currency": "CNY", "value": "2.00"}


def test_zh_numbers() -> None:
    cases = {"两百": 200, "十五": 15, "二十": 20, "一百零五": 105, "一千五": 1500,
             "两百五": 250, "三万五": 35000, "一万二千": 12000, "3千": 3000}  # fmt: skip
    assert {k: parse_zh_number(k) for k in cases} == cases
    assert parse_zh_number("一二") is None
    assert parse_zh_number("abc") is None
    assert parse_amount("two hundred") is None


# --------------------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2024-11-20", "2024-11-20"),
        ("2024/11/2", "2024-11-02"),
        ("2024年11月20日下的单", "2024-11-20"),
        ("11月20号下的单", "2024-11-20"),
        ("11月20日", "2024-11-20"),
        ("十一月二十日", "2024-11-20"),
        ("1月3号能到吗", "2025-01-03"),  # the nearest Jan 3 is next year's
        ("Nov 3", "2024-11-03"),
        ("ordered on November 3rd, 2023", "2023-11-03"),
        ("3 Nov", "2024-11-03"),
        ("the 3rd of November", "2024-11-03"),
        ("昨天", "2024-11-24"),
        ("今天能发货吗", "2024-11-25"),
        ("明天", "2024-11-26"),
        ("前天", "2024-11-23"),
        ("大前天", "2024-11-22"),
        ("后天", "2024-11-27"),
        ("上周三", "2024-11-20"),
        ("上个星期五", "2024-11-22"),
        ("这周五", "2024-11-29"),
        ("下周一", "2024-12-02"),
        ("礼拜天", "2024-12-01"),
        ("3天前", "2024-11-22"),
        ("两周前", "2024-11-11"),
        ("yesterday", "2024-11-24"),
        ("the day before yesterday", "2024-11-23"),
        ("tomorrow", "2024-11-26"),
        ("last Tuesday", "2024-11-19"),
        ("last Monday", "2024-11-18"),  # today is Monday: the one a week ago
        ("next Friday", "2024-11-29"),
        ("this Friday", "2024-11-29"),
        ("ordered 3 items on Sunday", "2024-11-24"),  # the nearest Sunday: yesterday
        ("arriving Wednesday?", "2024-11-27"),
        ("May 2", "2025-05-02"),
        ("two days ago", "2024-11-23"),
        ("in 3 days", "2024-11-28"),
    ],
)
def test_dates_relative_to_today(text: str, iso: str) -> None:
    assert only(text, "date").normalized == iso


def test_date_false_friends() -> None:
    assert ents("I may 2 hours ago have ordered") == []
    assert ents("支持7天无理由退货吗") == []
    assert ents("下单后48小时内发货") == []
    assert ents("双11买的") == []


def test_date_flags_and_invalid_dates() -> None:
    assert only("昨天", "date").flags == {"relative"}
    assert only("11月20号", "date").flags == {"year_inferred"}
    assert only("2024-11-20", "date").flags == frozenset()
    assert ents("2月30日") == []
    assert ents("2024-13-01") == []
    assert parse_date("2月29日", date(2024, 3, 1)) == (date(2024, 2, 29), {"year_inferred"})


# --------------------------------------------------------------------------- config


def test_lookup_tables_and_language_filter() -> None:
    carriers = LookupTable(
        type="carrier",
        values={"SF": ["顺丰", "SF Express"], "JD": ["京东物流", "京东快递"]},
    )
    ex = EntityExtractor(None, [carriers])
    got = ex.extract("顺丰还是京东快递更快？ I prefer sf express", today=TODAY)
    assert [(e.value, e.normalized) for e in got] == [
        ("顺丰", "SF"),
        ("京东快递", "JD"),
        ("sf express", "SF"),  # longest synonym wins over "SF"
    ]
    assert ex.extract("sfx is not a carrier") == []  # Latin synonyms match whole words
    # Language filter: Chinese-only date words are skipped for an English message.
    assert [e.type for e in EXTRACTOR.extract("昨天", lang="en", today=TODAY)] == []
    assert [e.type for e in EXTRACTOR.extract("昨天", lang="zh", today=TODAY)] == ["date"]


def test_tenant_patterns_override_defaults_per_type() -> None:
    mine = EntityPattern(
        type="order_number", regex=r"(?<![A-Z0-9])KF(?P<value>\d{8})", normaliser="digits"
    )
    ex = EntityExtractor(merge_patterns([mine]))
    assert [(e.type, e.normalized) for e in ex.extract("KF12345678，手机13812345678")] == [
        ("order_number", "12345678"),
        ("phone", "13812345678"),
    ]
    assert [e.type for e in ex.extract("2024112512345678")] == []  # default order rule gone
    assert len(merge_patterns([])) == len(DEFAULT_PATTERNS)


def test_bad_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"patterns\[0\]\.regex"):
        EntityExtractor([EntityPattern(type="x", regex="(unclosed")])
    with pytest.raises(ConfigError, match="unknown normaliser 'nope'"):
        EntityExtractor([EntityPattern(type="x", regex="x", normaliser="nope")])
    clash = LookupTable(type="carrier", values={"SF": ["顺丰"], "ZTO": ["顺丰"]})
    with pytest.raises(ConfigError, match="maps to both"):
        EntityExtractor(None, [clash])


def test_entity_to_dict() -> None:
    d = only("¥299", "amount").to_dict()
    assert d["normalized"] == {"currency": "CNY", "value": "299.00"}
    assert d["start"] == 0 and d["end"] == 4 and d["flags"] == []


# --------------------------------------------------------------------------- redaction


def test_redaction_removes_personal_data() -> None:
    text = (
        f"手机13812345678，+86 139-1234-5678，邮箱li.ming@qq.com，身份证{VALID_ID}，"
        "卡号6222 0212 3456 7890 128"
    )
    assert redact(text) == "手机<phone>，<phone>，邮箱<email>，身份证<id_number>，卡号<card>"
    assert redact("card 4111111111111111 declined") == "card <card> declined"
    assert redact("5555555555554444") == "<card>"
    assert redact("电话１３８１２３４５６７８") == "电话<phone>"  # full-width digits
    assert redact("110105194912310021") == "<id_number>"  # a mistyped ID is still an ID


def test_redaction_keeps_order_and_tracking_numbers() -> None:
    assert not luhn_valid("2024112512345678")
    kept = [
        "订单号2024112512345678还没到",
        "order 2024112512345678",
        "2024112512345678",
        "SO-88231",
        "快递SF13812345678",  # a phone-shaped run inside a tracking number
        "YT1234567890123",
        "已经打码的138****5678",
        "付了299元",
    ]
    for text in kept:
        assert redact(text) == text, text
    # Luhn-valid but date-prefixed: not a card prefix, so still an order number.
    assert luhn_valid("2024112512345670")
    assert redact("2024112512345670") == "2024112512345670"
    # A Luhn-valid card-like number: kept after an order cue, redacted without one.
    assert redact("订单号：4111111111111111") == "订单号：4111111111111111"
    assert redact("my card 4111111111111111") == "my card <card>"


def test_find_sensitive_spans() -> None:
    spans = find_sensitive("13812345678@163.com 13912345678")
    assert [(s.kind, s.start, s.end) for s in spans] == [("email", 0, 19), ("phone", 20, 31)]


def test_redacting_filter_covers_message_args_and_exceptions() -> None:
    logger = logging.getLogger("kefu.test.redaction")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("turn from %s: %s", "13812345678", "email a@b.com, order 2024112512345678")
        logger.warning("phone as int %d", 13812345678)
        try:
            raise ValueError("bad id 11010519491231002X")
        except ValueError:
            logger.exception("lookup failed for %s", "c@d.org")
    finally:
        logger.removeHandler(handler)
    fmt = logging.Formatter("%(message)s")
    out = [fmt.format(r) for r in records]
    assert out[0] == "turn from <phone>: email <email>, order 2024112512345678"
    assert out[1] == "phone as int <phone>"
    assert out[2].startswith("lookup failed for <email>")
    assert "ValueError: bad id <id_number>" in out[2]
    assert "11010519491231002X" not in out[2]


def test_adversarial_long_input_stays_fast() -> None:
    # Runs of numerals, digits and cue words once made some patterns quadratic (~1 s at 4k
    # chars, 6 ms now). The bound only catches a super-linear blow-up (an 8k input would take
    # minutes), never a merely slow or busy machine.
    for text in ("一" * 8000, "1," * 4000, "订单号" * 2700, "a@" * 4000):
        t0 = time.perf_counter()
        EXTRACTOR.extract(text, today=TODAY)
        redact(text)
        detect_language(text)
        assert time.perf_counter() - t0 < 20.0, text[:10]
