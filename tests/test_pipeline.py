"""End to end on a tiny real dataset: train → ONNX → INT8 → eval → sign → verify → gate."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from kefu.bundle import verify_bundle
from kefu.errors import DatasetError, PermanentError
from kefu.keys import SigningKey, TrustStore
from kefu.models.dataset import Dataset, load_dataset
from kefu.models.evaluation import classification_report, evaluate
from kefu.models.gate import compare
from kefu.models.runtime import load_model
from kefu.models.training import train_bundle

from conftest import tiny_config


def test_exported_graph_has_opset_17_and_dynamic_axes(tiny_bundle: Path) -> None:
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    # INT8: quantized weights are present in the shipped graph.
    assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)


def test_manifest_reports_quantization_change_and_latency(
    tiny_bundle: Path, trust: TrustStore
) -> None:
    m = verify_bundle(tiny_bundle, trust)
    assert m.metrics["precision"] == "int8"
    change = m.metrics["quantization_accuracy_change"]
    assert change == pytest.approx(m.metrics["dev"]["accuracy"] - m.metrics["fp32_accuracy"])
    assert m.metrics["dev"]["accuracy"] > 0.8  # three well-separated intents
    lat = m.metrics["dev"]["latency"]
    assert lat["threads"] == 1 and lat["batch_1"]["p50_ms"] > 0 and lat["batch_32"]["p99_ms"] > 0
    assert (
        m.training["opset"] >= 17
        and m.training["loss_per_epoch"][-1] < m.training["loss_per_epoch"][0]
    )


def test_eval_report_fields(
    tiny_bundle: Path, tiny_data: tuple[Path, Path], trust: TrustStore
) -> None:
    r = evaluate(load_model(tiny_bundle, trust=trust), load_dataset(tiny_data[1]), rounds=10)
    for key in ("accuracy", "macro_f1", "per_class", "confusion", "ece", "latency"):
        assert key in r
    assert len(r["confusion"]) == 3 and sum(map(sum, r["confusion"])) == r["n"]
    for c in r["per_class"].values():
        assert 0 <= c["precision"] <= 1 and 0 <= c["recall"] <= 1
    assert set(r["latency"]) == {"threads", "batch_1", "batch_32"}


def test_classification_report_on_known_numbers() -> None:
    import numpy as np

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    r = classification_report(["a", "b", "b", "b"], probs, ["a", "b"])
    assert r["accuracy"] == 0.75
    assert r["per_class"]["a"]["precision"] == 0.5 and r["per_class"]["b"][
        "recall"
    ] == pytest.approx(2 / 3)
    assert r["confusion"] == [[1, 0], [1, 2]]
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_gate_passes_equal_and_fails_worse(
    tmp_path: Path,
    tiny_bundle: Path,
    tiny_data: tuple[Path, Path],
    trust: TrustStore,
    signing_key: SigningKey,
) -> None:
    train, dev = load_dataset(tiny_data[0]), load_dataset(tiny_data[1])
    # A deliberately broken candidate: labels shuffled, so it learns nothing useful.
    import random

    shuffled = train.labels[:]
    random.Random(0).shuffle(shuffled)
    bad = tmp_path / "bad"
    train_bundle(
        Dataset(train.texts, shuffled),
        dev,
        name="tiny-intent",
        version="bad",
        task="intent",
        out_dir=bad,
        config=tiny_config(epochs=3),
        signing_key=signing_key,
    )
    base = evaluate(load_model(tiny_bundle, trust=trust), dev, latency=False)
    worse = evaluate(load_model(bad, trust=trust), dev, latency=False)
    assert compare(base, base).passed
    result = compare(worse, base)
    assert not result.passed
    assert {c.name for c in result.failures} >= {"accuracy", "macro-F1"}


def test_training_refuses_bad_inputs(tmp_path: Path, tiny_data: tuple[Path, Path]) -> None:
    one_label = Dataset(["a", "b"], ["x", "x"])
    with pytest.raises(DatasetError, match="two distinct labels"):
        train_bundle(
            one_label,
            one_label,
            name="x",
            version="1",
            task="t",
            out_dir=tmp_path / "o",
            config=tiny_config(),
        )
    train = load_dataset(tiny_data[0])
    dev = Dataset(["hi"], ["no_such_intent"], path="dev.jsonl")
    with pytest.raises(DatasetError, match=r"dev\.jsonl:1: unknown label"):
        train_bundle(
            train,
            dev,
            name="x",
            version="1",
            task="t",
            out_dir=tmp_path / "o",
            config=tiny_config(),
        )
    with pytest.raises(PermanentError, match="unknown model family"):
        train_bundle(
            train,
            None,
            name="x",
            version="1",
            task="t",
            out_dir=tmp_path / "o",
            config=tiny_config(family="bert"),
        )


def test_labels_file_matches_manifest(tiny_bundle: Path) -> None:
    labels = json.loads((tiny_bundle / "labels.json").read_text())
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert labels == manifest["labels"] == sorted(labels)


def test_gate_latency_check_uses_stated_tolerance() -> None:
    def rep(p50: float) -> dict:  # type: ignore[type-arg]
        return {
            "labels": ["a"],
            "accuracy": 0.9,
            "macro_f1": 0.9,
            "per_class": {"a": {"recall": 0.9, "support": 10}},
            "latency": {"batch_1": {"p50_ms": p50, "p99_ms": 2 * p50}},
        }

    assert compare(rep(1.9), rep(1.0)).passed  # within 1.5x + 0.5 ms
    slow = compare(rep(2.1), rep(1.0))
    assert not slow.passed and slow.failures[0].name == "p50 latency (batch 1)"
