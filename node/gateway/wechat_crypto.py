"""WeChat's encrypted ("safe", 安全模式) message mode, as WeChat's message encryption
documentation specifies it. Pure.

* **Key**: the account's 43-character ``EncodingAESKey`` + ``"="`` is base64 for 32 bytes: the
  AES-256 key; the CBC IV is its first 16 bytes.
* **Plaintext**: ``random(16) + msg_len(4 bytes, network order) + msg + appid``, PKCS#7-padded
  to a multiple of **32** bytes (not AES's 16), AES-256-CBC, base64: the ``Encrypt`` field.
* **Signature**: ``msg_signature = sha1("".join(sorted([token, timestamp, nonce, Encrypt])))``.
* **Incoming**: ``<xml><ToUserName/><Encrypt/></xml>`` with ``msg_signature``, ``timestamp``
  and ``nonce`` in the query. A bad signature, a bad padding or length, or another account's
  appid is refused (403) — nothing is processed.
* **Replies** are encrypted the same way: ``<xml><Encrypt/><MsgSignature/><TimeStamp/>
  <Nonce/></xml>``. The plain body ``success`` needs no encryption (WeChat accepts it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from kefu.node.gateway.answers import ApiError
from kefu.node.gateway.wechat import child_text, parse_xml

__all__ = ["WeChatCrypto", "aes_key", "msg_signature"]

BLOCK = 32
_B64 = re.compile(r"[A-Za-z0-9+/]{43}")


def aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte key of a 43-character EncodingAESKey; ValueError when it is not one."""
    if not _B64.fullmatch(encoding_aes_key):
        raise ValueError("EncodingAESKey must be 43 characters of A-Z a-z 0-9 + /")
    key = base64.b64decode(encoding_aes_key + "=")
    if len(key) != 32:
        raise ValueError("EncodingAESKey does not decode to 32 bytes")
    return key


def msg_signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    joined = "".join(sorted([token, timestamp, nonce, encrypt]))
    return hashlib.sha1(joined.encode("utf-8")).hexdigest()


def _pad(data: bytes) -> bytes:
    n = BLOCK - len(data) % BLOCK
    return data + bytes([n]) * n


def _unpad(data: bytes) -> bytes:
    n = data[-1] if data else 0
    if not 1 <= n <= BLOCK or len(data) < n or data[-n:] != bytes([n]) * n:
        raise ApiError.of("bad_signature", detail="bad padding")
    return data[:-n]


@dataclass(frozen=True)
class WeChatCrypto:
    token: str
    key: bytes
    app_id: str

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16]))

    def encrypt(self, msg: bytes, random16: bytes | None = None) -> str:
        """The base64 ``Encrypt`` value of ``msg`` (``random16`` fixed only in tests)."""
        rnd = os.urandom(16) if random16 is None else random16
        plain = _pad(rnd + struct.pack(">I", len(msg)) + msg + self.app_id.encode("utf-8"))
        enc = self._cipher().encryptor()
        return base64.b64encode(enc.update(plain) + enc.finalize()).decode("ascii")

    def decrypt(self, encrypt: str) -> bytes:
        """The message inside ``encrypt``; ``bad_signature`` (403) unless it is well-formed
        and addressed to this account's appid."""
        try:
            raw = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError.of("bad_signature", detail="Encrypt is not base64") from exc
        if not raw or len(raw) % 16:
            raise ApiError.of("bad_signature", detail="bad ciphertext length")
        dec = self._cipher().decryptor()
        plain = _unpad(dec.update(raw) + dec.finalize())
        if len(plain) < 20:
            raise ApiError.of("bad_signature", detail="too short")
        (size,) = struct.unpack(">I", plain[16:20])
        msg, app_id = plain[20 : 20 + size], plain[20 + size :]
        if len(msg) != size or not hmac.compare_digest(app_id, self.app_id.encode("utf-8")):
            raise ApiError.of("bad_signature", detail="message for another account")
        return msg

    def open(self, query: dict[str, str], body: bytes) -> bytes:
        """The plain XML message of an encrypted POST (signature checked first)."""
        sig = query.get("msg_signature", "")
        ts, nonce = query.get("timestamp", ""), query.get("nonce", "")
        if not (sig and ts and nonce) or len(ts) > 32 or len(nonce) > 64:
            raise ApiError.of("bad_signature")
        encrypt = _encrypt_field(body)
        if not hmac.compare_digest(msg_signature(self.token, ts, nonce, encrypt), sig.lower()):
            raise ApiError.of("bad_signature")
        return self.decrypt(encrypt)

    def seal(
        self, reply: bytes, timestamp: str, nonce: str, random16: bytes | None = None
    ) -> bytes:
        """The encrypted reply envelope for a plain XML ``reply``."""
        encrypt = self.encrypt(reply, random16)
        sig = msg_signature(self.token, timestamp, nonce, encrypt)
        return (
            f"<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt>"
            f"<MsgSignature><![CDATA[{sig}]]></MsgSignature>"
            f"<TimeStamp>{timestamp}</TimeStamp>"
            f"<Nonce><![CDATA[{nonce}]]></Nonce></xml>"
        ).encode()


def _encrypt_field(body: bytes) -> str:
    value = child_text(parse_xml(body), "Encrypt")
    if not value:
        raise ApiError.of("invalid_xml", detail="an encrypted message needs <Encrypt>")
    return value
