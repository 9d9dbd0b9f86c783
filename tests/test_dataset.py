from __future__ import annotations

from pathlib import Path

import pytest

from kefu.errors import DatasetError
from kefu.models.dataset import load_dataset, stratified_split


def write(p: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def test_csv_tsv_jsonl_with_label_column_variants(tmp_path: Path) -> None:
    csv = load_dataset(
        write(tmp_path / "a.csv", 'text,category\n"退款, 多久到账",return_refund\nhi,greeting\n')
    )
    assert csv.texts == ["退款, 多久到账", "hi"]
    assert csv.labels == ["return_refund", "greeting"]
    tsv = load_dataset(write(tmp_path / "a.tsv", "sentiment\ttext\npositive\t谢谢\n"))
    assert tsv.labels == ["positive"] and tsv.texts == ["谢谢"]
    jl = load_dataset(
        write(tmp_path / "a.jsonl", '{"text": "where is it", "intent": "delivery_tracking"}\n\n')
    )
    assert jl.labels == ["delivery_tracking"]
    named = load_dataset(
        write(tmp_path / "b.csv", "q,y\nhello,greeting\n"), text_col="q", label_col="y"
    )
    assert named.texts == ["hello"]


@pytest.mark.parametrize(
    ("name", "content", "line", "fragment"),
    [
        ("nolabel.csv", "text,other\nhi,x\n", 1, "no label column"),
        ("notext.csv", "utterance,label\nhi,greeting\n", 1, "no text column 'text'"),
        ("empty_text.csv", "text,label\nhi,greeting\n   ,greeting\n", 3, "empty or missing text"),
        (
            "empty_label.jsonl",
            '{"text":"a","label":"x"}\n{"text":"b","label":""}\n',
            2,
            "empty or missing label",
        ),
        ("badjson.jsonl", '{"text":"a","label":"x"}\n{"text": oops}\n', 2, "invalid JSON"),
        ("cols.csv", "text,label\nhi,greeting,extra\n", 2, "expected 2 columns"),
    ],
)
def test_errors_name_file_and_line(
    tmp_path: Path, name: str, content: str, line: int, fragment: str
) -> None:
    p = write(tmp_path / name, content)
    with pytest.raises(DatasetError) as ei:
        load_dataset(p)
    assert ei.value.line == line
    assert fragment in str(ei.value)
    assert str(ei.value).startswith(f"{p}:{line}: ")


def test_wrong_encoding_names_the_line(tmp_path: Path) -> None:
    p = write(
        tmp_path / "gbk.csv",
        b"text,label\nhello,greeting\n" + "退款,return_refund\n".encode("gbk"),
    )
    with pytest.raises(DatasetError) as ei:
        load_dataset(p)
    assert ei.value.line == 3
    assert "not valid UTF-8" in str(ei.value)


def test_unknown_labels_are_refused_with_line(tmp_path: Path) -> None:
    p = write(
        tmp_path / "d.jsonl", '{"text":"a","label":"greeting"}\n{"text":"b","label":"weather"}\n'
    )
    with pytest.raises(DatasetError) as ei:
        load_dataset(p, allowed_labels=["greeting", "goodbye"])
    assert ei.value.line == 2 and "unknown label 'weather'" in str(ei.value)


def test_missing_file_and_unsupported_type(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(tmp_path / "nope.csv")
    with pytest.raises(DatasetError, match="unsupported file type"):
        load_dataset(write(tmp_path / "x.xlsx", "x"))


def test_stratified_split_is_deterministic_and_disjoint(tiny_data: tuple[Path, Path]) -> None:
    ds = load_dataset(tiny_data[0])
    a_train, a_dev = stratified_split(ds, dev_fraction=0.2, seed=1)
    _, b_dev = stratified_split(ds, dev_fraction=0.2, seed=1)
    assert a_dev.lines == b_dev.lines
    assert set(a_train.lines).isdisjoint(a_dev.lines)
    assert len(a_train) + len(a_dev) == len(ds)
    assert a_dev.label_set == ds.label_set
