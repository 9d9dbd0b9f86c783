"""Operator tokens for the control-plane API, stored as hashes in JetStream KV (the Bus seam).

Layout of the ``kefu_operators`` bucket:

* ``name.<name>`` — the authoritative record (role, SHA-256 of the token, who issued it,
  revoked or not);
* ``hash.<sha256>`` — the token's name, so checking a token is two key reads on every RPC,
  always current on every replica: a revocation takes effect on the next call.

A token is shown once, when issued; only its hash is stored. On the first start against an
empty bucket :meth:`OperatorTokens.bootstrap` creates the ``admin`` token (two replicas racing
create exactly one: the record is created with "must not exist"). The last active admin token
cannot be revoked, so the API can never lock every operator out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from kefu.bus import Bus, Conflict, snapshot
from kefu.control_plane.auth import (
    BOOTSTRAP_TOKEN_NAME,
    Operator,
    Role,
    check_token_name,
    generate_token,
    hash_token,
)
from kefu.control_plane.service import AUDIT_NOTE
from kefu.errors import PermanentError
from kefu.rotation import (
    DEFAULT_OVERLAP_S,
    check_duration,
    expired_message,
    expiry_after,
    usable,
)
from kefu.wire import (
    BUCKET_OPERATORS,
    AuditEvent,
    _Doc,
    audit_subject,
    decode,
    digest,
    encode,
)

__all__ = [
    "LastAdminError",
    "OperatorTokenRecord",
    "OperatorTokens",
    "TokenNotFoundError",
    "read_token_file",
    "write_token_file",
]


#: The longest lifetime a token may be issued with (`kefu cp tokens issue --ttl`).
MAX_TOKEN_TTL_S = 2 * 365 * 86400.0


class TokenNotFoundError(PermanentError):
    """No operator token of that name."""

    exit_code = 66


class LastAdminError(PermanentError):
    """Revoking this token would leave no active admin token."""


class OperatorTokenRecord(_Doc):
    name: str
    role: Role
    sha256: str
    created_at: float = 0.0
    created_by: str = ""
    revoked: bool = False
    revoked_at: float = 0.0
    revoked_by: str = ""
    #: Unix seconds after which the token is refused (0 = never).
    expires_at: float = 0.0
    #: The secret a rotation replaced, accepted until ``previous_expires_at`` (the overlap).
    previous_sha256: str = ""
    previous_expires_at: float = 0.0


def _concurrent(name: str) -> Conflict:
    return Conflict(
        f"operator token {name!r} changed concurrently, retry / 令牌 {name!r} 被并发修改，请重试"
    )


def _name_key(name: str) -> str:
    return f"name.{name}"


def _hash_key(sha: str) -> str:
    return f"hash.{sha}"


class OperatorTokens:
    def __init__(self, bus: Bus, *, clock: Callable[[], float] = time.time):
        self.bus = bus
        #: Wall clock (Unix seconds) for expiries; tests inject a fake one.
        self.clock = clock

    async def _record(self, name: str) -> tuple[OperatorTokenRecord | None, int]:
        e = await self.bus.kv_get(BUCKET_OPERATORS, _name_key(name))
        if e is None:
            return None, 0
        return decode(OperatorTokenRecord, e.value, what=f"operator token {name}"), e.revision

    async def _audit(
        self,
        actor: str,
        action: str,
        name: str,
        before: OperatorTokenRecord | None,
        after: OperatorTokenRecord | None,
    ) -> None:
        ev = AuditEvent(
            actor=actor or "unknown",
            action=action,
            resource=f"operators/{name}",
            before=digest(before),
            after=digest(after),
            actor_note=AUDIT_NOTE.get(),
        )
        await self.bus.publish(audit_subject(None), encode(ev))

    async def issue(
        self, name: str, role: Role, *, actor: str, replace: bool = False, ttl_s: float = 0.0
    ) -> tuple[OperatorTokenRecord, str]:
        """A new token ``name`` with ``role``: (record, token). The token is returned once.

        An existing active token of that name is refused unless ``replace`` (the old secret
        stops working at once; :meth:`rotate` keeps it working for an overlap); a revoked name
        may be issued again. ``ttl_s`` > 0 gives the token an expiry.
        """
        check_token_name(name)
        check_duration(ttl_s, what="ttl", maximum=MAX_TOKEN_TTL_S)
        token = generate_token()
        now = self.clock()
        new = OperatorTokenRecord(
            name=name,
            role=role,
            sha256=hash_token(token),
            created_at=now,
            created_by=actor,
            expires_at=expiry_after(now, ttl_s) if ttl_s > 0 else 0.0,
        )
        old, rev = await self._record(name)
        if old is not None and not old.revoked and not replace:
            raise Conflict(
                f"operator token {name!r} already exists (revoke it first, or replace it) / "
                f"操作员令牌 {name!r} 已存在（请先吊销或替换）"
            )
        if old is not None and old.role is Role.ADMIN and role is not Role.ADMIN:
            await self._keep_an_admin(name)
        try:
            if old is None:
                await self.bus.kv_create(BUCKET_OPERATORS, _name_key(name), encode(new))
            else:
                await self.bus.kv_update(BUCKET_OPERATORS, _name_key(name), encode(new), last=rev)
        except Conflict as exc:
            raise _concurrent(name) from exc
        await self.bus.kv_put(BUCKET_OPERATORS, _hash_key(new.sha256), name.encode())
        if old is not None:
            for sha in (old.sha256, old.previous_sha256):
                if sha:
                    await self.bus.kv_delete(BUCKET_OPERATORS, _hash_key(sha))
        await self._audit(actor, "operator.issue", name, old, new)
        return new, token

    async def rotate(
        self, name: str, *, overlap_s: float = DEFAULT_OVERLAP_S, actor: str
    ) -> tuple[OperatorTokenRecord, str]:
        """A new secret for token ``name`` (same role, same expiry policy): (record, token).
        The old secret keeps working for ``overlap_s`` seconds, then is refused with a message
        saying it expired. A secret rotated out earlier is dropped at once (one overlap at a
        time)."""
        check_duration(overlap_s)
        old, rev = await self._record(check_token_name(name))
        now = self.clock()
        if old is None:
            raise TokenNotFoundError(f"no operator token {name!r} / 操作员令牌 {name!r} 不存在")
        if old.revoked or not usable(old.expires_at, now):
            raise PermanentError(
                f"operator token {name!r} is revoked or expired: issue it again instead / "
                f"操作员令牌 {name!r} 已吊销或已过期：请重新签发"
            )
        token = generate_token()
        until = expiry_after(now, overlap_s)
        if old.expires_at:
            until = min(until, old.expires_at)
        lifetime = old.expires_at - old.created_at if old.expires_at else 0.0
        new = old.model_copy(
            update={
                "sha256": hash_token(token),
                "created_at": now,
                "created_by": actor,
                "expires_at": now + lifetime if lifetime > 0 else 0.0,
                "previous_sha256": old.sha256,
                "previous_expires_at": until,
            }
        )
        try:
            await self.bus.kv_update(BUCKET_OPERATORS, _name_key(name), encode(new), last=rev)
        except Conflict as exc:
            raise _concurrent(name) from exc
        await self.bus.kv_put(BUCKET_OPERATORS, _hash_key(new.sha256), name.encode())
        if old.previous_sha256:
            await self.bus.kv_delete(BUCKET_OPERATORS, _hash_key(old.previous_sha256))
        await self._audit(actor, "operator.rotate", name, old, new)
        return new, token

    async def list(self) -> list[OperatorTokenRecord]:
        entries = await snapshot(self.bus, BUCKET_OPERATORS, "name.*")
        return [decode(OperatorTokenRecord, e.value) for _, e in sorted(entries.items())]

    async def _keep_an_admin(self, name: str) -> None:
        others = [t for t in await self.list() if t.role is Role.ADMIN and not t.revoked]
        if not [t for t in others if t.name != name]:
            raise LastAdminError(
                f"{name!r} is the last active admin token; issue another admin token first / "
                f"{name!r} 是最后一个有效的 admin 令牌，请先签发另一个 admin 令牌"
            )

    async def revoke(self, name: str, *, actor: str) -> OperatorTokenRecord:
        """Revoke ``name`` (idempotent); refused for the last active admin token."""
        old, rev = await self._record(check_token_name(name))
        if old is None:
            raise TokenNotFoundError(f"no operator token {name!r} / 操作员令牌 {name!r} 不存在")
        if old.revoked:
            return old
        if old.role is Role.ADMIN:
            await self._keep_an_admin(name)
        new = old.model_copy(
            update={"revoked": True, "revoked_at": time.time(), "revoked_by": actor}
        )
        try:
            await self.bus.kv_update(BUCKET_OPERATORS, _name_key(name), encode(new), last=rev)
        except Conflict as exc:
            raise _concurrent(name) from exc
        # The record is authoritative; the index entries are only cleanup.
        for sha in (old.sha256, old.previous_sha256):
            if sha:
                await self.bus.kv_delete(BUCKET_OPERATORS, _hash_key(sha))
        await self._audit(actor, "operator.revoke", name, old, new)
        return new

    async def verify(self, token: str) -> Operator | None:
        """The operator ``token`` belongs to, or ``None`` (unknown, revoked, replaced or
        expired)."""
        operator, _ = await self.check(token)
        return operator

    async def check(self, token: str) -> tuple[Operator | None, str]:
        """(operator, "") for a working token, else (None, why): the reason is a bilingual
        expiry message for a token that expired (a rotated-out secret after its overlap) and
        "" otherwise, so an unknown token learns nothing."""
        sha = hash_token(token)
        idx = await self.bus.kv_get(BUCKET_OPERATORS, _hash_key(sha))
        if idx is None:
            return None, ""
        try:
            name = check_token_name(idx.value.decode("ascii"))
        except (UnicodeDecodeError, PermanentError):
            return None, ""
        rec, _ = await self._record(name)
        if rec is None or rec.revoked:
            return None, ""
        now = self.clock()
        if sha == rec.sha256:
            expires = rec.expires_at
        elif rec.previous_sha256 and sha == rec.previous_sha256:
            expires = rec.previous_expires_at
        else:
            return None, ""
        if not usable(expires, now):
            return None, expired_message("operator token", repr(rec.name), expires)
        return Operator(name=rec.name, role=rec.role), ""

    async def bootstrap(self, *, actor: str) -> str | None:
        """On an empty bucket, create the ``admin`` token and return it (once); else ``None``."""
        if await self.bus.kv_keys(BUCKET_OPERATORS, "name.*"):
            return None
        token = generate_token()
        rec = OperatorTokenRecord(
            name=BOOTSTRAP_TOKEN_NAME,
            role=Role.ADMIN,
            sha256=hash_token(token),
            created_at=time.time(),
            created_by=actor,
        )
        try:
            await self.bus.kv_create(BUCKET_OPERATORS, _name_key(rec.name), encode(rec))
        except Conflict:
            return None  # another replica bootstrapped first
        await self.bus.kv_put(BUCKET_OPERATORS, _hash_key(rec.sha256), rec.name.encode())
        await self._audit(actor, "operator.bootstrap", rec.name, None, rec)
        return token

    async def ensure_file(self, path: Path, *, actor: str) -> bool:
        """Make ``path`` hold a working admin token (for `kefu up`, which owns its stack):
        keep it when it verifies as admin, else issue (or rotate) ``admin`` into it.
        Returns whether a new token was written."""
        have = read_token_file(path, missing_ok=True)
        if have:
            op = await self.verify(have)
            if op is not None and op.role is Role.ADMIN:
                return False
        _, token = await self.issue(BOOTSTRAP_TOKEN_NAME, Role.ADMIN, actor=actor, replace=True)
        write_token_file(path, token)
        return True


def write_token_file(path: Path, token: str) -> None:
    """Write a secret readable by its owner only (0600, directory 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to an existing file
    os.replace(tmp, path)


def read_token_file(path: Path, *, missing_ok: bool = False) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if missing_ok:
            return ""
        raise PermanentError(f"{path}: no such token file / 令牌文件不存在") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PermanentError(
            f"{path}: cannot read the token file ({exc}) / 无法读取令牌文件"
        ) from exc
