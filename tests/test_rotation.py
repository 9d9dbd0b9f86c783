"""Rotation with overlap: tenant API keys and operator tokens (issue 16).

The policy (durations, expiry, the message) is pure and tested first; then a real control
plane on a real nats-server rotates operator tokens over gRPC and through `kefu cp`, and a real
node picks a rotated tenant key up through the region's desired state (JetStream KV). Expiry
is driven by injected clocks, not by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest
from cp_support import control_plane, cp_app, cp_node, seed_demo, trust_with
from support.grpc_node import stub_to
from support.polling import eventually

from kefu.errors import PermanentError
from kefu.keys import SigningKey
from kefu.natsserver import NatsServer
from kefu.rotation import (
    DEFAULT_OVERLAP_S,
    expired_message,
    parse_duration,
    usable,
)
from kefu.v1 import bearer_metadata
from kefu.v1 import control_plane_pb2 as cpb
from kefu.v1 import node_pb2 as npb
from kefu.wire import DesiredTenant, decode, desired_bucket

# ---------------------------------------------------------------- pure policy


def test_durations_parse_and_bad_ones_are_refused_in_both_languages() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("24h") == DEFAULT_OVERLAP_S
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("0") == 0
    for bad in ("", "soon", "-1h", "1w", "200d"):
        with pytest.raises(PermanentError) as ei:
            parse_duration(bad)
        assert "--overlap" in str(ei.value) and ("请" in str(ei.value) or "必须" in str(ei.value))


def test_expiry_is_a_plain_comparison_and_zero_means_never() -> None:
    assert usable(0.0, 1e12)
    assert usable(100.0, 99.9)
    assert not usable(100.0, 100.0)
    msg = expired_message("operator token", "'ci'", 0.0)
    assert "expired at 1970-01-01 00:00:00 UTC" in msg and "'ci'" in msg and "过期" in msg
    assert "API key expired" in expired_message("API key", "", 0.0)


# ---------------------------------------------------------------- operator tokens over gRPC


async def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await call  # type: ignore[misc]
    return ei.value.code(), ei.value.details() or ""


async def test_operator_token_rotation_overlap_then_old_refused(
    nats_server: NatsServer, ops_key: SigningKey
) -> None:
    async with cp_app(nats_server.url, ops_key) as (app, stub, _, admin):
        now = [time.time()]
        app.cp.clock = lambda: now[0]
        issued = await stub.IssueOperatorToken(
            cpb.IssueOperatorTokenRequest(name="ci", role="viewer"), metadata=admin
        )
        old = bearer_metadata(issued.token)
        rotated = await stub.RotateOperatorToken(
            cpb.RotateOperatorTokenRequest(name="ci", overlap_s=3600), metadata=admin
        )
        new = bearer_metadata(rotated.token)
        assert rotated.token != issued.token and rotated.info.role == "viewer"
        assert rotated.info.previous_expires_at == pytest.approx(now[0] + 3600)

        # The successor period: both secrets work, as the same operator.
        for md in (old, new):
            me = await stub.GetStatus(cpb.GetStatusRequest(), metadata=md)
            assert (me.caller, me.caller_role) == ("ci", "viewer")

        # After it: the old secret is refused, saying why; the new one works.
        now[0] += 3601
        code, msg = await _code(stub.GetStatus(cpb.GetStatusRequest(), metadata=old))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "'ci' expired at" in msg and "过期" in msg and "successor" in msg
        assert (await stub.GetStatus(cpb.GetStatusRequest(), metadata=new)).caller == "ci"
        # An unknown token learns nothing about expiries.
        code, msg = await _code(
            stub.GetStatus(cpb.GetStatusRequest(), metadata=bearer_metadata("kcp_nope"))
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED and "expired" not in msg

        # A second rotation keeps only one overlap: the first secret is gone at once, the
        # second works until its own overlap (0 here: refused at once too).
        third = await stub.RotateOperatorToken(
            cpb.RotateOperatorTokenRequest(name="ci", overlap_s=0), metadata=admin
        )
        code, _ = await _code(stub.GetStatus(cpb.GetStatusRequest(), metadata=new))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = await _code(stub.GetStatus(cpb.GetStatusRequest(), metadata=old))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        third_md = bearer_metadata(third.token)
        assert (await stub.GetStatus(cpb.GetStatusRequest(), metadata=third_md)).caller == "ci"

        # A token issued with a lifetime expires on its own.
        ttl = await stub.IssueOperatorToken(
            cpb.IssueOperatorTokenRequest(name="temp", role="viewer", ttl_s=600), metadata=admin
        )
        temp = bearer_metadata(ttl.token)
        assert (await stub.GetStatus(cpb.GetStatusRequest(), metadata=temp)).caller == "temp"
        now[0] += 601
        code, msg = await _code(stub.GetStatus(cpb.GetStatusRequest(), metadata=temp))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "'temp' expired" in msg
        # An expired token cannot be rotated back to life; rotating needs admin.
        code, msg = await _code(
            stub.RotateOperatorToken(cpb.RotateOperatorTokenRequest(name="temp"), metadata=admin)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "已过期" in msg
        code, _ = await _code(
            stub.RotateOperatorToken(cpb.RotateOperatorTokenRequest(name="ci"), metadata=third_md)
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED

        # Revoking a token during its overlap refuses both secrets.
        r = await stub.RotateOperatorToken(
            cpb.RotateOperatorTokenRequest(name="ci", overlap_s=3600), metadata=admin
        )
        await stub.RevokeOperatorToken(cpb.RevokeOperatorTokenRequest(name="ci"), metadata=admin)
        for md in (third_md, bearer_metadata(r.token)):
            code, _ = await _code(stub.GetStatus(cpb.GetStatusRequest(), metadata=md))
            assert code == grpc.StatusCode.UNAUTHENTICATED

        # The audit log names each rotation.
        audit = await stub.QueryAudit(cpb.QueryAuditRequest(limit=50), metadata=admin)
        assert sum(e.action == "operator.rotate" for e in audit.events) == 3


async def test_cli_rotates_keys_and_tokens(
    nats_server: NatsServer,
    ops_key: SigningKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kefu.cli import main

    monkeypatch.delenv("KEFU_CP_TOKEN", raising=False)
    monkeypatch.setenv("KEFU_DATA_DIR", str(tmp_path / "cli-data"))
    async with cp_app(nats_server.url, ops_key) as (app, _stub, _, _admin):
        assert app.first_token
        base = ["cp", "--target", f"127.0.0.1:{app.port}", "--token", app.first_token]

        async def kefu(*argv: str) -> tuple[int, str, str]:
            rc = await asyncio.to_thread(main, [*base, *argv])
            out = capsys.readouterr()
            return rc, out.out, out.err

        assert (await kefu("tenants", "create", "t1"))[0] == 0
        rc, out, _ = await kefu("--json", "keys", "issue", "t1")
        assert rc == 0
        first = json.loads(out)["key_id"]
        rc, out, _ = await kefu("keys", "rotate", "t1", first, "--overlap", "2h")
        assert rc == 0 and f"replaces {first}" in out and "仍可使用" in out
        rc, out, _ = await kefu("keys", "list", "t1")
        assert rc == 0 and first in out and "successor" in out
        rc, _, err = await kefu("keys", "rotate", "t1", first)
        assert rc != 0 and "already rotated" in err and "Traceback" not in err
        rc, _, err = await kefu("keys", "rotate", "t1", first, "--overlap", "soon")
        assert rc != 0 and "--overlap 'soon'" in err and "Traceback" not in err

        assert (await kefu("tokens", "issue", "bot", "--role", "viewer"))[0] == 0
        rc, out, _ = await kefu("tokens", "rotate", "bot")  # default overlap: a day
        assert rc == 0 and "kcp_" in out and "旧令牌" in out
        rc, out, _ = await kefu("--json", "tokens", "list")
        bot = next(t for t in json.loads(out)["tokens"] if t["name"] == "bot")
        assert rc == 0 and bot["previous_expires_at"] == pytest.approx(time.time() + 86400, abs=60)
        tenant = await app.cp.get_tenant("t1")
        old = next(k for k in tenant.api_keys if k.id == first)
        assert old.successor and old.expires_at == pytest.approx(time.time() + 7200, abs=60)


# ---------------------------------------------------------------- tenant keys on a real node


@pytest.mark.slow
async def test_rotated_tenant_key_reaches_the_node_and_expires_there(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    async with control_plane(nats_server.url, trust_with(ops_key)) as stack:
        old_key = await seed_demo(stack.cp)
        key_id = (await stack.cp.get_tenant("demo-shop")).api_keys[0].id
        async with cp_node(tmp_path, nats_server.url, ops_key) as (node, agent):
            await agent.wait_for(lambda: "demo-shop" in agent.applied)
            now = [time.time()]
            node.registry.clock = lambda: now[0]
            req = npb.ConverseRequest(channel=npb.CHANNEL_WEB, text="我的订单什么时候到")
            async with stub_to(node) as stub:

                async def converse(key: str) -> tuple[grpc.StatusCode, str]:
                    try:
                        await stub.Converse(req, metadata=bearer_metadata(key), timeout=10)
                    except grpc.aio.AioRpcError as exc:
                        return exc.code(), exc.details() or ""
                    return grpc.StatusCode.OK, ""

                assert (await converse(old_key))[0] == grpc.StatusCode.OK
                new_id, new_key, until = await stack.cp.rotate_key(
                    "demo-shop", key_id, overlap_s=3600, actor="tester"
                )
                assert new_id != key_id and until > time.time()
                # The successor reaches the node through the desired state (KV).
                code, _ = await eventually(
                    lambda: converse(new_key), lambda r: r[0] == grpc.StatusCode.OK
                )
                assert code == grpc.StatusCode.OK
                entry = await stack.bus.kv_get(desired_bucket("r1"), "demo-shop")
                assert entry is not None
                doc = decode(DesiredTenant, entry.value)
                assert len(doc.api_key_hashes) == 2 and list(doc.api_key_expiry.values()) == [until]
                # Both keys work during the overlap ...
                assert (await converse(old_key))[0] == grpc.StatusCode.OK
                # ... and after it, by the node's own clock, the old one is refused clearly.
                now[0] = until + 1
                code, msg = await converse(old_key)
                assert code == grpc.StatusCode.UNAUTHENTICATED
                assert "API key expired at" in msg and "过期" in msg
                assert (await converse(new_key))[0] == grpc.StatusCode.OK
                code, msg = await converse("kefu_not-a-key")
                assert code == grpc.StatusCode.UNAUTHENTICATED and "expired" not in msg
