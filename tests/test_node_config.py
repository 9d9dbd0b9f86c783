"""node.yaml: typed defaults, path resolution, errors with file, line and field;
``kefu-node check-config`` and ``version`` (as Python, the built binary is tested in
tests/test_packaging.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kefu.config.node import (
    DEFAULT_NODE_YAML,
    NodeConfig,
    load_node_config,
    parse_host_port,
    parse_node_config,
)
from kefu.errors import ConfigError
from kefu.node.bootstrap import node_options
from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG
from kefu.node.main import main


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_empty_file_is_all_defaults_and_paths_resolve_against_the_file(tmp_path: Path) -> None:
    cfg = load_node_config(write(tmp_path / "etc" / "node.yaml", "{}\n"))
    assert cfg.config == NodeConfig()
    assert cfg.data_dir == Path("/var/lib/kefu")
    assert cfg.tenant_files == ()  # = the demo tenant
    rel = load_node_config(write(tmp_path / "etc" / "node.yaml", "data_dir: data\n"))
    assert rel.data_dir == (tmp_path / "etc" / "data").resolve()


def test_the_installed_default_config_is_valid_and_safe(tmp_path: Path) -> None:
    cfg = parse_node_config(DEFAULT_NODE_YAML, base=tmp_path)
    assert cfg.config.listen.startswith("127.0.0.1:")  # loopback only until the operator opens it
    assert cfg.config.metrics_listen == "127.0.0.1:7401"
    assert cfg.config.limits.drain_timeout_s == 10
    opts = node_options(cfg)
    assert opts.tenant_configs == [DEMO_TENANT_CONFIG]
    assert opts.grace_s == 10 and opts.max_in_flight == 8


def test_tenant_globs_expand_sorted_and_missing_files_are_located(tmp_path: Path) -> None:
    (tmp_path / "tenants").mkdir()
    for name in ("b.yaml", "a.yaml"):
        shutil.copy(DEMO_TENANT_CONFIG, tmp_path / "tenants" / name)
    cfg = load_node_config(write(tmp_path / "node.yaml", "tenants:\n  - tenants/*.yaml\n"))
    assert [p.name for p in cfg.tenant_files] == ["a.yaml", "b.yaml"]
    with pytest.raises(ConfigError) as err:
        load_node_config(
            write(tmp_path / "node.yaml", "listen: 127.0.0.1:7400\ntenants:\n  - nope.yaml\n")
        )
    assert err.value.line == 3 and err.value.field == "tenants[0]"
    assert "no such file" in str(err.value) and "node.yaml:3:" in str(err.value)


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("listen: 127.0.0.1\n", 1, "listen", "host:port"),
        ("data_dir: /x\nlimits:\n  max_in_flight: 0\n", 3, "limits.max_in_flight", "1"),
        ("limits:\n  drain_timout_s: 5\n", 2, "limits.drain_timout_s", "drain_timeout_s"),
        ("metrics_listen: 1.2.3.4:99999\n", 1, "metrics_listen", "65535"),
        ("inference:\n  providers: [cpu, tpu]\n", 2, "inference.providers[1]", "tpu"),
        ("- a\n- b\n", 1, None, "mapping"),
    ],
)
def test_errors_name_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str | None, words: str
) -> None:
    path = write(tmp_path / "node.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_node_config(path)
    assert err.value.path == str(path)
    assert err.value.line == line
    assert err.value.field == field
    assert words in str(err.value)


def test_host_port_parsing() -> None:
    assert parse_host_port("0.0.0.0:7400") == ("0.0.0.0", 7400)
    assert parse_host_port("[::1]:0") == ("[::1]", 0)
    assert parse_host_port("node-1.example:80") == ("node-1.example", 80)
    for bad in ("7400", ":7400", "host:port", "a b:1"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path / "node.yaml", DEFAULT_NODE_YAML)
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "ok (node config)" in out and "demo-shop (built-in demo)" in out
    assert main(["check-config", str(DEMO_TENANT_CONFIG)]) == 0
    assert "ok (tenant demo-shop)" in capsys.readouterr().out
    bad = write(tmp_path / "bad.yaml", "limits:\n  max_queue: -1\n")
    assert main(["check-config", str(good), str(bad)]) == 78
    err = capsys.readouterr().err
    assert f"{bad}:2: field 'limits.max_queue'" in err and "Traceback" not in err


def test_check_config_checks_the_tenants_it_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = DEMO_TENANT_CONFIG.read_text(encoding="utf-8").replace(
        "  id: demo-shop", "  id: Demo_Shop", 1
    )
    assert broken != DEMO_TENANT_CONFIG.read_text(encoding="utf-8")
    write(tmp_path / "tenants" / "shop.yaml", broken)
    node = write(tmp_path / "node.yaml", "tenants: [tenants/shop.yaml]\n")
    assert main(["check-config", str(node)]) == 78
    err = capsys.readouterr().err
    assert "shop.yaml:" in err and "field 'tenant.id'" in err


def test_version_lists_execution_providers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--json"]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["version"] and "CPUExecutionProvider" in info["execution_providers"]
    assert info["frozen"] is False


def test_the_node_executable_never_imports_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, kefu.node.main, kefu.node.install, kefu.config.node\n"
        "import kefu.node.serving.server\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
