"""Encryption at rest, the pure part (node/sessions/sealing.py): key wrapping and sealed
values, without SQLite. The store does not use it yet (see docs/security.md)."""

from __future__ import annotations

import base64

import pytest

from kefu.node.sessions.sealing import (
    FieldCipher,
    KeyUnavailable,
    is_sealed,
    new_data_key,
    parse_master_key,
    unwrap_key,
    wrap_key,
)

MARKER = "MARKER-7f3a 我的手机号 13800138000"


def cipher(tenant: str = "acme") -> FieldCipher:
    return FieldCipher(tenant=tenant, keys={"k1": new_data_key()}, current="k1")


def test_sealed_values_hide_the_text_and_open_again() -> None:
    c = cipher()
    sealed = c.seal("text", MARKER)
    assert is_sealed(sealed) and "MARKER" not in sealed and "13800138000" not in sealed
    assert c.seal("text", MARKER) != sealed  # a fresh nonce every time
    assert c.open("text", sealed) == MARKER
    assert c.open("text", "written before encryption") == "written before encryption"


def test_a_value_moved_to_another_column_or_tenant_or_edited_does_not_open() -> None:
    c = cipher()
    sealed = c.seal("text", MARKER)
    with pytest.raises(KeyUnavailable, match="integrity"):
        c.open("summary", sealed)
    other = FieldCipher(tenant="globex", keys=dict(c.keys), current="k1")
    with pytest.raises(KeyUnavailable, match="integrity"):
        other.open("text", sealed)
    tag, kid, blob = sealed.split(":", 2)
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 1
    with pytest.raises(KeyUnavailable):
        c.open("text", f"{tag}:{kid}:{base64.b64encode(bytes(raw)).decode()}")


def test_shredded_key_makes_the_data_unreadable_and_old_keys_still_open_during_rekey() -> None:
    old = cipher()
    sealed = old.seal("value", MARKER)
    both = FieldCipher(tenant="acme", keys={**old.keys, "k2": new_data_key()}, current="k2")
    assert both.open("value", sealed) == MARKER  # rekey in progress: old rows still readable
    assert FieldCipher.key_id_of(both.seal("value", "x")) == "k2"
    shredded = FieldCipher(tenant="acme", keys={"k2": both.keys["k2"]}, current="k2")
    with pytest.raises(KeyUnavailable, match="gone"):
        shredded.open("value", sealed)


def test_key_wrapping_binds_tenant_and_master_key() -> None:
    master = parse_master_key(base64.b64encode(b"m" * 32).decode())
    dek = new_data_key()
    wrapped = wrap_key(master, tenant="acme", key_id="k1", data_key=dek)
    assert dek.hex() not in wrapped
    assert unwrap_key(master, tenant="acme", wrapped=wrapped) == ("k1", dek)
    with pytest.raises(KeyUnavailable, match="another tenant"):
        unwrap_key(master, tenant="globex", wrapped=wrapped)
    with pytest.raises(KeyUnavailable):
        unwrap_key(b"x" * 32, tenant="acme", wrapped=wrapped)
    with pytest.raises(KeyUnavailable, match="32 bytes"):
        parse_master_key("too-short")
