"""Evaluation of a classifier on a labelled dataset: the numbers every gate and report uses.

``classification_report`` is pure (numpy only); ``evaluate`` runs a loaded model over a dataset
and adds latency percentiles measured at batch 1 and batch 32 on the model's own threads.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from kefu.models.dataset import Dataset
from kefu.models.runtime import TextClassifier

__all__ = ["classification_report", "evaluate", "expected_calibration_error", "measure_latency"]


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 15
) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    if len(confidence) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        sel = (confidence > lo) & (confidence <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(ece)


def classification_report(
    y_true: Sequence[str], probs: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class P/R/F1, confusion matrix and calibration error."""
    index = {lab: i for i, lab in enumerate(labels)}
    t = np.array([index[y] for y in y_true], dtype=np.int64)
    p = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    k = len(labels)
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (t, p), 1)
    tp = np.diag(conf).astype(float)
    pred_n, true_n = conf.sum(0).astype(float), conf.sum(1).astype(float)
    precision = np.divide(tp, pred_n, out=np.zeros(k), where=pred_n > 0)
    recall = np.divide(tp, true_n, out=np.zeros(k), where=true_n > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    present = true_n > 0  # macro averages over classes that occur in the data
    correct = (t == p).astype(float)
    return {
        "n": len(t),
        "accuracy": float(correct.mean()) if len(t) else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "ece": expected_calibration_error(probs.max(1) if len(probs) else np.zeros(0), correct),
        "per_class": {
            lab: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(true_n[i]),
            }
            for i, lab in enumerate(labels)
        },
        "labels": list(labels),
        "confusion": conf.tolist(),
    }


def measure_latency(
    model: TextClassifier, texts: Sequence[str], *, batch: int, rounds: int = 200, warmup: int = 20
) -> dict[str, float]:
    """End-to-end predict latency (tokenize + run + softmax) in milliseconds."""
    if not texts:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "batch": batch}
    pool = list(texts)
    samples = []
    for r in range(warmup + rounds):
        start = (r * batch) % len(pool)
        chunk = (pool[start:] + pool)[:batch]
        t0 = time.perf_counter()
        model.predict_proba(chunk)
        if r >= warmup:
            samples.append((time.perf_counter() - t0) * 1000.0)
    arr = np.array(samples)
    return {
        "batch": batch,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
    }


def evaluate(
    model: TextClassifier, data: Dataset, *, latency: bool = True, rounds: int = 200
) -> dict[str, Any]:
    data.check_labels(model.labels)
    probs = model.predict_proba(data.texts)
    report = classification_report(data.labels, probs, model.labels)
    report["model"] = model.ref
    report["dataset"] = data.summary()
    if latency:
        report["latency"] = {
            "threads": model.options.intra_op_threads,
            "batch_1": measure_latency(model, data.texts, batch=1, rounds=rounds),
            "batch_32": measure_latency(model, data.texts, batch=32, rounds=max(20, rounds // 8)),
        }
    return report
