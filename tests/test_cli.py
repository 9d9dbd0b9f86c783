"""The ``kefu model`` / ``kefu keys`` CLI, in-process, against a real data directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kefu.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: tuple[Path, Path]) -> Path:
    """A data dir with one bundle trained through the CLI (local key created on first use)."""
    d = tmp_path_factory.mktemp("data")
    rc = main(
        [
            "model",
            "train",
            "--data",
            str(tiny_data[0]),
            "--dev",
            str(tiny_data[1]),
            "--name",
            "shop",
            "--version",
            "1",
            "--epochs",
            "12",
            "--data-dir",
            str(d),
            "--json",
        ]
    )
    assert rc == 0
    return d


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_keys_new_writes_pair_and_trusts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run(
        capsys, "keys", "new", "--name", "release", "--data-dir", str(tmp_path), "--trust"
    )
    assert rc == 0 and "id " in out
    assert (tmp_path / "keys" / "release.key").exists() and (
        tmp_path / "trusted-keys" / "release.pub"
    ).exists()
    rc, _, err = run(capsys, "keys", "new", "--name", "release", "--data-dir", str(tmp_path))
    assert rc != 0 and "already exists" in err


def test_list_predict_eval_verify(
    trained: Path, tiny_data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(trained)
    rc, out, _ = run(capsys, "model", "list", "--json", "--data-dir", d)
    rows = {r["name"]: r for r in json.loads(out)}
    assert rc == 0 and rows["shop"]["verified"] and rows["shop"]["version"] == "1"
    assert rows["shop"]["metrics"]["accuracy"] > 0.8 and Path(rows["shop"]["path"]).is_dir()
    rc, out, _ = run(capsys, "model", "list", "--data-dir", d)
    assert "shop" in out and "verified" in out

    rc, out, _ = run(
        capsys,
        "model",
        "predict",
        "shop",
        "--text",
        "我的快递到哪了",
        "--text",
        "",
        "--json",
        "--data-dir",
        d,
    )
    preds = json.loads(out)
    assert preds[0]["label"] == "delivery_tracking" and preds[0]["model"] == "shop@1"
    assert preds[1]["empty_input"] is True

    rc, out, _ = run(
        capsys,
        "model",
        "eval",
        "shop",
        "--data",
        str(tiny_data[1]),
        "--json",
        "--rounds",
        "10",
        "--data-dir",
        d,
    )
    rep = json.loads(out)
    assert rc == 0 and {"accuracy", "macro_f1", "per_class", "confusion", "ece", "latency"} <= set(
        rep
    )
    rc, out, _ = run(
        capsys,
        "model",
        "eval",
        "shop",
        "--data",
        str(tiny_data[1]),
        "--rounds",
        "10",
        "--data-dir",
        d,
    )
    assert "macro-F1" in out and "p99" in out

    rc, out, _ = run(capsys, "model", "verify", "shop@1", "--data-dir", d)
    assert rc == 0 and out.startswith("OK")


def test_gate_exit_codes(
    trained: Path, tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(trained)
    rc, out, _ = run(
        capsys,
        "model",
        "gate",
        "shop@1",
        "--baseline",
        "shop@1",
        "--data",
        str(tiny_data[1]),
        "--no-latency",
        "--data-dir",
        d,
    )
    assert rc == 0 and "result: PASS" in out
    # A one-epoch candidate is clearly worse than the baseline.
    rc, _, _ = run(
        capsys,
        "model",
        "train",
        "--data",
        str(tiny_data[0]),
        "--dev",
        str(tiny_data[1]),
        "--name",
        "shop",
        "--version",
        "weak",
        "--epochs",
        "1",
        "--data-dir",
        d,
        "--json",
    )
    assert rc == 0
    rc, out, _ = run(
        capsys,
        "model",
        "gate",
        "shop@weak",
        "--baseline",
        "shop@1",
        "--data",
        str(tiny_data[1]),
        "--no-latency",
        "--json",
        "--data-dir",
        d,
    )
    res = json.loads(out)
    assert rc == 3 and res["passed"] is False
    assert any(c["name"] == "accuracy" and not c["passed"] for c in res["checks"])


def test_tampered_bundle_gives_clear_error_not_a_traceback(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(trained / "models" / "shop" / "1", copy)
    with (copy / "model.onnx").open("r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00\x00\x00\x00")
    rc, _, err = run(
        capsys, "model", "predict", str(copy), "--text", "hi", "--data-dir", str(trained)
    )
    assert rc == 65
    assert "model.onnx" in err and "SHA-256" in err and "Traceback" not in err
    rc, _, err = run(capsys, "model", "verify", str(copy), "--data-dir", str(tmp_path / "empty"))
    assert rc == 65 and "which is not among the" in err


def test_bad_data_file_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,greeting\n,greeting\n")
    rc, _, err = run(
        capsys, "model", "train", "--data", str(bad), "--name", "x", "--data-dir", str(tmp_path)
    )
    assert rc == 65 and f"{bad}:3: empty or missing text" in err


def test_compile_tensorrt_on_cpu_machine_exits_nonzero(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this host has TensorRT; the CPU-only refusal cannot be observed here")
    rc, _, err = run(capsys, "model", "compile", "--tensorrt", "shop", "--data-dir", str(trained))
    assert rc == 69 and "TensorRT is not available" in err


def test_console_script_entry_point(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "kefu"
    res = subprocess.run(
        [str(exe), "model", "list", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # A fresh data dir gets the shipped, release-signed default bundles installed.
    assert res.returncode == 0, res.stderr
    assert "demo-shop-intent" in res.stdout and "verified" in res.stdout
    assert "Traceback" not in res.stderr
