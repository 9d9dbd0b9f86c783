"""Issue 10: deeply nested YAML is a located ConfigError (file:line), never a RecursionError:
``kefu-node check-config`` exits 78 naming the file and line, and a node given a good and a
too-deep tenant config serves the good one and reports the other (as for any invalid one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kefu.config.yamlsource import MAX_DEPTH, parse_yaml
from kefu.errors import ConfigError
from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG, TenantRegistry
from kefu.node.main import main
from kefu.node.sessions.sqlite_store import sqlite_store_opener

DEEP_FLOW = "[" * 5000
DEEP_BLOCK = "a:\n" + "".join("  " * i + "b:\n" for i in range(1, 3000))
# Within the limit each, but aliases stack composed nodes deeper than MAX_DEPTH.
_ONE = "[" * 40 + "1" + "]" * 40
DEEP_ALIASES = f"a: &a {_ONE}\nb: &b [{'[' * 39}*a{']' * 39}]\nc: [{'[' * 39}*b{']' * 39}]\n"


@pytest.mark.parametrize("text", [DEEP_FLOW, DEEP_BLOCK, DEEP_ALIASES, "{" * 5000])
def test_deep_nesting_is_a_located_config_error(text: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_yaml(text, source="deep.yaml")
    assert ei.value.line is not None and str(ei.value).startswith("deep.yaml:")
    assert "nested more than" in str(ei.value)


def test_nesting_within_the_limit_is_fine() -> None:
    depth = MAX_DEPTH - 1
    data = parse_yaml("[" * depth + "1" + "]" * depth).data
    for _ in range(depth - 1):
        data = data[0]
    assert data == [1]


@pytest.mark.parametrize("text", [DEEP_FLOW, DEEP_BLOCK])
def test_check_config_exits_78_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text(text, encoding="utf-8")
    assert main(["check-config", str(deep)]) == 78
    err = capsys.readouterr().err
    assert f"{deep}:" in err and "nested more than" in err
    assert "Traceback" not in err and "internal error" not in err


async def test_a_too_deep_tenant_config_does_not_stop_the_good_one(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text(DEEP_BLOCK, encoding="utf-8")
    reg = await TenantRegistry.open(
        tmp_path / "data", [DEMO_TENANT_CONFIG, deep], open_store=sqlite_store_opener()
    )
    try:
        assert list(reg.tenants) == ["demo-shop"]
        (err,) = reg.errors
        assert err.source == deep and f"{deep}:" in err.error and "nested" in err.error
    finally:
        await reg.close()


@pytest.mark.slow
def test_kefu_node_run_serves_the_good_tenant_beside_a_too_deep_one(tmp_path: Path) -> None:
    import signal
    import sys

    from packaging_helpers import start

    deep = tmp_path / "deep.yaml"
    deep.write_text(DEEP_BLOCK, encoding="utf-8")
    cmd = [sys.executable, "-m", "kefu.cli", "node", "run", "--config", str(DEMO_TENANT_CONFIG)]
    cmd += ["--config", str(deep), "--data-dir", str(tmp_path / "data")]
    proc, out = start([*cmd, "--listen", "127.0.0.1:0", "--metrics-listen", ""])
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "serving tenants [demo-shop]" in out
    assert f"tenant refused: {deep}:" in err and "nested more than" in err
    assert "Traceback" not in err and "RecursionError" not in err
