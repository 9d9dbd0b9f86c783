"""The runtime loader shared by the pipeline and every node: a verified bundle → predictions.

Needs only onnxruntime, tokenizers and numpy (no torch on a node). Execution providers are
chosen in the order TensorRT → CUDA → CPU; each provider that is asked for but cannot be used
is skipped with its reason logged, and CPU is always the last resort.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from kefu.bundle import Manifest, verify_bundle
from kefu.errors import BundleError, ProviderUnavailable
from kefu.keys import TrustStore
from kefu.models.options import RuntimeOptions, clean_text

__all__ = [
    "PROVIDER_ALIASES",
    "Prediction",
    "ProviderPlan",
    "RuntimeOptions",
    "TextClassifier",
    "clean_text",
    "load_model",
    "open_unverified",
    "plan_providers",
]

log = logging.getLogger("kefu.models.runtime")

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


@dataclass
class ProviderPlan:
    providers: list[tuple[str, dict[str, Any]]]
    skipped: dict[str, str] = field(default_factory=dict)  # provider -> reason

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.providers]


def plan_providers(options: RuntimeOptions, available: Sequence[str]) -> ProviderPlan:
    """Pure: which providers to hand to onnxruntime, with options, and why others are skipped."""
    plan = ProviderPlan([])
    for alias in options.providers:
        name = PROVIDER_ALIASES.get(alias.lower(), alias)
        if name not in PROVIDER_ALIASES.values():
            raise ProviderUnavailable(
                f"unknown execution provider {alias!r} (choose from tensorrt, cuda, cpu)"
            )
        if name not in available:
            plan.skipped[name] = "not available in this onnxruntime build / machine"
            continue
        opts: dict[str, Any] = {}
        if name == "TensorrtExecutionProvider":
            opts = {"device_id": options.device_id, "trt_fp16_enable": options.trt_fp16}
            if options.trt_engine_cache_dir:
                Path(options.trt_engine_cache_dir).mkdir(parents=True, exist_ok=True)
                opts |= {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": options.trt_engine_cache_dir,
                }
        elif name == "CUDAExecutionProvider":
            opts = {"device_id": options.device_id}
        plan.providers.append((name, opts))
    if "CPUExecutionProvider" not in plan.names:
        plan.providers.append(("CPUExecutionProvider", {}))
    return plan


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    distribution: dict[str, float]
    empty_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probability": round(self.probability, 6),
            "distribution": {k: round(v, 6) for k, v in self.distribution.items()},
            "empty_input": self.empty_input,
        }


SessionFactory = Callable[..., Any]


class TextClassifier:
    """A loaded bundle. Thread-safe: onnxruntime sessions allow concurrent ``run`` calls."""

    def __init__(
        self,
        *,
        manifest: Manifest,
        session: Any,
        tokenizer: Tokenizer,
        bundle_dir: Path,
        plan: ProviderPlan,
        options: RuntimeOptions,
    ):
        self.manifest = manifest
        self.labels = list(manifest.labels)
        self.session = session
        self.tokenizer = tokenizer
        self.bundle_dir = bundle_dir
        self.plan = plan
        self.options = options
        rt = manifest.runtime
        self.max_length = int(rt.get("max_length", 128))
        self.pad_id = int(rt.get("pad_id", 0))
        self.temperature = float(rt.get("temperature", 1.0))
        self.active_providers: list[str] = list(session.get_providers())

    @property
    def ref(self) -> str:
        return self.manifest.ref

    @property
    def version(self) -> str:
        return self.manifest.version

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encs = (
            [self.tokenizer.encode(texts[0])]
            if len(texts) == 1
            else self.tokenizer.encode_batch(list(texts))
        )
        width = max(1, *(min(len(e.ids), self.max_length) for e in encs))
        ids = np.full((len(encs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for i, e in enumerate(encs):
            row = e.ids[: self.max_length]
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        ids, mask = self.encode(texts)
        out = self.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
        return np.asarray(out, dtype=np.float32)

    def predict_proba(self, texts: Sequence[str | bytes]) -> np.ndarray:
        cleaned = [clean_text(t) for t in texts]
        if not cleaned:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        parts = [
            self.logits(cleaned[i : i + self.options.max_batch])
            for i in range(0, len(cleaned), self.options.max_batch)
        ]
        z = np.concatenate(parts) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, texts: Sequence[str | bytes]) -> list[Prediction]:
        probs = self.predict_proba(texts)
        out = []
        for t, p in zip(texts, probs, strict=True):
            k = int(p.argmax())
            out.append(
                Prediction(
                    label=self.labels[k],
                    probability=float(p[k]),
                    distribution={lab: float(v) for lab, v in zip(self.labels, p, strict=True)},
                    empty_input=not clean_text(t),
                )
            )
        return out


def _session_options(options: RuntimeOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # keep onnxruntime's own warnings out of user output
    return so


def load_model(
    bundle_dir: str | Path,
    *,
    trust: TrustStore,
    options: RuntimeOptions | None = None,
    available_providers: Sequence[str] | None = None,
    session_factory: SessionFactory | None = None,
) -> TextClassifier:
    """Verify a bundle (signature + hashes) and load it for inference.

    ``available_providers`` and ``session_factory`` exist so tests can fake GPU providers on a
    machine without one; production code leaves them ``None``.
    """
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir, trust)
    return open_unverified(
        bundle_dir,
        manifest,
        options=options,
        available_providers=available_providers,
        session_factory=session_factory,
    )


def open_unverified(
    bundle_dir: Path,
    manifest: Manifest,
    *,
    options: RuntimeOptions | None = None,
    available_providers: Sequence[str] | None = None,
    session_factory: SessionFactory | None = None,
) -> TextClassifier:
    """Open a bundle without checking its signature: only for the pipeline's own fresh output."""
    options = options or RuntimeOptions()
    available = list(available_providers or ort.get_available_providers())
    plan = plan_providers(options, available)
    for name, reason in plan.skipped.items():
        log.info("execution provider %s skipped: %s", name, reason)
    try:
        tokenizer = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise BundleError(
            f"tokenizer cannot be loaded ({exc})", path=bundle_dir / "tokenizer.json"
        ) from exc
    labels_path = bundle_dir / "labels.json"
    try:
        labels = json.loads(labels_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError("labels.json is unreadable", path=labels_path) from exc
    if labels != manifest.labels:
        raise BundleError("labels.json disagrees with the manifest", path=labels_path)
    factory = session_factory or ort.InferenceSession
    model_path = bundle_dir / "model.onnx"
    try:
        session = factory(
            str(model_path),
            sess_options=_session_options(options),
            providers=[name for name, _ in plan.providers],
            provider_options=[opts for _, opts in plan.providers],
        )
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad model
        raise BundleError(f"onnxruntime cannot load the model ({exc})", path=model_path) from exc
    active = list(session.get_providers())
    for name in plan.names:
        if name not in active:
            plan.skipped[name] = "requested but failed to initialise (no GPU / driver / library)"
            log.warning("execution provider %s fell back: %s", name, plan.skipped[name])
    wanted = PROVIDER_ALIASES.get(options.providers[0].lower(), options.providers[0])
    if options.strict and (not active or active[0] != wanted):
        raise ProviderUnavailable(
            f"{wanted} requested in strict mode, but the session runs on "
            f"{active[0] if active else 'nothing'} ({plan.skipped.get(wanted, 'unknown reason')})"
        )
    log.info("loaded %s on %s", manifest.ref, ", ".join(active))
    return TextClassifier(
        manifest=manifest,
        session=session,
        tokenizer=tokenizer,
        bundle_dir=bundle_dir,
        plan=plan,
        options=options,
    )
