"""Tenant configuration: the demo tenant is complete and consistent; every kind of mistake in
a config file is reported with file, line and field; API keys are stored and checked as hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kefu.config import (
    ModelRef,
    TenantConfig,
    generate_api_key,
    hash_api_key,
    load_tenant_config,
    parse_tenant_config,
    tenant_config_from_mapping,
)
from kefu.config.references import reference_problems
from kefu.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "node" / "tenants" / "demo-shop.yaml"
INTENTS = [
    "delivery_tracking", "order_query", "order_modify", "order_cancel", "return_refund",
    "payment_issue", "account_security", "invoice", "product_inquiry", "human_agent",
    "complaint", "greeting", "goodbye", "out_of_scope",
]  # fmt: skip

MINIMAL = """\
tenant:
  id: t1
  name: {zh: 测试商店, en: Test Shop}
models:
  intent:
    name: test-intent
    labels: [greeting, order_query]
  sentiment: sentiment@2026.11.25
entities:
  patterns:
    - id: order
      type: order_number
      regex: 'SO-[0-9]+'
scenarios:
  - id: orders
    names: {zh: 订单, en: Orders}
    match:
      intents: [order_query]
    kb_scopes: [orders]
    templates:
      order_query: order_reply
  - id: general
    names: {zh: 通用, en: General}
    fallback: true
    templates:
      greeting: hello
templates:
  order_reply:
    zh: 订单 {order_number} 的状态：{status}
    en: "Order {order_number}: {status}"
  hello:
    zh: 您好
    en: Hello
kb:
  scopes:
    orders: {zh: 订单, en: Orders}
  entries:
    - id: cancel
      scopes: [orders]
      questions:
        zh:
          - 怎么取消订单？
        en:
          - How do I cancel an order?
      answers: {zh: 在订单页点击取消。, en: Tap cancel on the order page.}
rate_limits:
  tenant: {rate_per_second: 5, burst: 10}
soothing:
  prefixes: {zh: [非常抱歉，], en: [Sorry about that.]}
  handoff_offer: {zh: 回复“转人工”即可。, en: Reply agent for a human.}
"""


def write(tmp_path: Path, text: str | bytes, name: str = "tenant.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth - 1]


def edit(old: str, new: str, text: str = MINIMAL) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def fails(tmp_path: Path, text: str | bytes) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_tenant_config(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    return info.value


# ------------------------------------------------------------------------------ demo tenant


@pytest.fixture(scope="module")
def demo() -> TenantConfig:
    return load_tenant_config(DEMO)


def test_demo_loads_with_valid_cross_references(demo: TenantConfig) -> None:
    assert demo.tenant.id == "demo-shop" and demo.tenant.enabled
    assert reference_problems(demo) == []
    assert sorted(demo.intent_labels) == sorted(INTENTS)
    assert demo.languages.supported == ("zh", "en")
    assert demo.fallback_scenario.id == "general"
    ids = {s.id for s in demo.scenarios}
    assert {"orders", "logistics", "returns_refunds", "payment", "account_security"} <= ids
    assert {"invoice", "product", "general"} <= ids


def test_demo_has_a_bilingual_template_for_every_intent(demo: TenantConfig) -> None:
    for intent in INTENTS:
        owners = [s for s in demo.scenarios if intent in s.templates]
        assert owners, f"no scenario replies to {intent}"
        tpl = demo.template_for(owners[0].id, intent)
        assert tpl is not None and tpl.zh.strip() and tpl.en.strip()
        # zh text is Chinese, en text is not
        assert any("\u4e00" <= ch <= "\u9fff" for ch in tpl.zh)
        assert not any("\u4e00" <= ch <= "\u9fff" for ch in tpl.en)
    # an intent the scenario does not handle falls back to the fallback scenario's template
    assert demo.template_for("logistics", "greeting") == demo.templates["greeting"]
    rendered = demo.templates["order_query"].render(
        "en", {"order_number": "SO-88231", "status": "shipped", "created_at": "Nov 3",
               "amount": "¥299"}
    )  # fmt: skip
    assert "SO-88231" in rendered and "¥299" in rendered


def test_demo_knowledge_base_is_complete(demo: TenantConfig) -> None:
    entries = demo.kb.entries
    assert len(entries) >= 48
    for e in entries:
        assert len(e.questions.zh) >= 3 and len(e.questions.en) >= 3, e.id
        assert len(e.answers.zh) >= 40 and len(e.answers.en) >= 80, e.id
    scopes_used = {s for e in entries for s in e.scopes}
    assert scopes_used == set(demo.kb.scopes)
    # the seed's example: the logistics scenario sees shipping answers, not invoices
    logistics = {e.id for e in demo.kb_for("logistics")}
    assert "how-to-track" in logistics and "invoice-how" not in logistics
    tags = {t for e in entries for t in e.tags}
    for topic in ("invoice", "vat", "refund", "coupon", "warranty", "password", "sms"):
        assert topic in tags, topic


def test_demo_session_policy_overrides_merge_onto_default(demo: TenantConfig) -> None:
    base = demo.policy_for("logistics")
    assert base == demo.session_policy.default
    pay = demo.policy_for("payment")
    assert pay.retention_days == 180 and pay.kb_confidence_threshold == 0.65
    assert pay.handoff.negative_sentiment_turns == 1
    # fields the override does not name are inherited
    assert pay.handoff.complaint == base.handoff.complaint
    assert pay.max_turns == base.max_turns
    vip = demo.policy_for("vip_service")
    assert vip.handoff.vip and not vip.offer_human
    assert demo.scenario("vip_service").match.user == {"vip": True}


def test_demo_rate_limits_per_channel(demo: TenantConfig) -> None:
    assert demo.rate_limits.for_channel("social").burst == 40
    assert demo.rate_limits.for_channel(None) == demo.rate_limits.tenant
    assert all(b.rate_per_second > 0 for b in demo.rate_limits.channels.values())


@pytest.mark.parametrize(
    ("text", "etype", "value"),
    [
        ("我的订单2024112512345678什么时候到", "order_number", "2024112512345678"),
        ("订单号 SO-88231 帮我查一下", "order_number", "SO-88231"),
        ("运单号SF1234567890123", "tracking_number", "SF1234567890123"),
        ("tracking number YT9876543210", "tracking_number", "YT9876543210"),
        ("JD0012345678901 到哪了", "tracking_number", "JD0012345678901"),
        ("ZTO123456789012", "tracking_number", "ZTO123456789012"),
        ("我的手机是138-1234-5678", "phone", "138-1234-5678"),
        ("call +86 138 1234 5678", "phone", "+86 138 1234 5678"),
        ("付了¥299", "amount", "¥299"),
        ("退我59.9元", "amount", "59.9元"),
        ("I paid $45.20", "amount", "$45.20"),
        ("11月20号下的单", "date", "11月20号"),
        ("ordered on 2024-11-20", "date", "2024-11-20"),
        ("ordered Nov 3", "date", "Nov 3"),
        ("上周三买的", "date", "上周三"),
        ("mail me at li.lei@example.com", "email", "li.lei@example.com"),
    ],
)
def test_demo_entity_patterns_find_the_examples(
    demo: TenantConfig, text: str, etype: str, value: str
) -> None:
    found = {v for p in demo.entities.patterns if p.type == etype for v in p.find_values(text)}
    assert value in found


def test_demo_phone_pattern_does_not_fire_inside_an_order_number(demo: TenantConfig) -> None:
    phone = [p for p in demo.entities.patterns if p.type == "phone"]
    assert all(not p.find_values("订单2024113812345678") for p in phone)


# ------------------------------------------------------------------------ located errors


def test_minimal_config_loads(tmp_path: Path) -> None:
    cfg = load_tenant_config(write(tmp_path, MINIMAL))
    assert cfg.models.sentiment == ModelRef(name="sentiment", version="2026.11.25")
    assert cfg.models.sentiment.ref == "sentiment@2026.11.25"
    assert cfg.templates["order_reply"].placeholders == {"order_number", "status"}
    assert cfg.policy_for("orders").inactivity_timeout_seconds > 0


def test_unknown_field_names_line_field_and_suggestion(tmp_path: Path) -> None:
    text = edit("    kb_scopes: [orders]\n", "    kb_scopes: [orders]\n    priorty: 3\n")
    err = fails(tmp_path, text)
    assert err.line == line_of(text, "priorty")
    assert err.field == "scenarios[0].priorty"
    assert "unknown field 'priorty'" in err.reason and "'priority'" in err.reason


def test_wrong_type_names_line_and_field(tmp_path: Path) -> None:
    text = edit("rate_per_second: 5", "rate_per_second: fast")
    err = fails(tmp_path, text)
    assert err.line == line_of(text, "rate_per_second")
    assert err.field == "rate_limits.tenant.rate_per_second"
    assert "'fast'" in err.reason


def test_rate_limits_must_be_positive(tmp_path: Path) -> None:
    text = edit("burst: 10", "burst: 0")
    err = fails(tmp_path, text)
    assert err.field == "rate_limits.tenant.burst" and "greater than 0" in err.reason


def test_bad_regex_names_its_line(tmp_path: Path) -> None:
    text = edit("regex: 'SO-[0-9]+'", "regex: 'SO-[0-9+'")
    err = fails(tmp_path, text)
    assert err.line == line_of(text, "regex:")
    assert err.field == "entities.patterns[0].regex"
    assert "does not compile" in err.reason


def test_regex_matching_empty_string_is_refused(tmp_path: Path) -> None:
    err = fails(tmp_path, edit("regex: 'SO-[0-9]+'", "regex: '[0-9]*'"))
    assert "empty string" in err.reason


def test_dangling_template_reference(tmp_path: Path) -> None:
    text = edit("order_query: order_reply", "order_query: order_replyy")
    err = fails(tmp_path, text)
    assert err.line == line_of(text, "order_replyy")
    assert err.field == "scenarios[0].templates.order_query"
    assert "unknown template 'order_replyy'" in err.reason and "'order_reply'" in err.reason


def test_dangling_kb_scope_reference(tmp_path: Path) -> None:
    text = edit("    kb_scopes: [orders]", "    kb_scopes:\n      - orders\n      - shipping")
    err = fails(tmp_path, text)
    assert err.line == line_of(text, "- shipping")
    assert err.field == "scenarios[0].kb_scopes[1]"
    assert "unknown KB scope 'shipping'" in err.reason


def test_intent_must_be_a_model_label(tmp_path: Path) -> None:
    text = edit("      intents: [order_query]", "      intents:\n        - order_querry")
    err = fails(tmp_path, text)
    assert err.line == line_of(text, "order_querry")
    assert err.field == "scenarios[0].match.intents[0]"
    assert "did you mean 'order_query'" in err.reason


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    text = edit("  hello:\n", "  order_reply:\n    zh: 重复\n    en: dup\n  hello:\n")
    err = fails(tmp_path, text)
    assert err.line == line_of(text, "  order_reply:", 2)
    assert err.field == "templates.order_reply"
    assert f"first defined on line {line_of(text, '  order_reply:')}" in err.reason


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = edit("      intents: [order_query]", "      intents: [order_query")
    err = fails(tmp_path, text)
    assert err.line is not None
    assert line_of(text, "[order_query") <= err.line <= line_of(text, "[order_query") + 1
    assert "syntax error" in err.reason


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    text = edit("    zh: 您好\n", "    zh: HELLO_GBK\n")
    raw = text.encode("utf-8").replace(b"HELLO_GBK", "您好".encode("gb18030"))
    err = fails(tmp_path, raw)
    assert err.line == line_of(text, "HELLO_GBK")
    assert "UTF-8" in err.reason


def test_missing_required_field_points_at_its_parent(tmp_path: Path) -> None:
    text = edit("    names: {zh: 通用, en: General}\n", "")
    err = fails(tmp_path, text)
    assert err.field == "scenarios[1].names" and "missing" in err.reason
    assert err.line == line_of(text, "- id: general")


def test_all_problems_are_reported_in_line_order(tmp_path: Path) -> None:
    text = edit("rate_per_second: 5", "rate_per_second: -1")
    text = edit("  id: t1", "  id: T 1", text)
    err = fails(tmp_path, text)
    assert err.line == line_of(text, "id: T 1") and err.field == "tenant.id"
    second = f"{tmp_path / 'tenant.yaml'}:{line_of(text, 'rate_per_second')}: "
    assert second + "field 'rate_limits.tenant.rate_per_second'" in str(err)


def test_template_placeholders_must_be_identifiers_and_match(tmp_path: Path) -> None:
    text = edit("{order_number} 的状态", "{order.number} 的状态")
    err = fails(tmp_path, text)
    assert err.field == "templates.order_reply.zh" and "not an identifier" in err.reason
    err = fails(tmp_path, edit('en: "Order {order_number}: {status}"', 'en: "Order {status}"'))
    assert err.field == "templates.order_reply" and "different placeholders" in err.reason


def test_exactly_one_fallback_scenario(tmp_path: Path) -> None:
    err = fails(tmp_path, edit("    fallback: true\n", ""))
    assert "fallback" in err.reason


def test_session_policy_override_must_name_a_scenario(tmp_path: Path) -> None:
    text = MINIMAL + "session_policy:\n  overrides:\n    order:\n      max_turns: 5\n"
    err = fails(tmp_path, text)
    assert err.field == "session_policy.overrides.order"
    assert err.line == line_of(text, "    order:") and "'orders'" in err.reason


def test_empty_file_and_non_mapping_are_refused(tmp_path: Path) -> None:
    assert "empty" in fails(tmp_path, "# nothing here\n").reason
    assert "mapping" in fails(tmp_path, "- a\n- b\n").reason


def test_parse_and_mapping_entry_points_validate_too() -> None:
    with pytest.raises(ConfigError) as info:
        parse_tenant_config(edit("burst: 10", "burst: many"), source="cp:demo")
    assert str(info.value).startswith("cp:demo:")
    import yaml

    data = yaml.safe_load(MINIMAL)
    data["scenarios"][0]["kb_scopes"] = ["nope"]
    with pytest.raises(ConfigError) as info:
        tenant_config_from_mapping(data)
    assert info.value.field == "scenarios[0].kb_scopes[0]" and info.value.line is None


# ------------------------------------------------------------------------------- API keys


def test_hash_api_key_is_hex_sha256() -> None:
    assert hash_api_key("abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(hash_api_key("x")) == 64
    a, b = generate_api_key(), generate_api_key()
    assert a != b and len(a) > 40


def test_check_key_accepts_active_and_refuses_revoked(tmp_path: Path) -> None:
    live, old = generate_api_key(), generate_api_key()
    keys = (
        "api_keys:\n"
        f"  - {{id: live, sha256: {hash_api_key(live)}, created_at: 2026-11-25T08:00:00Z}}\n"
        f"  - id: old\n    sha256: {hash_api_key(old)}\n    created_at: 2025-01-01\n"
        "    revoked: true\n"
    )
    cfg = load_tenant_config(write(tmp_path, MINIMAL + keys))
    assert cfg.check_key(live)
    found = cfg.find_key(live)
    assert found is not None and found.id == "live"
    assert not cfg.check_key(old)  # revoked
    assert not cfg.check_key(live + "x")
    assert not cfg.check_key("")


def test_api_key_hash_must_be_64_hex(tmp_path: Path) -> None:
    text = MINIMAL + "api_keys:\n  - {id: k, sha256: abc123, created_at: 2026-01-01}\n"
    err = fails(tmp_path, text)
    assert err.field == "api_keys[0].sha256" and err.line == line_of(text, "abc123")


# ------------------------------------------------------------------------ YAML specifics


def test_merge_keys_may_override_but_literal_duplicates_may_not(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "rate_limits:\n  tenant: {rate_per_second: 5, burst: 10}\n",
        "rate_limits:\n  tenant: &bucket {rate_per_second: 5, burst: 10}\n"
        "  channels:\n    social:\n      <<: *bucket\n      burst: 3\n",
    )
    cfg = load_tenant_config(write(tmp_path, text))
    assert cfg.rate_limits.for_channel("social").burst == 3
    assert cfg.rate_limits.for_channel("social").rate_per_second == 5
    assert cfg.rate_limits.for_channel("web").burst == 10


def test_recursive_alias_and_control_characters_are_refused(tmp_path: Path) -> None:
    err = fails(tmp_path, MINIMAL + "extra: &loop [*loop]\n")
    assert "recursive" in err.reason and err.line == MINIMAL.count("\n") + 1
    err = fails(tmp_path, edit("    en: Hello\n", "    en: Hel\x07lo\n"))
    assert err.line == line_of(MINIMAL, "    en: Hello")
