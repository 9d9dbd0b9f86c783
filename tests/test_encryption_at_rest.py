"""Encryption at rest with a real node, gRPC and SQLite: the marker a customer sends is
readable through the API and absent from every file of the tenant's database; without the
tenant's data key (crypto-shredding) the text cannot be read back."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import pytest

from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG
from kefu.node.serving.server import Node, NodeOptions
from kefu.node.sessions.sealing import KeyUnavailable
from kefu.node.sessions.sqlite_store import SQLiteSessionStore
from kefu.node.sessions.tenant_keys import EncryptionOptions, TenantKeys, load_master_key
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg

MARKER = "ZQX-marker-4711"


async def one_turn(data: Path, encryption: EncryptionOptions | None) -> str:
    opts = NodeOptions(
        data_dir=data,
        listen="127.0.0.1:0",
        metrics_listen=None,
        tenant_configs=[DEMO_TENANT_CONFIG],
        encryption=encryption,
    )
    async with Node(opts) as node, grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as ch:
        assert node.registry is not None
        md = bearer_metadata(node.registry.new_keys["demo-shop"])
        stub = pbg.KefuNodeStub(ch)
        text = f"my order {MARKER} has not arrived, call me at 13800138000"
        reply = await stub.Converse(
            pb.ConverseRequest(text=text, channel=pb.CHANNEL_WEB), metadata=md, timeout=10
        )
        view = await stub.GetSession(
            pb.GetSessionRequest(session_id=reply.session_id), metadata=md, timeout=10
        )
        assert any(MARKER in t.text for t in view.turns)  # readable through the API
        return reply.session_id


def database_bytes(data: Path) -> bytes:
    folder = data / "tenants" / "demo-shop"
    return b"".join(p.read_bytes() for p in sorted(folder.glob("sessions.db*")))


async def test_marker_is_absent_from_the_encrypted_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KEFU_MASTER_KEY", raising=False)
    clear, sealed = tmp_path / "clear", tmp_path / "sealed"
    await one_turn(clear, None)
    assert MARKER.encode() in database_bytes(clear)  # the check can fail: it does without keys
    session = await one_turn(sealed, EncryptionOptions())
    raw = database_bytes(sealed)
    assert raw and MARKER.encode() not in raw and b"13800138000" not in raw
    for key in (sealed / "keys" / "master.key", sealed / "keys" / "tenants" / "demo-shop.json"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert MARKER.encode() not in key.read_bytes()
    # Crypto-shredding: without the tenant's data key the turns cannot be read back.
    keys = TenantKeys(sealed, load_master_key(sealed, EncryptionOptions()))
    before = keys.cipher("demo-shop")
    assert keys.shred("demo-shop")
    store = await SQLiteSessionStore.open(sealed, "demo-shop", cipher=keys.cipher("demo-shop"))
    try:
        with pytest.raises(KeyUnavailable, match="gone"):
            await store.get_turns(session)
    finally:
        await store.close()
    # With the key (before shredding) the same rows open.
    store = await SQLiteSessionStore.open(sealed, "demo-shop", cipher=before)
    try:
        assert any(MARKER in t.text for t in await store.get_turns(session))
    finally:
        await store.close()


def test_master_key_from_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    monkeypatch.setenv("KEFU_MASTER_KEY", base64.b64encode(b"k" * 32).decode())
    assert load_master_key(tmp_path, EncryptionOptions()) == b"k" * 32
    assert not (tmp_path / "keys").exists()  # nothing written when the key comes from outside
    monkeypatch.delenv("KEFU_MASTER_KEY")
    hook = EncryptionOptions(kms=lambda: b"h" * 32)
    assert load_master_key(tmp_path, hook) == b"h" * 32
    with pytest.raises(KeyUnavailable, match="32 bytes"):
        load_master_key(tmp_path, EncryptionOptions(kms=lambda: b"short"))


def test_kefu_node_rekey_adds_a_key_and_shred_deletes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kefu.cli import main

    monkeypatch.delenv("KEFU_MASTER_KEY", raising=False)
    keys = TenantKeys(tmp_path, load_master_key(tmp_path, EncryptionOptions()))
    old = keys.cipher("acme")
    sealed = old.seal("text", MARKER)
    assert main(["node", "rekey", "--tenant", "acme", "--data-dir", str(tmp_path)]) == 0
    new = keys.cipher("acme")
    assert new.current != old.current and new.open("text", sealed) == MARKER
    assert main(["node", "rekey", "--tenant", "acme", "--shred", "--data-dir", str(tmp_path)]) == 0
    with pytest.raises(KeyUnavailable):
        keys.cipher("acme", create=False)
