"""The pretrained family end to end on the tiny dataset (real all-MiniLM-L6-v2 weights)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from kefu.keys import SigningKey, TrustStore
from kefu.models.dataset import Dataset, load_dataset
from kefu.models.evaluation import evaluate
from kefu.models.runtime import load_model
from kefu.models.training import train_bundle

from conftest import tiny_config


def english(ds: Dataset) -> Dataset:
    keep = [i for i, t in enumerate(ds.texts) if t.isascii()]
    return ds.subset(keep)


@pytest.mark.slow
@pytest.mark.parametrize("freeze", [True, False], ids=["frozen", "fine-tuned"])
def test_minilm_bundle_trains_exports_and_answers_english(
    freeze: bool,
    tmp_path: Path,
    tiny_data: tuple[Path, Path],
    signing_key: SigningKey,
    trust: TrustStore,
) -> None:
    train = english(load_dataset(tiny_data[0]))
    dev = english(load_dataset(tiny_data[1]))
    # latency_rounds=0: the latency figures (1,300 MiniLM runs on one thread, most of this
    # test's time) are the benchmarks' business; accuracy and the answers are checked here.
    cfg = tiny_config(
        family="minilm",
        freeze=freeze,
        epochs=40 if freeze else 2,
        lr=3e-3 if freeze else 1e-4,
        latency_rounds=0,
    )
    out = tmp_path / "b"
    result = train_bundle(
        train,
        dev,
        name="tiny-minilm",
        version="1",
        task="intent",
        out_dir=out,
        config=cfg,
        signing_key=signing_key,
    )
    assert result.manifest.family == "minilm"
    assert "latency" not in result.manifest.metrics["dev"]
    assert result.manifest.training["arch"].endswith("frozen" if freeze else "fine-tuned")
    graph = onnx.load(str(out / "model.onnx"))
    assert sum(n.op_type == "MatMulInteger" for n in graph.graph.node) >= 36  # 6 layers x 6
    model = load_model(out, trust=trust)
    assert evaluate(model, dev, latency=False)["accuracy"] > 0.7
    assert (
        model.predict(["where is my package? it has not arrived"])[0].label == "delivery_tracking"
    )
