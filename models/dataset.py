"""Labelled text datasets: CSV, TSV or JSON Lines with a text column and a label column.

Every problem is reported as a :class:`~kefu.errors.DatasetError` naming the file and line:
wrong encoding, missing columns, empty text or label, labels outside an allowed set.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kefu.errors import DatasetError

__all__ = ["LABEL_COLUMNS", "Dataset", "load_dataset", "stratified_split"]

LABEL_COLUMNS = ("label", "category", "intent", "sentiment")
MAX_TEXT_CHARS = 4096


@dataclass
class Dataset:
    texts: list[str]
    labels: list[str]
    path: str = "<memory>"
    lines: list[int] = field(default_factory=list)
    sha256: str = ""

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError("texts and labels differ in length")
        if not self.lines:
            self.lines = list(range(1, len(self.texts) + 1))
        if not self.sha256:
            h = hashlib.sha256()
            for t, lab in zip(self.texts, self.labels, strict=True):
                h.update(f"{t}\t{lab}\n".encode())
            self.sha256 = h.hexdigest()

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def label_set(self) -> list[str]:
        return sorted(set(self.labels))

    def counts(self) -> Counter[str]:
        return Counter(self.labels)

    def subset(self, idx: Iterable[int]) -> Dataset:
        ids = list(idx)
        return Dataset(
            [self.texts[i] for i in ids],
            [self.labels[i] for i in ids],
            path=self.path,
            lines=[self.lines[i] for i in ids],
        )

    def check_labels(self, allowed: Sequence[str]) -> None:
        """Refuse labels the model does not know, naming the first offending line."""
        known = set(allowed)
        for lab, line in zip(self.labels, self.lines, strict=True):
            if lab not in known:
                raise DatasetError(
                    f"unknown label {lab!r} (the model knows: {', '.join(sorted(known)[:20])}"
                    f"{' …' if len(known) > 20 else ''})",
                    path=self.path,
                    line=line,
                )

    def summary(self) -> dict[str, object]:
        return {
            "path": Path(self.path).name,
            "rows": len(self),
            "labels": len(self.label_set),
            "sha256": self.sha256,
        }


def concat(parts: Sequence[Dataset], *, path: str) -> Dataset:
    texts: list[str] = []
    labels: list[str] = []
    for p in parts:
        texts += p.texts
        labels += p.labels
    return Dataset(texts, labels, path=path)


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x}); re-save the file as UTF-8",
            path=path,
            line=line,
        ) from exc


def _pick_columns(
    columns: Sequence[str], path: Path, text_col: str | None, label_col: str | None
) -> tuple[str, str]:
    cols = [c.strip() for c in columns]
    tcol = text_col or "text"
    if tcol not in cols:
        raise DatasetError(
            f"no text column {tcol!r} (columns: {', '.join(cols) or 'none'}); use --text-col",
            path=path,
            line=1,
        )
    if label_col:
        if label_col not in cols:
            raise DatasetError(
                f"no label column {label_col!r} (columns: {', '.join(cols)})", path=path, line=1
            )
        return tcol, label_col
    for cand in LABEL_COLUMNS:
        if cand in cols:
            return tcol, cand
    raise DatasetError(
        f"no label column: expected one of {', '.join(LABEL_COLUMNS)} (columns: "
        f"{', '.join(cols)}); use --label-col",
        path=path,
        line=1,
    )


def _check_row(text: object, label: object, path: Path, line: int) -> tuple[str, str]:
    if not isinstance(text, str) or not text.strip():
        raise DatasetError("empty or missing text", path=path, line=line)
    if isinstance(label, int | float) and not isinstance(label, bool):
        label = str(label)
    if not isinstance(label, str) or not label.strip():
        raise DatasetError("empty or missing label", path=path, line=line)
    if len(text) > MAX_TEXT_CHARS:
        raise DatasetError(f"text longer than {MAX_TEXT_CHARS} characters", path=path, line=line)
    return text.strip(), label.strip()


def load_dataset(
    path: str | Path,
    *,
    text_col: str | None = None,
    label_col: str | None = None,
    allowed_labels: Sequence[str] | None = None,
) -> Dataset:
    """Load a labelled file; format from the extension (.csv, .tsv, .jsonl/.ndjson)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read file ({exc.strerror})", path=path) from exc
    content = _decode(path, data)
    suffix = path.suffix.lower()
    texts: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    if suffix in (".jsonl", ".ndjson"):
        tcol = lcol = ""
        for lineno, raw in enumerate(content.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"invalid JSON ({exc.msg})", path=path, line=lineno) from exc
            if not isinstance(obj, dict):
                raise DatasetError("each line must be a JSON object", path=path, line=lineno)
            if not tcol:
                tcol, lcol = _pick_columns(list(obj), path, text_col, label_col)
            if tcol not in obj or lcol not in obj:
                raise DatasetError(f"missing {tcol!r} or {lcol!r} key", path=path, line=lineno)
            t, lab = _check_row(obj[tcol], obj[lcol], path, lineno)
            texts.append(t)
            labels.append(lab)
            lines.append(lineno)
    elif suffix in (".csv", ".tsv"):
        reader = csv.reader(io.StringIO(content), delimiter="\t" if suffix == ".tsv" else ",")
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError("file is empty", path=path, line=1) from None
        except csv.Error as exc:
            raise DatasetError(f"malformed header ({exc})", path=path, line=1) from exc
        tcol, lcol = _pick_columns(header, path, text_col, label_col)
        names = [c.strip() for c in header]
        ti, li = names.index(tcol), names.index(lcol)
        try:
            for row in reader:
                lineno = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(names):
                    raise DatasetError(
                        f"expected {len(names)} columns, found {len(row)}", path=path, line=lineno
                    )
                t, lab = _check_row(row[ti], row[li], path, lineno)
                texts.append(t)
                labels.append(lab)
                lines.append(lineno)
        except csv.Error as exc:
            raise DatasetError(f"malformed CSV ({exc})", path=path, line=reader.line_num) from exc
    else:
        raise DatasetError(
            f"unsupported file type {suffix or '(none)'!r}: use .csv, .tsv or .jsonl", path=path
        )
    if not texts:
        raise DatasetError("no labelled rows", path=path)
    ds = Dataset(
        texts, labels, path=str(path), lines=lines, sha256=hashlib.sha256(data).hexdigest()
    )
    if allowed_labels is not None:
        ds.check_labels(allowed_labels)
    return ds


def stratified_split(
    ds: Dataset, *, dev_fraction: float, seed: int = 13
) -> tuple[Dataset, Dataset]:
    """Deterministic per-label split into (train, dev)."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(ds.labels):
        by_label.setdefault(lab, []).append(i)
    train_idx: list[int] = []
    dev_idx: list[int] = []
    for lab in sorted(by_label):
        ids = by_label[lab]
        rng.shuffle(ids)
        n_dev = max(1, round(len(ids) * dev_fraction)) if len(ids) > 1 else 0
        dev_idx += ids[:n_dev]
        train_idx += ids[n_dev:]
    return ds.subset(sorted(train_idx)), ds.subset(sorted(dev_idx))
