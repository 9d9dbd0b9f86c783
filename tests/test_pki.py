"""The PKI's pure policy (kefu.pki) and its files (kefu.certstore): no server needed."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kefu.certstore import CertStore, TlsFiles, check_pair, find_ca
from kefu.errors import ConfigError, PermanentError
from kefu.pki import (
    CertPolicy,
    Role,
    cert_problem,
    describe,
    issue,
    key_matches,
    needs_renewal,
    new_ca,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_leaf_names_its_addresses_and_is_signed_by_the_ca() -> None:
    ca = new_ca("Test CA", now=NOW)
    leaf = issue(ca=ca, name="node-1", role=Role.NODE, sans=["127.0.0.1", "Node-1.EU"], now=NOW)
    info = describe(leaf.cert_pem)
    assert info.subject == "CN=node-1" and info.issuer == "CN=Test CA"
    assert set(info.sans) == {"127.0.0.1", "node-1.eu"} and not info.is_ca
    assert info.not_after - info.not_before == timedelta(days=90, minutes=5)
    assert key_matches(leaf.cert_pem, leaf.key_pem)
    assert not key_matches(leaf.cert_pem, ca.key_pem)
    assert describe(ca.cert_pem).is_ca


def test_leaf_lifetime_never_outlives_the_ca() -> None:
    ca = new_ca("Short CA", now=NOW, policy=CertPolicy(ca_days=10))
    leaf = issue(ca=ca, name="cp", role=Role.CONTROL_PLANE, now=NOW)
    assert describe(leaf.cert_pem).not_after == describe(ca.cert_pem).not_after


def test_bad_san_is_refused() -> None:
    ca = new_ca("Test CA", now=NOW)
    with pytest.raises(ValueError, match="not a host name"):
        issue(ca=ca, name="x", role=Role.NODE, sans=["a b"], now=NOW)


def test_expired_certificate_has_a_clear_message() -> None:
    ca = new_ca("Test CA", now=NOW)
    old = describe(issue(ca=ca, name="old", role=Role.NODE, now=NOW, days=-2).cert_pem)
    problem = cert_problem(old, now=NOW)
    assert problem is not None
    assert "expired on 2026-11-29" in problem and "kefu certs issue" in problem
    fresh = describe(issue(ca=ca, name="new", role=Role.NODE, now=NOW).cert_pem)
    assert cert_problem(fresh, now=NOW) is None
    assert "not valid before" in (cert_problem(fresh, now=NOW - timedelta(days=1)) or "")


def test_renewal_is_due_inside_the_window_or_for_a_missing_san() -> None:
    ca = new_ca("Test CA", now=NOW)
    info = describe(issue(ca=ca, name="n", role=Role.NODE, sans=["127.0.0.1"], now=NOW).cert_pem)
    assert not needs_renewal(info, now=NOW, sans=["127.0.0.1"])
    assert needs_renewal(info, now=NOW + timedelta(days=61))  # 30 days before the end
    assert needs_renewal(info, now=NOW, sans=["127.0.0.1", "node.example"])


def test_store_keys_are_private_and_pairs_renew_atomically(tmp_path: Path) -> None:
    store = CertStore(tmp_path / "pki")
    store.init_ca()
    files, fresh = store.ensure("local-1", role=Role.NODE, sans=["127.0.0.1"])
    assert fresh and files.key_file and files.cert_file
    for key in (store.ca_key, files.key_file):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700
    again, fresh = store.ensure("local-1", role=Role.NODE, sans=["127.0.0.1"])
    assert again == files and not fresh
    first = files.cert_file.read_bytes()
    _, fresh = store.ensure("local-1", role=Role.NODE, sans=["127.0.0.1", "localhost"])
    assert fresh and files.cert_file.read_bytes() != first
    assert check_pair(files) is not None
    assert not list((tmp_path / "pki").glob(".*tmp*"))  # no temporary file left behind


def test_store_refuses_a_second_ca_and_bad_names(tmp_path: Path) -> None:
    store = CertStore(tmp_path / "pki")
    store.init_ca()
    with pytest.raises(PermanentError, match="exists"):
        store.init_ca()
    for bad in ("ca", "../x", "", "a b"):
        with pytest.raises(ConfigError, match="certificate name"):
            store.files(bad)


def test_check_pair_refuses_expired_and_mismatched(tmp_path: Path) -> None:
    store = CertStore(tmp_path / "pki")
    store.init_ca()
    expired = store.issue("old", role=Role.NODE, sans=[], days=-1)
    with pytest.raises(ConfigError, match="expired on"):
        check_pair(expired)
    good = store.issue("good", role=Role.NODE, sans=[])
    assert good.key_file and good.cert_file
    mixed = TlsFiles(ca_file=store.ca_cert, cert_file=good.cert_file, key_file=expired.key_file)
    with pytest.raises(ConfigError, match="is not the key of"):
        check_pair(mixed)
    with pytest.raises(ConfigError, match="not found"):
        check_pair(TlsFiles(ca_file=tmp_path / "nope.crt"))


def test_clients_find_the_ca_kefu_up_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEFU_CA_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert find_ca(None) is None
    CertStore(tmp_path / "kefu-data" / "pki").init_ca()
    assert find_ca(None) == Path("kefu-data/pki/ca.crt")
    monkeypatch.setenv("KEFU_CA_FILE", "/elsewhere/ca.crt")
    assert find_ca(None) == Path("/elsewhere/ca.crt")
    assert find_ca("given.crt") == Path("given.crt")


def test_kefu_certs_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kefu.cli import main

    d = str(tmp_path / "pki")
    assert main(["certs", "init-ca", "--dir", d]) == 0
    assert (
        main(["certs", "issue", "gw-1", "--role", "gateway", "--san", "gw.example", "--dir", d])
        == 0
    )
    assert main(["certs", "show", "gw-1", "--dir", d]) == 0
    assert "gw.example" in capsys.readouterr().out
    assert main(["certs", "issue", "old", "--role", "node", "--days", "-1", "--dir", d]) == 0
    assert main(["certs", "show", "old", "--dir", d]) == 1
    assert "expired on" in capsys.readouterr().out
    assert main(["certs", "init-ca", "--dir", d]) != 0  # refused, not replaced
    assert "exists" in capsys.readouterr().err


def test_node_yaml_tls_section_gives_the_node_its_pair(tmp_path: Path) -> None:
    from kefu.config.node import parse_node_config
    from kefu.node.bootstrap import node_options

    store = CertStore(tmp_path / "pki")
    store.init_ca()
    store.issue("node-1", role=Role.NODE, sans=["127.0.0.1"])
    text = (
        "tls: {cert_file: pki/node-1.crt, key_file: pki/node-1.key, ca_file: pki/ca.crt, "
        "client_auth: true}\n"
    )
    opts = node_options(parse_node_config(text, base=tmp_path))
    assert opts.tls == store.files("node-1") and opts.client_auth
    with pytest.raises(ConfigError, match=r"tls.*no such file"):
        parse_node_config(text.replace("node-1.key", "gone.key"), base=tmp_path)
