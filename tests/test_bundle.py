from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kefu.bundle import Manifest, pack, sign_bundle, unpack, verify_bundle
from kefu.errors import BundleError, SignatureError
from kefu.keys import KeyError_, TrustStore, generate_keypair, load_public_key, load_signing_key


def test_keys_roundtrip_and_private_key_mode(tmp_path: Path) -> None:
    sk = generate_keypair(tmp_path, "ops")
    assert (os.stat(tmp_path / "ops.key").st_mode & 0o777) == 0o600
    assert load_signing_key(tmp_path / "ops.key").public.key_id == sk.public.key_id
    assert load_public_key(tmp_path / "ops.pub").key_id == sk.public.key_id
    with pytest.raises(Exception, match="already exists"):
        generate_keypair(tmp_path, "ops")


def test_manifest_lists_every_file_with_sha256(tiny_bundle: Path, trust: TrustStore) -> None:
    m = verify_bundle(tiny_bundle, trust)
    assert set(m.files) == {"model.onnx", "tokenizer.json", "labels.json"}
    assert all(len(f["sha256"]) == 64 for f in m.files.values())
    for field in (
        "name",
        "version",
        "task",
        "family",
        "created_at",
        "inputs",
        "outputs",
        "dataset",
        "metrics",
    ):
        assert getattr(m, field), field
    assert m.inputs["input_ids"]["shape"] == ["batch", "sequence"]
    assert m.dataset["train"]["sha256"] and m.dataset["dev"]["sha256"]


def test_tampered_model_is_refused_naming_the_file(bundle_copy: Path, trust: TrustStore) -> None:
    data = bytearray((bundle_copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError) as ei:
        verify_bundle(bundle_copy, trust)
    assert ei.value.path and ei.value.path.endswith("model.onnx")
    assert "SHA-256 does not match" in str(ei.value)


def test_truncated_file_is_refused(bundle_copy: Path, trust: TrustStore) -> None:
    p = bundle_copy / "tokenizer.json"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"tokenizer\.json: file truncated"):
        verify_bundle(bundle_copy, trust)


def test_modified_manifest_breaks_the_signature(bundle_copy: Path, trust: TrustStore) -> None:
    p = bundle_copy / "manifest.json"
    raw = json.loads(p.read_text())
    raw["metrics"]["dev"]["accuracy"] += 0.5  # someone polishing the numbers
    p.write_text(json.dumps(raw, sort_keys=True, indent=2) + "\n")
    with pytest.raises(SignatureError, match="manifest was modified"):
        verify_bundle(bundle_copy, trust)


def test_wrong_key_and_missing_signature_are_refused(bundle_copy: Path, tmp_path: Path) -> None:
    stranger = generate_keypair(tmp_path / "k", "stranger")
    with pytest.raises(SignatureError, match="not among the 1 trusted key"):
        verify_bundle(bundle_copy, TrustStore([stranger.public]))
    (bundle_copy / "manifest.sig").unlink()
    with pytest.raises(SignatureError, match="not signed"):
        verify_bundle(bundle_copy, TrustStore([stranger.public]))


def test_resigning_with_another_key_and_trusting_it(bundle_copy: Path, tmp_path: Path) -> None:
    other = generate_keypair(tmp_path / "k", "release")
    sign_bundle(bundle_copy, other)
    m = verify_bundle(bundle_copy, TrustStore([other.public]))
    assert m.name == "tiny-intent"


def test_a_trust_directory_is_followed_without_a_restart(bundle_copy: Path, tmp_path: Path) -> None:
    """A running control plane or node trusts a signer whose key is added to trusted-keys later
    (even when the directory did not exist at start), and stops trusting a removed one."""
    signer = generate_keypair(tmp_path / "k", "team")
    sign_bundle(bundle_copy, signer)
    trusted = tmp_path / "data" / "trusted-keys"
    store = TrustStore.from_paths([], optional_dirs=[trusted])
    with pytest.raises(SignatureError, match="not among the 0 trusted key"):
        verify_bundle(bundle_copy, store)
    trusted.mkdir(parents=True)
    pub = trusted / "team.pub"
    pub.write_bytes((tmp_path / "k" / "team.pub").read_bytes())
    assert verify_bundle(bundle_copy, store).name == "tiny-intent"
    pub.unlink()
    with pytest.raises(SignatureError, match="not among"):
        verify_bundle(bundle_copy, store)
    with pytest.raises(KeyError_, match="not found"):
        TrustStore.from_paths([tmp_path / "missing.pub"])


def test_sign_refuses_a_bundle_whose_files_do_not_match(bundle_copy: Path, signing_key) -> None:  # type: ignore[no-untyped-def]
    (bundle_copy / "labels.json").write_text('["a", "b", "c"]\n')
    with pytest.raises(BundleError, match=r"labels\.json"):
        sign_bundle(bundle_copy, signing_key)


def test_pack_unpack_roundtrip_and_refuses_foreign_members(
    tiny_bundle: Path, tmp_path: Path, trust: TrustStore
) -> None:
    blob = pack(tiny_bundle)
    out = unpack(blob, tmp_path / "unpacked")
    assert verify_bundle(out, trust).ref == "tiny-intent@1"
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(BundleError, match="unexpected member"):
        unpack(buf.getvalue(), tmp_path / "evil")
    with pytest.raises(BundleError, match="corrupt"):
        unpack(blob[:700], tmp_path / "trunc")


def test_manifest_rejects_unknown_and_missing_fields() -> None:
    with pytest.raises(BundleError, match="lacks field"):
        Manifest.from_bytes(b'{"name": "x"}')
    with pytest.raises(BundleError, match="not valid UTF-8 JSON"):
        Manifest.from_bytes(b"\xff\xfe")
