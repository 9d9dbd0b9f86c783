"""Kefu model pipeline: datasets, training (torch), signed bundles and the runtime loader.

The curated API is importable from here; names load lazily so that a node importing
:mod:`kefu.models.runtime` never pulls in torch.
"""

from __future__ import annotations

from kefu.lazy import lazy_exports

_EXPORTS = {
    "Dataset": "dataset",
    "load_dataset": "dataset",
    "TrainConfig": "training",
    "train_bundle": "training",
    "RuntimeOptions": "runtime",
    "TextClassifier": "runtime",
    "Prediction": "runtime",
    "load_model": "runtime",
    "evaluate": "evaluation",
    "GateTolerance": "gate",
    "compare": "gate",
    "ModelStore": "store",
    "trust_for": "store",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports("kefu.models", _EXPORTS)
