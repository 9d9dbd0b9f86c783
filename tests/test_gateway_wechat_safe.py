"""WeChat's encrypted ("safe", 安全模式) message mode: a known-answer vector computed
independently here (the library's PKCS#7 padder, not the gateway's), and the webhook in safe
mode against the fake WeChat server (which encrypts what it pushes and decrypts the gateway's
encrypted replies), in front of a real node. Wrong appid or bad msg_signature: 403 and
nothing reaches the node."""

from __future__ import annotations

import base64
import hashlib
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from gateway_support import Stack, node_session_count
from test_gateway_wechat import APP_ID, TOKEN, FakeWeChat, reply_of, text_xml, wechat_stack

from kefu.errors import ConfigError
from kefu.node.gateway.answers import ApiError
from kefu.node.gateway.config import GatewayConfig, resolve_gateway
from kefu.node.gateway.wechat import signature
from kefu.node.gateway.wechat_crypto import WeChatCrypto, aes_key, msg_signature

AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters, as WeChat issues them
RANDOM16 = b"0123456789abcdef"
#: independent_encrypt(AES_KEY, APP_ID, b"<xml>hi</xml>", RANDOM16), computed once and pinned.
KNOWN = "Q3stYC6hdFzMh9T8HCvyDAY2hI8bwuk958peC5QFmokpjaqGUt6ayjnpjkhV6m5+i/i1ryGRSrHqOhqMTsGbfg=="


def independent_encrypt(key43: str, app_id: str, msg: bytes, rnd: bytes) -> str:
    """WeChat's construction written out again: base64(key43 + '='), IV = key[:16], PKCS#7
    to 32 bytes, random(16) + msg_len(4, network order) + msg + appid."""
    key = base64.b64decode(key43 + "=")
    padder = padding.PKCS7(256).padder()
    data = padder.update(rnd + len(msg).to_bytes(4, "big") + msg + app_id.encode())
    data += padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(data) + enc.finalize()).decode()


def independent_decrypt(key43: str, encrypt: str) -> tuple[bytes, str]:
    key = base64.b64decode(key43 + "=")
    dec = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = dec.update(base64.b64decode(encrypt)) + dec.finalize()
    unpadder = padding.PKCS7(256).unpadder()
    plain = unpadder.update(plain) + unpadder.finalize()
    size = int.from_bytes(plain[16:20], "big")
    return plain[20 : 20 + size], plain[20 + size :].decode()


def sha1_sorted(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


class SafeFakeWeChat:
    """The fake WeChat server's safe-mode side: it encrypts and signs what it pushes to the
    account's URL and opens the account's encrypted replies (checking MsgSignature)."""

    def __init__(self, fake: FakeWeChat, key43: str = AES_KEY):
        self.fake, self.key43 = fake, key43

    def push(
        self,
        s: Stack,
        xml: bytes,
        *,
        app_id: str = APP_ID,
        token: str = TOKEN,
        sig: str | None = None,
        encrypt: str | None = None,
    ) -> tuple[str, bytes]:
        """The URL (signature, msg_signature, encrypt_type=aes) and the envelope."""
        encrypt = encrypt or independent_encrypt(self.key43, app_id, xml, b"R" * 16)
        ts, nonce = str(int(time.time())), "safeNonce1"
        q = {
            "signature": signature(token, ts, nonce),
            "timestamp": ts,
            "nonce": nonce,
            "encrypt_type": "aes",
            "msg_signature": sig or sha1_sorted(token, ts, nonce, encrypt),
        }
        url = f"{s.url}/wechat/demo-shop?" + "&".join(f"{k}={v}" for k, v in q.items())
        body = (
            "<xml><ToUserName><![CDATA[gh_shop]]></ToUserName>"
            f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        )
        return url, body.encode()

    def open_reply(self, body: bytes) -> tuple[dict[str, str], str, str]:
        """(the inner reply's fields, its appid, the envelope's Nonce); MsgSignature checked."""
        envelope = reply_of(body)
        assert set(envelope) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
        assert envelope["MsgSignature"] == sha1_sorted(
            TOKEN, envelope["TimeStamp"], envelope["Nonce"], envelope["Encrypt"]
        )
        inner, app_id = independent_decrypt(self.key43, envelope["Encrypt"])
        return {c.tag: c.text or "" for c in ET.fromstring(inner)}, app_id, envelope["Nonce"]


def test_known_answer_vector() -> None:
    msg = b"<xml>hi</xml>"
    assert independent_encrypt(AES_KEY, APP_ID, msg, RANDOM16) == KNOWN
    crypto = WeChatCrypto(TOKEN, aes_key(AES_KEY), APP_ID)
    assert crypto.encrypt(msg, RANDOM16) == KNOWN
    assert crypto.decrypt(KNOWN) == msg
    # A 32-byte-aligned plaintext gets a whole block of padding (32 × 0x20), not none.
    aligned = b"x" * (64 - 20 - len(APP_ID))
    assert crypto.encrypt(aligned, RANDOM16) == independent_encrypt(
        AES_KEY, APP_ID, aligned, RANDOM16
    )
    assert len(base64.b64decode(crypto.encrypt(aligned, RANDOM16))) == 96
    assert msg_signature(TOKEN, "1409304348", "xxxxxx", KNOWN) == sha1_sorted(
        TOKEN, "1409304348", "xxxxxx", KNOWN
    )
    other = WeChatCrypto(TOKEN, aes_key(AES_KEY), "wx0000000000000000")
    with pytest.raises(ApiError) as err:
        other.decrypt(KNOWN)
    assert err.value.status == 403
    with pytest.raises(ValueError):
        aes_key(AES_KEY[:-1])


def _safe_tenant(tmp: Path) -> dict[str, str]:
    (tmp / "wx.aeskey").write_text(AES_KEY + "\n", encoding="utf-8")
    return {"mode": "safe", "encoding_aes_key_file": "wx.aeskey"}


async def test_safe_mode_message_and_encrypted_reply(tmp_path: Path) -> None:
    async with wechat_stack(tmp_path, **_safe_tenant(tmp_path)) as (s, fake):
        wx = SafeFakeWeChat(fake)
        url, body = wx.push(s, text_xml("我的订单什么时候到", "2001"))
        r = await s.http.post(url, data=body)
        assert r.status == 200, await r.text()
        reply, app_id, nonce = wx.open_reply(await r.read())
        assert app_id == APP_ID and nonce == "safeNonce1"
        assert reply["MsgType"] == "text" and "订单号" in reply["Content"]
        assert (reply["ToUserName"], reply["FromUserName"]) == ("oCustomer1", "gh_shop")
        assert await node_session_count(s) == 1


async def test_safe_mode_refuses_wrong_appid_bad_signature_and_plaintext(
    tmp_path: Path,
) -> None:
    async with wechat_stack(tmp_path, **_safe_tenant(tmp_path)) as (s, fake):
        wx = SafeFakeWeChat(fake)
        msg = text_xml("我的订单什么时候到", "3001")
        # Correctly signed, but encrypted for another account.
        url, body = wx.push(s, msg, app_id="wx9999999999999999")
        r = await s.http.post(url, data=body)
        assert r.status == 403 and (await r.json())["error"]["code"] == "bad_signature"
        url, body = wx.push(s, msg, sig="0" * 40)
        assert (await s.http.post(url, data=body)).status == 403
        url, body = wx.push(s, msg, token="another-token")  # signed by someone else
        assert (await s.http.post(url, data=body)).status == 403
        ours = independent_encrypt(AES_KEY, APP_ID, msg, b"R" * 16)
        tampered = base64.b64encode(b"\x00" * 16 + base64.b64decode(ours)[16:]).decode()
        url, body = wx.push(s, msg, encrypt=tampered)  # signed, but the ciphertext changed
        assert (await s.http.post(url, data=body)).status == 403
        url, _ = wx.push(s, msg)
        r = await s.http.post(url, data=msg)  # plaintext where safe mode expects <Encrypt>
        assert r.status == 400
        assert await node_session_count(s) == 0  # nothing was processed


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"mode": "safe"}, "encoding_aes_key_file"),
        ({"mode": "safe", "encoding_aes_key_file": "bad.key"}, "EncodingAESKey"),
    ],
)
def test_safe_mode_config_errors(tmp_path: Path, extra: dict[str, str], problem: str) -> None:
    (tmp_path / "k").write_text("key", encoding="utf-8")
    (tmp_path / "t").write_text("token", encoding="utf-8")
    (tmp_path / "bad.key").write_text("too-short", encoding="utf-8")
    wechat = {"token_file": "t", "app_id": APP_ID, **extra}
    cfg = GatewayConfig.model_validate(
        {
            "nodes": [{"id": "a", "address": "127.0.0.1:1"}],
            "tenants": [{"id": "t", "api_key_file": "k", "wechat": wechat}],
        }
    )
    with pytest.raises(ConfigError) as err:
        resolve_gateway(cfg, base=tmp_path)
    assert problem in str(err.value)
