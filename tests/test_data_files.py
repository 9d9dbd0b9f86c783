"""The shipped training data meets what the demo tenant needs (counts, languages, held-out dev)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from conftest import DATA

INTENTS = {
    "delivery_tracking",
    "order_query",
    "order_modify",
    "order_cancel",
    "return_refund",
    "payment_issue",
    "account_security",
    "invoice",
    "product_inquiry",
    "human_agent",
    "complaint",
    "greeting",
    "goodbye",
    "out_of_scope",
}


def rows(p: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def norm(t: str) -> str:
    return "".join(t.lower().split())


def test_demo_shop_intent_data_covers_taxonomy_in_both_languages() -> None:
    train = rows(DATA / "demo_shop_intent" / "train.jsonl")
    dev = rows(DATA / "demo_shop_intent" / "dev.jsonl")
    assert {r["label"] for r in train} == INTENTS == {r["label"] for r in dev}
    per = Counter((r["label"], r["lang"]) for r in train)
    for intent in INTENTS:
        assert per[(intent, "zh")] >= 35, intent
        assert per[(intent, "en")] >= 25, intent
        assert per[(intent, "zh")] + per[(intent, "en")] >= 60, intent
    assert not {norm(r["text"]) for r in train} & {norm(r["text"]) for r in dev}, (
        "dev leaks into train"
    )


def test_sentiment_cs_data_has_three_classes_both_languages_and_is_held_out() -> None:
    train = rows(DATA / "sentiment" / "cs.train.jsonl")
    dev = rows(DATA / "sentiment" / "cs.dev.jsonl")
    per = Counter((r["label"], r["lang"]) for r in train)
    for label in ("negative", "neutral", "positive"):
        assert per[(label, "zh")] >= 100 and per[(label, "en")] >= 100
    assert {r["label"] for r in dev} == {"negative", "neutral", "positive"}
    assert not {norm(r["text"]) for r in train} & {norm(r["text"]) for r in dev}
