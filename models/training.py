"""Training pipeline: labelled data → PyTorch (CPU) → ONNX → INT8 → evaluated, signed bundle.

Needs torch (the ``[train]`` extra). The bundle it writes is loaded by :mod:`kefu.models.runtime`,
which does not.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from kefu.bundle import Manifest, sign_bundle, write_manifest
from kefu.errors import DatasetError, PermanentError
from kefu.keys import SigningKey
from kefu.models.dataset import Dataset, stratified_split
from kefu.models.evaluation import evaluate
from kefu.models.runtime import RuntimeOptions, TextClassifier, open_unverified

__all__ = ["FAMILIES", "TrainConfig", "TrainResult", "train_bundle"]

FAMILIES = ("ngram", "minilm")
OPSET = 17
Progress = Callable[[str, float], None]


@dataclass(kw_only=True)
class TrainConfig:
    family: str = "ngram"
    epochs: int | None = None  # default: 25 (ngram), 5 (minilm fine-tuned), 60 (minilm frozen)
    batch_size: int | None = None  # default: 64 (ngram), 32 (minilm)
    lr: float | None = None  # default: 3e-3 (ngram), 8e-5 (minilm fine-tuned), 3e-3 (frozen)
    weight_decay: float = 0.01
    seed: int = 13
    threads: int = 2
    quantize: bool = True
    freeze: bool = False  # minilm only: train the head on frozen embeddings
    max_length: int | None = None  # default: 128 (ngram), 64 (minilm)
    vocab_size: int = 12_000
    bigram_buckets: int = 1 << 16
    dim: int = 64  # ngram: embedding width
    hidden: int = 128  # ngram: MLP width
    dropout: float = 0.2
    dev_fraction: float = 0.1  # used when no dev set is given
    label_smoothing: float = 0.0
    latency_rounds: int = 200  # 0: no latency measurement (accuracy only)
    # Hold this fraction of the training data out to fit a softmax temperature (0 = off), so
    # that confidence thresholds downstream mean something.
    calibration_fraction: float = 0.1

    def resolved(self) -> TrainConfig:
        if self.family not in FAMILIES:
            raise PermanentError(
                f"unknown model family {self.family!r} (choose {', '.join(FAMILIES)})"
            )
        d = asdict(self)
        ngram = self.family == "ngram"
        d["epochs"] = self.epochs or (25 if ngram else 60 if self.freeze else 5)
        d["batch_size"] = self.batch_size or (64 if ngram else 32)
        d["lr"] = self.lr or (3e-3 if ngram or self.freeze else 8e-5)
        d["max_length"] = self.max_length or (128 if ngram else 64)
        return TrainConfig(**d)


@dataclass
class TrainResult:
    bundle_dir: Path
    manifest: Manifest
    report: dict[str, Any]
    fp32_report: dict[str, Any]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def _encode(tok: Tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return [e.ids[:max_length] or [0] for e in tok.encode_batch(texts)]


def _batches(
    ids: list[list[int]], y: list[int], batch: int, rng: random.Random, *, bucket: bool
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    order = list(range(len(ids)))
    rng.shuffle(order)
    if bucket:
        # Sort within large windows so a batch holds rows of similar length (less padding).
        win = batch * 50
        order = [
            i
            for s in range(0, len(order), win)
            for i in sorted(order[s : s + win], key=lambda k: len(ids[k]))
        ]
    chunks = [order[s : s + batch] for s in range(0, len(order), batch)]
    rng.shuffle(chunks)
    return [(*_pad([ids[i] for i in ch]), torch.tensor([y[i] for i in ch])) for ch in chunks]


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id rows to the longest one: (input_ids, attention_mask)."""
    width = max(map(len, rows))
    a = torch.zeros((len(rows), width), dtype=torch.long)
    m = torch.zeros_like(a)
    for r, row in enumerate(rows):
        a[r, : len(row)] = torch.tensor(row)
        m[r, : len(row)] = 1
    return a, m


def _fit_frozen_head(
    model: nn.Module, cfg: TrainConfig, ids: list[list[int]], y: list[int], progress: Progress
) -> list[float]:
    """Frozen MiniLM: embed every row once, then train only the linear head on the cache."""
    from kefu.models.minilm import MiniLMClassifier

    assert cfg.epochs and cfg.batch_size and cfg.lr and isinstance(model, MiniLMClassifier)
    model.eval()
    with torch.no_grad():
        emb = torch.cat([model.embed(*_pad(ids[s : s + 64])) for s in range(0, len(ids), 64)])
    target = torch.tensor(y)
    head = model.classifier
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for epoch in range(cfg.epochs):
        total = 0.0
        for batch in torch.randperm(len(ids), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            loss = loss_fn(head(emb[batch]), target[batch])
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        losses.append(total / len(ids))
        progress("train", (epoch + 1) / cfg.epochs)
    return losses


def _build(
    cfg: TrainConfig, train: Dataset, n_labels: int
) -> tuple[nn.Module, Tokenizer, dict[str, Any]]:
    assert cfg.max_length is not None
    if cfg.family == "ngram":
        from kefu.models.ngram import NgramClassifier, NgramConfig, build_tokenizer

        ncfg = NgramConfig(
            vocab_size=cfg.vocab_size,
            bigram_buckets=cfg.bigram_buckets,
            max_length=cfg.max_length,
            dim=cfg.dim,
            hidden=cfg.hidden,
            dropout=cfg.dropout,
        )
        tok = build_tokenizer(train.texts, vocab_size=cfg.vocab_size)
        model: nn.Module = NgramClassifier(
            vocab_size=tok.get_vocab_size(), num_labels=n_labels, config=ncfg
        )
        return model, tok, {"arch": "unigram+hashed-bigram embedding bag, MLP head", **asdict(ncfg)}
    from kefu.models.minilm import MiniLMClassifier, MiniLMConfig, load_tokenizer

    mcfg = MiniLMConfig(freeze=cfg.freeze, max_length=cfg.max_length)
    model = MiniLMClassifier(num_labels=n_labels, config=mcfg)
    arch = "all-MiniLM-L6-v2 mean-pooled + linear head, " + (
        "frozen" if cfg.freeze else "fine-tuned"
    )
    return model, load_tokenizer(cfg.max_length), {"arch": arch, **asdict(mcfg)}


def _fit(
    model: nn.Module,
    cfg: TrainConfig,
    ids: list[list[int]],
    y: list[int],
    progress: Progress,
) -> list[float]:
    assert cfg.epochs and cfg.batch_size and cfg.lr
    rng = random.Random(cfg.seed)
    sparse = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.Embedding) and m.sparse
        for p in m.parameters()
    }
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse]
    sparse_params = [p for p in model.parameters() if p.requires_grad and id(p) in sparse]
    opts: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ]
    if sparse_params:
        opts.append(torch.optim.SparseAdam(sparse_params, lr=cfg.lr))
    steps = cfg.epochs * math.ceil(len(ids) / cfg.batch_size)
    warm = max(1, steps // 10) if cfg.family == "minilm" else 0

    def lr_at(step: int) -> float:  # linear warm-up then linear decay
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (steps - step) / max(1, steps - warm))

    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lr_at) for o in opts]
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    losses: list[float] = []
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        total = 0.0
        batches = _batches(ids, y, cfg.batch_size, rng, bucket=cfg.family == "minilm")
        for a, m, t in batches:
            for o in opts:
                o.zero_grad()
            loss = loss_fn(model(a, m), t)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            for o, s in zip(opts, scheds, strict=True):
                o.step()
                s.step()
            total += loss.item() * len(t)
            step += 1
            progress("train", step / steps)
        losses.append(total / len(ids))
        if not math.isfinite(losses[-1]):
            raise PermanentError(f"training diverged at epoch {epoch + 1} (loss {losses[-1]})")
    model.eval()
    return losses


def _fit_temperature(
    model: nn.Module, tok: Tokenizer, data: Dataset, y: list[int], max_length: int
) -> float:
    """The softmax temperature minimising negative log-likelihood on held-out rows."""
    ids = _encode(tok, data.texts, max_length)
    logits = []
    with torch.no_grad():
        for s in range(0, len(ids), 256):
            logits.append(model(*_pad(ids[s : s + 256])))
    z, t = torch.cat(logits), torch.tensor(y)
    grid = [0.5 + 0.05 * k for k in range(91)]  # 0.5 … 5.0
    nll = [float(nn.functional.cross_entropy(z / temp, t)) for temp in grid]
    return round(grid[int(np.argmin(nll))], 3)


def _export(model: nn.Module, path: Path) -> None:
    # The TorchScript exporter (dynamo=False) gives a plain graph that onnxruntime's dynamic
    # quantizer handles fully, and needs no onnxscript; the dynamo exporter is not required here.
    ids = torch.ones((2, 8), dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "logits": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )


def _quantize(src: Path, dst: Path, family: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Embedding tables dominate both families' size: quantize Gather too. Per-channel weight
    # scales keep the transformer's accuracy drop smaller (measured: see README).
    root = logging.getLogger()
    # onnxruntime logs a generic "consider pre-processing" hint on the root logger; it is
    # advice for static (calibrated) quantization and only confuses users here.
    hint = _DropMessage("pre-processing before quantization")
    root.addFilter(hint)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm", "Gather"],
            per_channel=family == "minilm",
        )
    finally:
        root.removeFilter(hint)


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def _write_payload(out: Path, onnx_src: Path, tok: Tokenizer, labels: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_src, out / "model.onnx")
    tok.save(str(out / "tokenizer.json"))
    (out / "labels.json").write_text(
        json.dumps(labels, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def _headline(r: dict[str, Any]) -> dict[str, Any]:
    keep = {k: r[k] for k in ("n", "accuracy", "macro_f1", "ece")}
    if "latency" in r:
        keep["latency"] = r["latency"]
    keep["per_class"] = r["per_class"]
    return keep


def train_bundle(
    train: Dataset,
    dev: Dataset | None,
    *,
    name: str,
    version: str,
    task: str,
    out_dir: Path,
    config: TrainConfig | None = None,
    signing_key: SigningKey | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train, export, quantize, evaluate and (if a key is given) sign one bundle."""
    cfg = (config or TrainConfig()).resolved()
    report_progress = progress or (lambda stage, frac: None)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    if dev is None:
        train, dev = stratified_split(train, dev_fraction=cfg.dev_fraction, seed=cfg.seed)
    labels = sorted(train.label_set)
    if len(labels) < 2:
        raise DatasetError("need at least two distinct labels to train", path=train.path)
    dev.check_labels(labels)
    calib: Dataset | None = None
    if cfg.calibration_fraction > 0:
        train, calib = stratified_split(train, dev_fraction=cfg.calibration_fraction, seed=cfg.seed)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise PermanentError(f"{out_dir}: output directory is not empty")

    report_progress("prepare", 0.0)
    model, tok, arch = _build(cfg, train, len(labels))
    assert cfg.max_length is not None
    index = {lab: i for i, lab in enumerate(labels)}
    ids = _encode(tok, train.texts, cfg.max_length)
    timings["prepare_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    fit = _fit_frozen_head if cfg.family == "minilm" and cfg.freeze else _fit
    losses = fit(model, cfg, ids, [index[lab] for lab in train.labels], report_progress)
    timings["train_s"] = time.perf_counter() - t1

    runtime: dict[str, Any] = {"max_length": cfg.max_length, "pad_id": 0}
    if calib is not None and len(calib):
        runtime["temperature"] = _fit_temperature(
            model, tok, calib, [index[x] for x in calib.labels], cfg.max_length
        )
    manifest = Manifest(
        name=name,
        version=version,
        task=task,
        family=cfg.family,
        labels=labels,
        inputs={
            "input_ids": {"dtype": "int64", "shape": ["batch", "sequence"]},
            "attention_mask": {"dtype": "int64", "shape": ["batch", "sequence"]},
        },
        outputs={"logits": {"dtype": "float32", "shape": ["batch", len(labels)]}},
        dataset={
            "train": train.summary(),
            "dev": dev.summary(),
            **({"calibration": calib.summary()} if calib is not None else {}),
        },
        training={
            **{k: v for k, v in asdict(cfg).items() if v is not None},
            **arch,
            "loss_per_epoch": [round(v, 5) for v in losses],
            "torch": torch.__version__,
            "opset": OPSET,
        },
        runtime=runtime,
    )
    eval_opts = RuntimeOptions(providers=("cpu",), intra_op_threads=1)
    with tempfile.TemporaryDirectory(prefix="kefu-train-") as tmp:
        work = Path(tmp)
        t2 = time.perf_counter()
        report_progress("export", 0.0)
        _export(model, work / "fp32.onnx")
        fp32_dir = work / "fp32"
        _write_payload(fp32_dir, work / "fp32.onnx", tok, labels)
        fp32: TextClassifier = open_unverified(fp32_dir, manifest, options=eval_opts)
        fp32_report = evaluate(fp32, dev, latency=cfg.latency_rounds > 0, rounds=cfg.latency_rounds)
        timings["export_s"] = time.perf_counter() - t2
        final_src = work / "fp32.onnx"
        if cfg.quantize:
            report_progress("quantize", 0.0)
            _quantize(work / "fp32.onnx", work / "int8.onnx", cfg.family)
            final_src = work / "int8.onnx"
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_payload(out_dir, final_src, tok, labels)
    report_progress("evaluate", 0.0)
    final = open_unverified(out_dir, manifest, options=eval_opts)
    report = evaluate(final, dev, latency=cfg.latency_rounds > 0, rounds=cfg.latency_rounds)
    manifest.metrics = {
        "dev": _headline(report),
        "precision": "int8" if cfg.quantize else "fp32",
        "fp32_accuracy": fp32_report["accuracy"],
        "fp32_macro_f1": fp32_report["macro_f1"],
        "fp32_latency": fp32_report.get("latency"),
        "quantization_accuracy_change": report["accuracy"] - fp32_report["accuracy"],
        "train_seconds": round(timings["train_s"], 2),
        "size_bytes": (out_dir / "model.onnx").stat().st_size,
    }
    write_manifest(out_dir, manifest)
    if signing_key is not None:
        sign_bundle(out_dir, signing_key)
    report_progress("done", 1.0)
    return TrainResult(out_dir, manifest, report, fp32_report, time.perf_counter() - t0, timings)
