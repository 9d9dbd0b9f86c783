"""The default bundles shipped in models/defaults: signed by the release key, and good enough.

These load the real shipped INT8 bundles and measure them on the held-out dev files now, so a
rebuilt bundle that got worse (or a tampered one) fails here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kefu.bundle import Manifest, sign_bundle, write_manifest
from kefu.errors import BundleError
from kefu.keys import SigningKey, TrustStore, load_public_key
from kefu.models.dataset import load_dataset
from kefu.models.evaluation import evaluate
from kefu.models.runtime import load_model
from kefu.models.store import ModelStore, shipped_dir

from conftest import DATA

RELEASE = TrustStore([load_public_key(shipped_dir() / "kefu-release.pub")])


def test_demo_shop_intent_meets_target_on_blind_dev_in_both_languages() -> None:
    model = load_model(shipped_dir() / "demo-shop-intent", trust=RELEASE)
    dev = load_dataset(DATA / "demo_shop_intent" / "dev.jsonl")
    r = evaluate(model, dev, latency=False)
    assert r["accuracy"] >= 0.95
    assert len(r["labels"]) == 14
    # The customer's own example: "when does my order arrive" is logistics.
    zh, en = model.predict(["我的订单什么时候到", "where is my parcel? tracking SF1234567890123"])
    assert zh.label == en.label == "delivery_tracking"


def test_sentiment_meets_macro_f1_on_customer_service_and_reviews() -> None:
    from kefu.models.defaults import sentiment_data

    model = load_model(shipped_dir() / "sentiment", trust=RELEASE)
    _, dev = sentiment_data()
    r = evaluate(model, dev, latency=False)
    assert r["macro_f1"] >= 0.85
    angry, neutral, happy = model.predict(
        [
            "你们什么破服务，等了一个星期还没到，气死了",
            "how do i change my address",
            "好的谢谢，问题解决了",
        ]
    )
    assert (angry.label, neutral.label, happy.label) == ("negative", "neutral", "positive")


def test_store_seeds_shipped_bundles_once(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", RELEASE)
    assert len(store.seed_shipped()) == 2
    assert store.seed_shipped() == []  # idempotent
    names = {e.name for e in store.entries() if e.verified}
    assert names == {"demo-shop-intent", "sentiment"}
    assert store.resolve("demo-shop-intent").parent.name == "demo-shop-intent"


def test_shipped_bundles_are_small() -> None:
    for name in ("demo-shop-intent", "sentiment"):
        size = sum(p.stat().st_size for p in (shipped_dir() / name).iterdir())
        assert size < 10_000_000, name


def test_a_version_is_immutable_in_the_store(
    tmp_path: Path, tiny_bundle: Path, trust: TrustStore, signing_key: SigningKey
) -> None:
    store = ModelStore(tmp_path / "models", trust)
    first = store.add(tiny_bundle)
    assert store.add(tiny_bundle) == first  # the same content again: idempotent
    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    m = Manifest.from_bytes((other / "manifest.json").read_bytes())
    m.metrics["note"] = "rebuilt"  # a different build under the same name@version
    write_manifest(other, m)
    sign_bundle(other, signing_key)
    with pytest.raises(BundleError, match="immutable"):
        store.add(other)
