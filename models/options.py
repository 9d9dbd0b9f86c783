"""How to run a model and how its input text is cleaned: pure, no onnxruntime (the node's
pure core uses these; :mod:`kefu.models.runtime` is the onnxruntime adapter)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_TEXT_CHARS", "RuntimeOptions", "clean_text"]

MAX_TEXT_CHARS = 4096


@dataclass(kw_only=True)
class RuntimeOptions:
    """How to run a bundle. ``providers`` is a preference order of tensorrt / cuda / cpu."""

    providers: Sequence[str] = ("tensorrt", "cuda", "cpu")
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    trt_engine_cache_dir: str | None = None
    trt_fp16: bool = False
    device_id: int = 0
    max_batch: int = 64
    #: Refuse to fall back: raise ProviderUnavailable unless the first choice is used.
    strict: bool = False


def clean_text(text: str | bytes) -> str:
    """Make any input safe to tokenize: valid UTF-8, no control characters, bounded length."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    else:
        # Command-line arguments with invalid UTF-8 arrive as lone surrogates.
        text = text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    text = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Cf", "Cs") else ch
        for ch in text[:MAX_TEXT_CHARS]
    )
    return " ".join(text.split())
