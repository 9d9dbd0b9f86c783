"""The inference seam of the node: what callers send and get back, and the errors and stats.

:class:`ModelRuntime` is the protocol (``classify(model, texts)`` → one
:class:`Classification` per text); :class:`StaticModelRuntime` is its in-memory double for unit
tests; :class:`~kefu.node.nlu.inference.BatchingModelRuntime` is the real one over ONNX bundles.
No onnxruntime here, so the pure core can depend on this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

from kefu.errors import ConfigError, PermanentError, TemporaryError
from kefu.models.options import RuntimeOptions, clean_text

__all__ = [
    "BATCH_BUCKETS",
    "OVERLOAD_POLICY",
    "BatchTooLarge",
    "CacheStats",
    "Classification",
    "InferenceFailed",
    "InferenceOptions",
    "ModelBusy",
    "ModelInfo",
    "ModelNotLoaded",
    "ModelRuntime",
    "RuntimeStats",
    "StaticModelRuntime",
    "VersionStats",
    "classification",
    "normalise_text",
]

BATCH_BUCKETS = ("1", "2", "4", "8", "16", "32", "64+")
#: The per-version queue's overload policy (see the module docstring).
OVERLOAD_POLICY = "reject_when_full"


# ----------------------------------------------------------------------------------- errors


class ModelBusy(TemporaryError):
    """A model version's queue is full (or the runtime is shutting down); retry later."""

    def __init__(
        self, ref: str, *, reason: str = "queue_full", queue_depth: int = 0, retry_after: float
    ):
        self.ref = ref
        self.reason = reason
        self.queue_depth = queue_depth
        self.retry_after = retry_after
        super().__init__(
            f"model {ref} is busy ({reason}, {queue_depth} texts queued), retry in "
            f"{retry_after:.3f} s / 模型 {ref} 繁忙，请在 {retry_after:.3f} 秒后重试"
        )


class ModelNotLoaded(PermanentError):
    """No loaded model (or version) answers to this name."""

    def __init__(self, model: str, detail: str = ""):
        self.model = model
        extra = f" ({detail})" if detail else ""
        super().__init__(f"model {model!r} is not loaded{extra} / 模型 {model!r} 未加载")


class BatchTooLarge(PermanentError):
    """One call carries more texts than a version's whole queue can ever hold."""


class InferenceFailed(TemporaryError):
    """The model raised while running a batch (every text of that batch gets this error)."""


# ----------------------------------------------------------------------------------- values


def normalise_text(text: str | bytes) -> str:
    """The cache key and the model input: ``clean_text``, lower-cased, whitespace folded."""
    return " ".join(clean_text(text).lower().split())


@dataclass(frozen=True, kw_only=True)
class Classification:
    """One text's answer. ``cached`` says it came from the prediction cache."""

    model: str
    version: str
    label: str
    probability: float
    distribution: Mapping[str, float]
    empty_input: bool = False
    cached: bool = False

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "label": self.label,
            "probability": round(self.probability, 6),
            "distribution": {k: round(v, 6) for k, v in self.distribution.items()},
            "empty_input": self.empty_input,
            "cached": self.cached,
        }


def classification(
    name: str, version: str, labels: Sequence[str], row: np.ndarray, *, empty: bool, cached: bool
) -> Classification:
    k = int(row.argmax())
    return Classification(
        model=name,
        version=version,
        label=labels[k],
        probability=float(row[k]),
        distribution=dict(zip(labels, row.tolist(), strict=True)),
        empty_input=empty,
        cached=cached,
    )


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    name: str
    version: str
    labels: tuple[str, ...]
    active: bool
    providers: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, kw_only=True)
class VersionStats:
    """Counters (``*_total``-like, only grow) and gauges (``queue_depth``, ``in_flight``)."""

    name: str
    version: str
    active: bool
    batches: int
    texts: int
    max_batch_seen: int
    batch_sizes: dict[str, int]  # BATCH_BUCKETS → batches
    queue_depth: int
    in_flight: int
    cache_hits: int
    cache_misses: int
    cache_entries: int
    busy_rejections: int
    errors: int

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, kw_only=True)
class CacheStats:
    capacity: int
    entries: int
    hits: int
    misses: int


@dataclass(frozen=True, kw_only=True)
class RuntimeStats:
    models: tuple[VersionStats, ...]
    cache: CacheStats

    def by_ref(self) -> dict[str, VersionStats]:
        return {m.ref: m for m in self.models}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for telemetry (counters and gauges only, never text)."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class InferenceOptions:
    """Tuning of :class:`BatchingModelRuntime`; every limit applies per model version."""

    max_batch: int = 32
    #: How long the oldest queued text may wait for batch mates (0 = dispatch at once).
    max_wait_us: int = 2_000
    #: Texts that may wait per version; beyond it new calls get ModelBusy.
    max_queue: int = 1_024
    #: Threads running ONNX work per version (each uses RuntimeOptions' intra-op threads).
    workers_per_model: int = 1
    #: Prediction cache entries over all versions; 0 turns the cache off.
    cache_size: int = 10_000
    #: Run through a freshly loaded model before it takes traffic (Chinese and English).
    warmup_texts: tuple[str, ...] = ("你好，我的快递到哪了", "hello, where is my order")
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)

    def __post_init__(self) -> None:
        for name, low in (("max_batch", 1), ("max_queue", 1), ("workers_per_model", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"must be at least {low}", field=name)
        for name in ("max_wait_us", "cache_size"):
            if getattr(self, name) < 0:
                raise ConfigError("must not be negative", field=name)


# ------------------------------------------------------------------------------------ seam


@runtime_checkable
class ModelRuntime(Protocol):
    """What callers (NLU pipeline, canary router) need from model serving."""

    async def classify(
        self, model: str, texts: Sequence[str | bytes]
    ) -> list[Classification]:  # pragma: no cover - protocol
        """One answer per text, in order. ``model`` is ``name`` (active version) or
        ``name@version`` (pinned). Raises ModelNotLoaded, ModelBusy, InferenceFailed."""
        ...


Rule = Callable[[str], "str | Mapping[str, float]"]


class StaticModelRuntime:
    """In-memory :class:`ModelRuntime` double: each model is a function of the normalised
    text returning a label (one-hot) or a label → probability mapping. Records every call."""

    def __init__(
        self,
        models: Mapping[str, Rule],
        *,
        labels: Mapping[str, Sequence[str]] | None = None,
        version: str = "static",
    ):
        self._models = dict(models)
        self._labels = {k: list(v) for k, v in (labels or {}).items()}
        self.version = version
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    async def classify(self, model: str, texts: Sequence[str | bytes]) -> list[Classification]:
        name, _, version = model.partition("@")
        rule = self._models.get(name)
        if rule is None or (version and version != self.version):
            raise ModelNotLoaded(model)
        self.calls.append((model, tuple(str(t) for t in texts)))
        await asyncio.sleep(0)  # a real runtime always yields to the loop
        out: list[Classification] = []
        for text in texts:
            norm = normalise_text(text)
            answer = rule(norm)
            labels = self._labels.get(name)
            if isinstance(answer, str):
                if labels is not None and answer not in labels:
                    raise ValueError(f"rule for {name!r} returned unknown label {answer!r}")
                dist = {lab: float(lab == answer) for lab in (labels or [answer])}
            else:
                dist = {lab: float(answer.get(lab, 0.0)) for lab in (labels or list(answer))}
            labs = list(dist)
            out.append(
                classification(
                    name,
                    self.version,
                    labs,
                    np.asarray([dist[lab] for lab in labs], dtype=np.float32),
                    empty=not norm,
                    cached=False,
                )
            )
        return out

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None
