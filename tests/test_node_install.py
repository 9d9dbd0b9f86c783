"""``kefu-node install`` / ``uninstall`` against a temporary root, and the SIGTERM drain's exit
codes of ``kefu-node run`` (as a real process, from source: tests/test_packaging.py runs the
built executable)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from packaging_helpers import metric_value, metrics_text, node_yaml, start

from kefu.node.install import InstallOptions, install, systemd_unit, uninstall
from kefu.node.main import EXIT_CODES, EXIT_DRAIN_TIMEOUT
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg


def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    return root


def fake_onedir_build(tmp_path: Path) -> Path:
    """The shape of a one-directory build: the executable beside ``_internal/``."""
    tree = tmp_path / "build" / "kefu-node"
    (tree / "_internal").mkdir(parents=True)
    (tree / "_internal" / "lib.so").write_bytes(b"\x7fELF fake")
    exe = tree / "kefu-node"
    exe.write_text("#!/bin/sh\necho fake\n")
    exe.chmod(0o755)
    return exe


def test_install_reinstall_and_uninstall(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = fake_root(tmp_path)
    opts = InstallOptions(root=root, binary=fake_onedir_build(tmp_path))
    assert install(opts) == 0
    out = capsys.readouterr().out
    assert "systemd is not running here" in out and "stopwaitsecs=30" in out
    link = root / "usr/local/bin/kefu-node"
    release = root / str(os.readlink(link)).lstrip("/")
    assert release.read_text().startswith("#!/bin/sh")
    assert (release.parent / "_internal" / "lib.so").is_file()
    config = root / "etc/kefu/node.yaml"
    assert (config.stat().st_mode & 0o777) == 0o640
    assert ((root / "etc/kefu").stat().st_mode & 0o777) == 0o750
    assert ((root / "var/lib/kefu").stat().st_mode & 0o777) == 0o750
    assert "listen: 127.0.0.1:7400" in config.read_text()
    unit = (root / "etc/systemd/system/kefu-node.service").read_text()
    assert unit == systemd_unit(opts)
    if os.geteuid() == 0:  # the user is created with useradd --prefix in the temp root
        entry = (root / "etc/passwd").read_text().splitlines()[0].split(":")
        assert entry[0] == "kefu" and entry[5] == "/var/lib/kefu" and entry[6].endswith("nologin")
        assert (root / "var/lib/kefu").stat().st_uid == int(entry[2])
        assert config.stat().st_gid == int(entry[3])

    # Again: the operator's config is kept, the program is replaced.
    config.write_text(config.read_text().replace("7400", "7500"))
    assert install(opts) == 0
    assert "kept (exists" in capsys.readouterr().out
    assert "7500" in config.read_text()
    assert os.readlink(link) == str(Path("/") / release.relative_to(root))

    (root / "var/lib/kefu/sessions.db").write_text("data")
    assert uninstall(opts) == 0
    assert not link.is_symlink() and not (root / "etc/systemd/system/kefu-node.service").exists()
    assert (root / "var/lib/kefu/sessions.db").exists() and config.exists()
    assert uninstall(opts, purge=True) == 0
    assert not (root / "var/lib/kefu").exists() and not (root / "etc/kefu").exists()
    assert "kefu:" not in (root / "etc/passwd").read_text()


def test_install_without_passwd_in_root_skips_the_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "bare"
    one_file = tmp_path / "kefu-node"
    one_file.write_text("#!/bin/sh\n")
    assert install(InstallOptions(root=root, binary=one_file)) == 0
    assert "user kefu: skipped" in capsys.readouterr().out
    installed = root / "usr/local/bin/kefu-node"
    assert not installed.is_symlink() and (installed.stat().st_mode & 0o777) == 0o755


def test_install_from_source_needs_a_binary(tmp_path: Path) -> None:
    from kefu.errors import PermanentError

    with pytest.raises(PermanentError, match="--binary"):
        install(InstallOptions(root=tmp_path))


@pytest.mark.slow
def test_sigterm_with_a_turn_stuck_past_the_drain_deadline_exits_3(tmp_path: Path) -> None:
    """A turn blocked on a locked SQLite database is still running when the drain deadline
    expires: the node cancels it, still closes its stores, and exits 3."""
    assert "drain deadline" in EXIT_CODES[EXIT_DRAIN_TIMEOUT]
    config, port, metrics_port = node_yaml(tmp_path, drain_timeout_s=0.2)
    proc, _ = start([sys.executable, "-m", "kefu.node.main", "run", "--config", str(config)])
    data = tmp_path / "data"
    key = (data / "demo-shop.key").read_text().strip()
    errors: list[grpc.RpcError] = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pbg.KefuNodeStub(channel)
        stub.Converse(  # creates the database and warms the node
            pb.ConverseRequest(text="你好", channel=pb.CHANNEL_WEB),
            metadata=bearer_metadata(key),
            timeout=30,
        )
        locker = sqlite3.connect(data / "tenants" / "demo-shop" / "sessions.db", timeout=0)
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock

        def turn() -> None:
            try:
                stub.Converse(
                    pb.ConverseRequest(text="我要退货", channel=pb.CHANNEL_WEB),
                    metadata=bearer_metadata(key),
                    timeout=30,
                )
            except grpc.RpcError as exc:
                errors.append(exc)

        t = threading.Thread(target=turn)
        t.start()
        try:
            deadline = time.monotonic() + 20
            while metric_value(metrics_text(metrics_port), "kefu_admission_in_flight") != 1:
                assert time.monotonic() < deadline, "the turn never became in-flight"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
        finally:
            locker.rollback()
            locker.close()
            t.join(timeout=30)
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert rc == EXIT_DRAIN_TIMEOUT, err
    assert "1 in-flight turn(s) cancelled" in err and "Traceback" not in err
    assert errors and errors[0].code() in (
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNAVAILABLE,
    )


def test_run_with_a_broken_config_exits_78_naming_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "node.yaml"
    bad.write_text("listen: 127.0.0.1:7400\nmetrics_lsten: x\n", encoding="utf-8")
    res = subprocess.run(
        [sys.executable, "-m", "kefu.node.main", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 78
    assert f"{bad}:2: field 'metrics_lsten': unknown field" in res.stderr
    assert "did you mean 'metrics_listen'" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    # The unit's commands must exist for `verify`; /bin/true stands in for the binary.
    unit = tmp_path / "kefu-node.service"
    unit.write_text(systemd_unit(InstallOptions(bin_path="/bin/true")), encoding="utf-8")
    res = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    bogus = tmp_path / "bogus.service"
    bogus.write_text(unit.read_text().replace("PrivateTmp=yes", "PrivateTmp=maybe"))
    res = subprocess.run(
        ["systemd-analyze", "verify", str(bogus)], capture_output=True, text=True, timeout=60
    )
    assert "PrivateTmp" in res.stderr or "boolean" in res.stderr  # the check can fail


def test_install_refuses_half_a_tls_pair_and_a_network_listener_without_tls(
    tmp_path: Path,
) -> None:
    from kefu.errors import PermanentError

    root, one_file = fake_root(tmp_path), tmp_path / "kefu-node"
    one_file.write_text("#!/bin/sh\n")
    with pytest.raises(PermanentError, match=r"faces the network.*对外监听必须启用 TLS"):
        install(InstallOptions(root=root, binary=one_file, listen="0.0.0.0:7400"))
    with pytest.raises(PermanentError, match="all three"):
        install(InstallOptions(root=root, binary=one_file, tls_cert=one_file))
    assert not (root / "etc/kefu").exists()  # refused before anything was written


@pytest.mark.slow
def test_installed_node_encrypts_at_rest_and_serves_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kefu-node install --tls-*` writes a node.yaml with TLS and encryption at rest on; the
    node started from it (a real process) serves TLS only and keeps no text in clear."""
    from support.processes import free_port, stop_process

    from kefu.certstore import CertStore
    from kefu.pki import Role

    pki = CertStore(tmp_path / "pki")
    pki.init_ca()
    pair = pki.issue("node-1", role=Role.NODE, sans=["127.0.0.1"])
    assert pair.cert_file and pair.key_file and pair.ca_file
    root, one_file = fake_root(tmp_path), tmp_path / "kefu-node"
    one_file.write_text("#!/bin/sh\n")
    port, data = free_port(), tmp_path / "data"
    opts = InstallOptions(
        root=root,
        binary=one_file,
        data_dir=str(data),
        listen=f"127.0.0.1:{port}",
        tls_cert=pair.cert_file,
        tls_key=pair.key_file,
        tls_ca=pair.ca_file,
    )
    assert install(opts) == 0
    assert "encryption at rest on" in capsys.readouterr().out
    config = root / "etc/kefu/node.yaml"
    text = config.read_text()
    assert "\ntls:\n  cert_file: pki/node.crt" in text and "\n  at_rest: true" in text
    assert (root / "etc/kefu/pki/node.key").stat().st_mode & 0o777 == 0o640
    config.write_text(text.replace("127.0.0.1:7401", f"127.0.0.1:{free_port()}"))

    proc, _ = start([sys.executable, "-m", "kefu.node.main", "run", "--config", str(config)])
    marker = "INSTALLED-MARKER-订单 7788"
    try:
        key = (data / "demo-shop.key").read_text().strip()
        creds = grpc.ssl_channel_credentials(root_certificates=pair.ca_file.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            r = pbg.KefuNodeStub(channel).Converse(
                pb.ConverseRequest(text=marker, channel=pb.CHANNEL_WEB),
                metadata=bearer_metadata(key),
                timeout=30,
            )
            assert r.session_id
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.RpcError) as ei:
                pbg.KefuNodeStub(plain).Converse(
                    pb.ConverseRequest(text="hi", channel=pb.CHANNEL_WEB),
                    metadata=bearer_metadata(key),
                    timeout=10,
                )
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        rc, err = stop_process(proc)
    assert rc == 0, err
    assert (data / "keys" / "master.key").stat().st_mode & 0o777 == 0o600
    stored = b"".join(p.read_bytes() for p in (data / "tenants").rglob("*") if p.is_file())
    assert stored  # the tenant's SQLite files exist ...
    assert marker.encode() not in stored
