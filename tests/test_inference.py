"""Node inference runtime: batching, cache, hot swap, overload and cancellation.

Every test loads the REAL shipped bundles (models/defaults) through the verifying loader. A
second version of the intent model is the shipped bundle copied, given another version and
re-signed with a key generated here (trusted next to the release key).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kefu.bundle import Manifest, sign_bundle, write_manifest
from kefu.errors import (
    BundleError,
    ConfigError,
    PermanentError,
    SignatureError,
    TemporaryError,
)
from kefu.keys import SigningKey, TrustStore, generate_keypair, load_public_key
from kefu.models.runtime import load_model
from kefu.models.store import ModelStore, shipped_dir
from kefu.node.nlu.inference import (
    BATCH_BUCKETS,
    BatchingModelRuntime,
    BatchTooLarge,
    Classification,
    InferenceOptions,
    ModelBusy,
    ModelNotLoaded,
    ModelRuntime,
    StaticModelRuntime,
    VersionStats,
    normalise_text,
)

ROOT = Path(__file__).resolve().parents[1]
INTENT, SENTIMENT = "demo-shop-intent", "sentiment"
SHIPPED_INTENT = shipped_dir() / INTENT
SHIPPED_SENTIMENT = shipped_dir() / SENTIMENT
V2 = "2026.12.01-canary"
PARK = 10_000_000  # µs: a wait window no test ever reaches, so only a full batch dispatches


def _texts(path: Path) -> list[str]:
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r["text"] for r in rows]


INTENT_TEXTS = _texts(ROOT / "models" / "data" / "demo_shop_intent" / "dev.jsonl")
SENTIMENT_TEXTS = _texts(ROOT / "models" / "data" / "sentiment" / "cs.dev.jsonl")


@pytest.fixture(scope="module")
def release_trust() -> TrustStore:
    return TrustStore([load_public_key(shipped_dir() / "kefu-release.pub")])


@pytest.fixture(scope="module")
def canary_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return generate_keypair(tmp_path_factory.mktemp("keys"), "canary")


@pytest.fixture(scope="module")
def trust(release_trust: TrustStore, canary_key: SigningKey) -> TrustStore:
    return TrustStore([load_public_key(shipped_dir() / "kefu-release.pub"), canary_key.public])


def _resign(dest: Path, key: SigningKey, version: str) -> Path:
    shutil.copytree(SHIPPED_INTENT, dest)
    manifest = Manifest.from_bytes((dest / "manifest.json").read_bytes())
    manifest.version = version
    write_manifest(dest, manifest)
    sign_bundle(dest, key)
    return dest


@pytest.fixture(scope="module")
def intent_v2(tmp_path_factory: pytest.TempPathFactory, canary_key: SigningKey) -> Path:
    return _resign(tmp_path_factory.mktemp("v2") / "bundle", canary_key, V2)


@pytest.fixture(scope="module")
def direct_intent(release_trust: TrustStore) -> np.ndarray:
    return load_model(SHIPPED_INTENT, trust=release_trust).predict_proba(INTENT_TEXTS)


def _assert_same_decisions(got: list[Classification], probs: np.ndarray, labels: list[str]):
    """Dynamic INT8 quantization uses each batch's own activation range, so batch mates move
    probabilities by a hair: decisions must agree wherever the model is not near a tie."""
    assert len(got) == len(probs)
    for c, p in zip(got, probs, strict=True):
        top2 = np.sort(p)[-2:]
        if top2[1] - top2[0] > 0.02:
            assert c.label == labels[int(p.argmax())]
        assert abs(c.distribution[c.label] - c.probability) < 1e-9
        assert abs(sum(c.distribution.values()) - 1.0) < 1e-4
        assert np.allclose([c.distribution[k] for k in labels], p, atol=0.02)


def _ref_stats(rt: BatchingModelRuntime, ref: str) -> VersionStats:
    return rt.stats().by_ref()[ref]


async def _settle() -> None:
    """Let freshly created tasks run up to their first real wait."""
    for _ in range(5):
        await asyncio.sleep(0)


# ------------------------------------------------------------------------------ predictions


async def test_predictions_match_the_loaded_classifier(
    release_trust: TrustStore, direct_intent: np.ndarray
) -> None:
    async with BatchingModelRuntime(trust=release_trust) as rt:
        info = await rt.load(INTENT, SHIPPED_INTENT)
        await rt.load(SENTIMENT, SHIPPED_SENTIMENT)
        assert isinstance(rt, ModelRuntime)
        assert info.active and info.ref == f"{INTENT}@2026.11.25-2"
        labels = list(info.labels)
        # One text per call, all at once: they are coalesced into batches.
        singles = await asyncio.gather(*(rt.classify(INTENT, [t]) for t in INTENT_TEXTS))
        got = [c for [c] in singles]
        _assert_same_decisions(got, direct_intent, labels)
        assert all(c.model == INTENT and c.version == "2026.11.25-2" for c in got)
        # One call with many texts keeps their order, and pinning the version gives the same.
        pinned = await rt.classify(info.ref, INTENT_TEXTS[:40])
        assert [c.label for c in pinned] == [c.label for c in got[:40]]
        assert all(c.cached for c in pinned)  # already answered above

        sent = load_model(SHIPPED_SENTIMENT, trust=release_trust)
        got_s = await rt.classify(SENTIMENT, SENTIMENT_TEXTS)
        _assert_same_decisions(got_s, sent.predict_proba(SENTIMENT_TEXTS), sent.labels)
        # Weird input never crashes and is flagged as empty.
        weird = await rt.classify(INTENT, ["", "   \x00\x1b ", "退款\udcff"])
        assert [c.empty_input for c in weird] == [True, True, False]
        with pytest.raises(ModelNotLoaded, match="未加载"):
            await rt.classify("no-such-model", ["hi"])
        with pytest.raises(ModelNotLoaded):
            await rt.classify(f"{INTENT}@9.9.9", ["hi"])


async def test_concurrent_requests_are_coalesced_into_few_batches(
    release_trust: TrustStore,
) -> None:
    opts = InferenceOptions(max_batch=16, max_wait_us=5_000, cache_size=0)
    texts = INTENT_TEXTS[:200]
    assert len(set(texts)) == 200
    async with BatchingModelRuntime(trust=release_trust, options=opts) as rt:
        info = await rt.load(INTENT, SHIPPED_INTENT)
        results = await asyncio.gather(*(rt.classify(INTENT, [t]) for t in texts))
        assert len(results) == 200
        s = _ref_stats(rt, info.ref)
        assert s.texts == 200
        assert s.batches < 200
        assert s.max_batch_seen <= 16
        assert sum(s.batch_sizes.values()) == s.batches
        assert list(s.batch_sizes) == list(BATCH_BUCKETS)
        assert s.batch_sizes["64+"] == 0 and s.batch_sizes["16"] >= 1
        assert s.queue_depth == 0 and s.in_flight == 0 and s.errors == 0
        assert s.cache_hits == 0 and s.cache_misses == 200
        exported = json.loads(json.dumps(rt.stats().to_dict()))
        assert exported["models"][0]["batches"] == s.batches


async def test_repeated_texts_hit_the_cache(release_trust: TrustStore) -> None:
    opts = InferenceOptions(cache_size=3, max_wait_us=0)
    async with BatchingModelRuntime(trust=release_trust, options=opts) as rt:
        ref = (await rt.load(INTENT, SHIPPED_INTENT)).ref
        first = await rt.classify(INTENT, ["Where is   my PARCEL?", "退款"])
        assert not any(c.cached for c in first)
        batches = _ref_stats(rt, ref).batches
        again = await rt.classify(INTENT, ["  where is my parcel?\t", "退款"])
        assert all(c.cached for c in again)
        assert [c.label for c in again] == [c.label for c in first]
        s = _ref_stats(rt, ref)
        assert s.batches == batches  # no model run for cached texts
        assert (s.cache_hits, s.cache_misses, s.cache_entries) == (2, 2, 2)
        # Duplicates inside one call run once.
        dup = await rt.classify(INTENT, ["hello", "HELLO", "hello "])
        assert len({c.label for c in dup}) == 1 and _ref_stats(rt, ref).texts == 3
        # LRU: capacity 3, "退款" was used more recently than the parcel question.
        await rt.classify(INTENT, ["invoice please"])
        assert rt.stats().cache.entries == 3
        assert (await rt.classify(INTENT, ["退款"]))[0].cached
        assert not (await rt.classify(INTENT, ["where is my parcel?"]))[0].cached
    assert normalise_text("  Hello\u200b  WORLD\n") == "hello world"


# ----------------------------------------------------------------------------- hot swap


async def test_queued_requests_finish_on_the_old_version_across_a_swap(
    trust: TrustStore, intent_v2: Path
) -> None:
    opts = InferenceOptions(max_batch=4, max_wait_us=PARK)
    async with BatchingModelRuntime(trust=trust, options=opts) as rt:
        v1 = (await rt.load(INTENT, SHIPPED_INTENT)).version
        parked = [asyncio.create_task(rt.classify(INTENT, [t])) for t in INTENT_TEXTS[:3]]
        await _settle()
        assert _ref_stats(rt, f"{INTENT}@{v1}").queue_depth == 3
        info = await rt.load(INTENT, intent_v2)  # the switch happens with v1 work queued
        assert info.version == V2 and rt.active_version(INTENT) == V2
        assert [m.active for m in rt.models()] == [False, True]
        fresh = await rt.classify(INTENT, INTENT_TEXTS[100:104])  # a full batch on v2
        assert {c.version for c in fresh} == {V2}
        assert not any(t.done() for t in parked)
        with pytest.raises(PermanentError, match="active"):
            await rt.unload(INTENT, V2)
        await rt.unload(INTENT, v1)  # drains: the parked requests are served by v1
        assert [(await t)[0].version for t in parked] == [v1, v1, v1]
        with pytest.raises(ModelNotLoaded):
            await rt.classify(f"{INTENT}@{v1}", ["hi"])
        assert [m.ref for m in rt.models()] == [f"{INTENT}@{V2}"]


async def test_hot_swap_under_concurrent_load_fails_no_request(
    trust: TrustStore, intent_v2: Path
) -> None:
    opts = InferenceOptions(max_batch=16, max_wait_us=500, cache_size=0)
    async with BatchingModelRuntime(trust=trust, options=opts) as rt:
        v1 = (await rt.load(INTENT, SHIPPED_INTENT)).version
        switched = False
        stop = asyncio.Event()
        seen: list[tuple[bool, str]] = []  # (sent after the switch, version that answered)

        async def client(k: int) -> None:
            i = 0
            while not stop.is_set():
                after = switched
                [c] = await rt.classify(INTENT, [INTENT_TEXTS[(k * 37 + i) % len(INTENT_TEXTS)]])
                seen.append((after, c.version))
                i += 1

        clients = [asyncio.create_task(client(k)) for k in range(8)]
        async with asyncio.timeout(60):  # a hang fails the test instead of the run
            while len(seen) < 40:
                await asyncio.sleep(0.001)
            await rt.load(INTENT, intent_v2)
            switched = True
            while sum(after for after, _ in seen) < 80:
                await asyncio.sleep(0.001)
            await rt.unload(INTENT, v1)  # nothing routes to v1 any more: unloading is invisible
            mark = len(seen)
            while len(seen) < mark + 40:
                await asyncio.sleep(0.001)
        stop.set()
        await asyncio.gather(*clients)  # re-raises any failed request
        assert {v for after, v in seen if after} == {V2}
        assert v1 in {v for after, v in seen if not after}
        assert _ref_stats(rt, f"{INTENT}@{V2}").errors == 0


async def test_failed_loads_leave_the_active_version_serving(
    trust: TrustStore, canary_key: SigningKey, tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(SHIPPED_INTENT, tampered)
    blob = bytearray((tampered / "model.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(blob))
    stranger = generate_keypair(tmp_path / "keys", "stranger")
    untrusted = _resign(tmp_path / "untrusted", stranger, "2026.12.02-x")

    # Validly signed, but the network is the sentiment model: it must never take traffic.
    mismatched = tmp_path / "mismatched"
    shutil.copytree(SHIPPED_INTENT, mismatched)
    shutil.copyfile(SHIPPED_SENTIMENT / "model.onnx", mismatched / "model.onnx")
    manifest = Manifest.from_bytes((mismatched / "manifest.json").read_bytes())
    manifest.version = "2026.12.03-bad"
    write_manifest(mismatched, manifest)
    sign_bundle(mismatched, canary_key)

    async with BatchingModelRuntime(trust=trust) as rt:
        info = await rt.load(INTENT, SHIPPED_INTENT)
        pending = asyncio.create_task(rt.classify(INTENT, ["我要退款"]))
        with pytest.raises(BundleError, match="SHA-256"):
            await rt.load(INTENT, tampered)
        with pytest.raises(SignatureError, match="not among"):
            await rt.load(INTENT, untrusted)
        with pytest.raises(BundleError, match=r"warm-up|columns"):
            await rt.load(INTENT, mismatched)
        with pytest.raises(BundleError, match="not 'sentiment'"):
            await rt.load(SENTIMENT, SHIPPED_INTENT)
        assert rt.active_version(INTENT) == info.version
        assert [m.ref for m in rt.models()] == [info.ref]
        assert (await pending)[0].label == "return_refund"
        assert (await rt.classify(INTENT, ["发票怎么开"]))[0].label == "invoice"


async def test_load_by_name_from_the_store(release_trust: TrustStore, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", release_trust)
    store.seed_shipped()
    async with BatchingModelRuntime(trust=release_trust, store=store) as rt:
        info = await rt.load(SENTIMENT, SENTIMENT)
        assert info.labels == ("negative", "neutral", "positive")
        again = await rt.load(SENTIMENT, f"{SENTIMENT}@{info.version}")  # already loaded: no-op
        assert again == info and len(rt.models()) == 1
        [c] = await rt.classify(SENTIMENT, ["你们这是在耍我吧，退款拖了二十天"])
        assert c.label == "negative"


# ------------------------------------------------------------------ overload, cancellation


async def test_full_queue_rejects_with_model_busy(release_trust: TrustStore) -> None:
    opts = InferenceOptions(max_batch=64, max_wait_us=PARK, max_queue=4)
    rt = BatchingModelRuntime(trust=release_trust, options=opts)
    ref = (await rt.load(INTENT, SHIPPED_INTENT)).ref
    parked = [asyncio.create_task(rt.classify(INTENT, [t])) for t in INTENT_TEXTS[:4]]
    await _settle()
    with pytest.raises(ModelBusy, match="繁忙") as busy:
        await rt.classify(INTENT, ["one more"])
    err = busy.value
    assert err.reason == "queue_full" and err.retry_after > 0 and err.queue_depth == 4
    assert isinstance(err, TemporaryError)  # callers retry or shed, they do not give up
    with pytest.raises(BatchTooLarge):
        await rt.classify(INTENT, INTENT_TEXTS[10:15])
    assert _ref_stats(rt, ref).busy_rejections == 1
    # A cancelled waiter gives its place back.
    parked[0].cancel()
    late = asyncio.create_task(rt.classify(INTENT, ["发票怎么开"]))
    await _settle()
    assert _ref_stats(rt, ref).queue_depth == 4
    await rt.close()  # drains: everything admitted is answered
    await rt.close()  # idempotent
    assert parked[0].cancelled()
    assert [len(await t) for t in parked[1:]] == [1, 1, 1]
    assert (await late)[0].label == "invoice"
    with pytest.raises(ModelBusy, match="shutting down"):
        await rt.classify(INTENT, ["hi"])


async def test_a_cancelled_waiter_does_not_break_its_batch(
    release_trust: TrustStore, direct_intent: np.ndarray
) -> None:
    opts = InferenceOptions(max_batch=8, max_wait_us=PARK, cache_size=0)
    async with BatchingModelRuntime(trust=release_trust, options=opts) as rt:
        info = await rt.load(INTENT, SHIPPED_INTENT)
        tasks = [asyncio.create_task(rt.classify(INTENT, [t])) for t in INTENT_TEXTS[:5]]
        await _settle()
        tasks[0].cancel()
        await _settle()
        assert _ref_stats(rt, info.ref).queue_depth == 4
        tasks += [asyncio.create_task(rt.classify(INTENT, [t])) for t in INTENT_TEXTS[5:8]]
        done = [(await t)[0] for t in tasks[1:]]  # the 8th text fills the batch
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        _assert_same_decisions(done, direct_intent[1:8], list(info.labels))
        s = _ref_stats(rt, info.ref)
        assert (s.batches, s.texts, s.batch_sizes["4"]) == (1, 7, 1)

        # Cancelled while its batch runs: the batch mate still gets its answer.
        a = asyncio.create_task(rt.classify(INTENT, INTENT_TEXTS[20:24]))
        b = asyncio.create_task(rt.classify(INTENT, INTENT_TEXTS[30:34]))
        while _ref_stats(rt, info.ref).in_flight == 0 and not b.done():
            await asyncio.sleep(0)
        a.cancel()
        assert len(await b) == 4
        with pytest.raises(asyncio.CancelledError):
            await a
        s = _ref_stats(rt, info.ref)
        assert (s.batches, s.errors, s.in_flight) == (2, 0, 0)
        assert len(await rt.classify(INTENT, INTENT_TEXTS[40:48])) == 8  # still serving


# ------------------------------------------------------------------------ double, options


async def test_static_runtime_double() -> None:
    def intent(text: str) -> str:
        return "return_refund" if "退" in text or "refund" in text else "greeting"

    rt = StaticModelRuntime(
        {INTENT: intent, SENTIMENT: lambda t: {"negative": 0.7, "neutral": 0.3}},
        labels={INTENT: ["greeting", "return_refund"]},
    )
    assert isinstance(rt, ModelRuntime)
    a, b = await rt.classify(INTENT, ["我要退货", "  HELLO "])
    assert (a.label, a.probability, b.label) == ("return_refund", 1.0, "greeting")
    assert a.distribution == {"greeting": 0.0, "return_refund": 1.0}
    [s] = await rt.classify(f"{SENTIMENT}@static", ["差评"])
    assert s.label == "negative" and s.ref == f"{SENTIMENT}@static"
    assert rt.calls == [(INTENT, ("我要退货", "  HELLO ")), (f"{SENTIMENT}@static", ("差评",))]
    with pytest.raises(ModelNotLoaded):
        await rt.classify(f"{INTENT}@v2", ["hi"])


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_batch"):
        InferenceOptions(max_batch=0)
    with pytest.raises(ConfigError, match="max_wait_us"):
        InferenceOptions(max_wait_us=-1)
