"""Runtime loader: predictions, bad text, and execution-provider selection.

The GPU providers (TensorRT, CUDA) are FAKED here: this machine has no GPU, so a fake
``available_providers`` list and a fake session factory stand in for onnxruntime-gpu to check
the order and the fallback. Everything else runs the real onnxruntime on CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import pytest

from kefu.errors import BundleError, ProviderUnavailable
from kefu.keys import TrustStore
from kefu.models.runtime import RuntimeOptions, clean_text, load_model, plan_providers

GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_predict_returns_label_probability_and_distribution(
    tiny_bundle: Path, trust: TrustStore
) -> None:
    model = load_model(tiny_bundle, trust=trust)
    preds = model.predict(["我的快递到哪了", "hello there", "I want a refund for my shoes"])
    assert [p.label for p in preds] == ["delivery_tracking", "greeting", "return_refund"]
    for p in preds:
        assert set(p.distribution) == set(model.labels)
        assert abs(sum(p.distribution.values()) - 1.0) < 1e-5
        assert p.probability == max(p.distribution.values())


def test_batched_equals_single(tiny_bundle: Path, trust: TrustStore) -> None:
    model = load_model(tiny_bundle, trust=trust, options=RuntimeOptions(max_batch=2))
    texts = ["退货", "where is my parcel SF1234567890", "你好呀", "refund please"] * 3
    batched = model.predict_proba(texts)
    single = np.concatenate([model.predict_proba([t]) for t in texts])
    # Dynamic INT8 quantizes activations with each batch's own range, so batch mates move the
    # probabilities by a hair; the decision must not move.
    np.testing.assert_allclose(batched, single, atol=5e-3)
    assert (batched.argmax(1) == single.argmax(1)).all()


def test_empty_and_invalid_text_never_crash(tiny_bundle: Path, trust: TrustStore) -> None:
    model = load_model(tiny_bundle, trust=trust)
    weird = ["", "   ", b"\xff\xfe\x00bad", "\x00\x01\x1b[31m", "a" * 20000, "退款\udcff"]
    preds = model.predict(weird)  # type: ignore[arg-type]
    assert len(preds) == len(weird)
    assert preds[0].empty_input and preds[1].empty_input and not preds[5].empty_input
    assert all(np.isfinite(p.probability) for p in preds)
    assert clean_text(b"\xffok") == "\ufffdok"
    assert len(clean_text("x" * 20000)) == 4096


def test_untrusted_bundle_is_not_loaded(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError):
        load_model(tiny_bundle, trust=TrustStore())


def test_provider_plan_order_and_options() -> None:
    plan = plan_providers(RuntimeOptions(trt_fp16=True, trt_engine_cache_dir=None), GPU)
    assert plan.names == GPU
    assert plan.providers[0][1]["trt_fp16_enable"] is True
    cpu_only = plan_providers(RuntimeOptions(), ["CPUExecutionProvider"])
    assert cpu_only.names == ["CPUExecutionProvider"]
    assert set(cpu_only.skipped) == {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
    # CPU is always the last resort even when not asked for.
    assert plan_providers(RuntimeOptions(providers=("cuda",)), GPU).names == GPU[1:]
    with pytest.raises(ProviderUnavailable, match="unknown execution provider"):
        plan_providers(RuntimeOptions(providers=("rocm",)), GPU)


def test_engine_cache_dir_is_created(tmp_path: Path) -> None:
    cache = tmp_path / "trt"
    plan = plan_providers(RuntimeOptions(trt_engine_cache_dir=str(cache)), GPU)
    assert cache.is_dir() and plan.providers[0][1]["trt_engine_cache_path"] == str(cache)


class FakeGpuSession:
    """FAKE: stands in for an onnxruntime-gpu session whose GPU providers fail to start
    (what happens on a host without a GPU or driver); it runs the real model on CPU."""

    requested: ClassVar[list[str]] = []

    def __init__(
        self, path: str, *, sess_options: Any, providers: list[str], provider_options: Any
    ):
        FakeGpuSession.requested = list(providers)
        self._real = ort.InferenceSession(
            path, sess_options=sess_options, providers=["CPUExecutionProvider"]
        )

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def run(self, *a: Any, **kw: Any) -> Any:
        return self._real.run(*a, **kw)


def test_fallback_from_faked_gpu_providers_is_logged(
    tiny_bundle: Path, trust: TrustStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kefu.models.runtime")
    model = load_model(
        tiny_bundle, trust=trust, available_providers=GPU, session_factory=FakeGpuSession
    )
    assert FakeGpuSession.requested == GPU  # asked in order TensorRT → CUDA → CPU
    assert model.active_providers == ["CPUExecutionProvider"]
    assert "TensorrtExecutionProvider fell back" in caplog.text
    assert "CUDAExecutionProvider fell back" in caplog.text
    assert model.predict(["退款"])[0].label == "return_refund"
    with pytest.raises(ProviderUnavailable, match="strict mode"):
        load_model(
            tiny_bundle,
            trust=trust,
            available_providers=GPU,
            session_factory=FakeGpuSession,
            options=RuntimeOptions(strict=True),
        )


def test_real_cpu_machine_skips_gpu_with_reason(tiny_bundle: Path, trust: TrustStore) -> None:
    model = load_model(tiny_bundle, trust=trust)
    assert model.active_providers[-1] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "not available" in model.plan.skipped["CUDAExecutionProvider"]
