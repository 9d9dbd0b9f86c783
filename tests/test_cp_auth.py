"""Operator tokens on the control-plane API: a real replica on a real nats-server, real gRPC."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import grpc
import pytest
from cp_support import (
    trust_with,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
from kefu.control_plane.auth import READ_METHODS, TOKEN_FILE, Operator, Role, decide
from kefu.keys import SigningKey
from kefu.natsserver import NatsServer
from kefu.v1 import bearer_metadata
from kefu.v1 import control_plane_pb2 as pb
from kefu.v1 import control_plane_pb2_grpc as pbg

# ---------------------------------------------------------------- pure role table


def test_every_rpc_has_a_rule_and_viewers_only_read() -> None:
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["ControlPlane"].methods}
    assert methods >= READ_METHODS  # no typo silently opening or closing a method
    viewer, admin = Operator(name="v", role=Role.VIEWER), Operator(name="a", role=Role.ADMIN)
    for m in methods:
        assert decide(admin, m).allowed
        reads = m.startswith(("List", "Get", "Query", "Diff"))
        assert decide(viewer, m).allowed == (reads and m != "ListOperatorTokens"), m
    refused = decide(viewer, "CreateTenant")
    assert "admin" in refused.message and "只读" in refused.message
    assert not decide(viewer, "SomeFutureWrite").allowed  # deny by default


def test_role_table_is_pure() -> None:
    import subprocess
    import sys

    code = "import sys, kefu.control_plane.auth; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {m.split(".")[0] for m in out.stdout.split()}
    assert not loaded & {"grpc", "nats", "sqlite3", "onnxruntime", "torch"}


# ---------------------------------------------------------------- over gRPC


def _opts(url: str, key: SigningKey, token_file: Path) -> ControlPlaneOptions:
    return ControlPlaneOptions(
        nats_url=url, trust=trust_with(key), listen="127.0.0.1:0", admin_token_file=token_file
    )


async def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await call  # type: ignore[misc]
    return ei.value.code(), ei.value.details() or ""


async def test_tokens_authenticate_authorize_and_name_the_audit_actor(
    nats_server: NatsServer, ops_key: SigningKey, tmp_path: Path
) -> None:
    token_file = tmp_path / "cp-data" / TOKEN_FILE
    async with ControlPlaneApp(_opts(nats_server.url, ops_key, token_file)) as app:
        # First start against an empty store: an admin token, in a 0600 file.
        assert app.first_token and app.first_token.startswith("kcp_")
        assert token_file.read_text(encoding="utf-8").strip() == app.first_token
        assert token_file.stat().st_mode & 0o777 == 0o600
        admin = bearer_metadata(app.first_token)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = pbg.ControlPlaneStub(ch)
            # Health stays open.
            hc = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="kefu.v1.ControlPlane"), timeout=10
            )
            assert hc.status == health_pb2.HealthCheckResponse.SERVING

            # No token, a wrong one, a malformed header: UNAUTHENTICATED, bilingual.
            for md in ((), bearer_metadata("kcp_wrong"), (("authorization", "Basic x"),)):
                code, msg = await _code(stub.ListTenants(pb.ListTenantsRequest(), metadata=md))
                assert code == grpc.StatusCode.UNAUTHENTICATED and "令牌" in msg and "token" in msg
            code, _ = await _code(
                stub.CreateTenant(pb.CreateTenantRequest(tenant="t1"), metadata=())
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED

            issued = await stub.IssueOperatorToken(
                pb.IssueOperatorTokenRequest(name="ops-view", role="viewer"), metadata=admin
            )
            viewer = bearer_metadata(issued.token)
            alice_reply = await stub.IssueOperatorToken(
                pb.IssueOperatorTokenRequest(name="alice", role="admin"), metadata=admin
            )
            alice = (*bearer_metadata(alice_reply.token), ("x-kefu-actor", "bob"))
            code, _ = await _code(
                stub.IssueOperatorToken(
                    pb.IssueOperatorTokenRequest(name="alice", role="admin"), metadata=admin
                )
            )
            assert code == grpc.StatusCode.ALREADY_EXISTS

            # An admin token works; the audit actor is its name, the header only a note.
            await stub.CreateTenant(pb.CreateTenantRequest(tenant="t1"), metadata=alice)
            # A viewer reads, and is refused every write with a bilingual reason.
            listed = await stub.ListTenants(pb.ListTenantsRequest(), metadata=viewer)
            assert [t.id for t in listed.tenants] == ["t1"]
            me = await stub.GetStatus(pb.GetStatusRequest(), metadata=viewer)
            assert (me.caller, me.caller_role) == ("ops-view", "viewer")
            for call in (
                stub.CreateTenant(pb.CreateTenantRequest(tenant="t2"), metadata=viewer),
                stub.IssueApiKey(pb.IssueApiKeyRequest(tenant="t1"), metadata=viewer),
                stub.IssueOperatorToken(
                    pb.IssueOperatorTokenRequest(name="x", role="admin"), metadata=viewer
                ),
                stub.ListOperatorTokens(pb.ListOperatorTokensRequest(), metadata=viewer),
            ):
                code, msg = await _code(call)
                assert code == grpc.StatusCode.PERMISSION_DENIED and "只读" in msg, msg
            listed = await stub.ListTenants(pb.ListTenantsRequest(), metadata=admin)
            assert [t.id for t in listed.tenants] == ["t1"]  # the refused create did nothing

            audit = await stub.QueryAudit(pb.QueryAuditRequest(limit=100), metadata=viewer)
            by_action = {(e.action, e.resource): e for e in audit.events}
            created = by_action[("tenant.create", "tenant/t1")]
            assert (created.actor, created.actor_note) == ("alice", "bob")
            assert by_action[("operator.issue", "operators/ops-view")].actor == "admin"
            assert by_action[("operator.bootstrap", "operators/admin")].actor == app.options.replica
            denied = by_action[("denied", "rpc/CreateTenant")]
            assert denied.actor == "ops-view"

            # Tokens are listed without secrets; revoked ones stop working at once.
            tokens = await stub.ListOperatorTokens(pb.ListOperatorTokensRequest(), metadata=admin)
            assert {(t.name, t.role, t.revoked) for t in tokens.tokens} == {
                ("admin", "admin", False),
                ("alice", "admin", False),
                ("ops-view", "viewer", False),
            }
            assert issued.token not in str(tokens)
            await stub.RevokeOperatorToken(
                pb.RevokeOperatorTokenRequest(name="ops-view"), metadata=alice
            )
            code, _ = await _code(stub.ListTenants(pb.ListTenantsRequest(), metadata=viewer))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            # A revoked name may be issued again: a new secret, the old one stays dead.
            again = await stub.IssueOperatorToken(
                pb.IssueOperatorTokenRequest(name="ops-view", role="viewer"), metadata=admin
            )
            await stub.ListTenants(pb.ListTenantsRequest(), metadata=bearer_metadata(again.token))
            code, _ = await _code(stub.ListTenants(pb.ListTenantsRequest(), metadata=viewer))
            assert code == grpc.StatusCode.UNAUTHENTICATED

            # Nobody can lock every operator out: the last active admin stays.
            await stub.RevokeOperatorToken(
                pb.RevokeOperatorTokenRequest(name="alice"), metadata=admin
            )
            code, msg = await _code(
                stub.RevokeOperatorToken(
                    pb.RevokeOperatorTokenRequest(name="admin"), metadata=admin
                )
            )
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "admin" in msg
            code, _ = await _code(stub.GetStatus(pb.GetStatusRequest(), metadata=alice))
            assert code == grpc.StatusCode.UNAUTHENTICATED

    # A restart against the same store creates no new token and keeps the file and the hashes.
    async with ControlPlaneApp(_opts(nats_server.url, ops_key, token_file)) as app2:
        assert app2.first_token is None
        assert token_file.read_text(encoding="utf-8").strip() == app.first_token
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app2.port}") as ch:
            stub = pbg.ControlPlaneStub(ch)
            me = await stub.GetStatus(pb.GetStatusRequest(), metadata=admin)
            assert (me.caller, me.caller_role) == ("admin", "admin")


async def test_cli_reads_token_flags_env_and_default_file(
    nats_server: NatsServer,
    ops_key: SigningKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kefu.cli import main

    data = tmp_path / "cp-data"
    monkeypatch.delenv("KEFU_CP_TOKEN", raising=False)
    monkeypatch.setenv("KEFU_DATA_DIR", str(data))  # the default token file lives here
    async with ControlPlaneApp(_opts(nats_server.url, ops_key, data / TOKEN_FILE)) as app:
        target = ["cp", "--target", f"127.0.0.1:{app.port}"]

        async def kefu(*argv: str) -> tuple[int, str, str]:
            rc = await asyncio.to_thread(main, [*target, *argv])
            out = capsys.readouterr()
            return rc, out.out, out.err

        # Default file (as kefu up writes it): issue a viewer token, shown once.
        rc, out, _ = await kefu("--json", "tokens", "issue", "ci-bot", "--role", "viewer")
        assert rc == 0
        viewer = json.loads(out)["token"]
        rc, out, _ = await kefu("tokens", "list")
        assert rc == 0 and "ci-bot" in out and viewer not in out

        # $KEFU_CP_TOKEN: a viewer reads, and a write is refused cleanly.
        monkeypatch.setenv("KEFU_CP_TOKEN", viewer)
        rc, out, _ = await kefu("status")
        assert rc == 0 and "ci-bot (viewer)" in out
        rc, _, err = await kefu("tenants", "create", "t9")
        assert rc != 0 and "PERMISSION_DENIED" in err and "只读" in err
        assert "Traceback" not in err

        # --token-file wins over the environment; --token over both.
        wrong = tmp_path / "wrong.token"
        wrong.write_text("kcp_not-a-token\n", encoding="utf-8")
        rc, _, err = await kefu("--token-file", str(wrong), "status")
        assert rc != 0 and "UNAUTHENTICATED" in err and str(wrong) in err
        assert "Traceback" not in err
        rc, out, _ = await kefu("--token-file", str(wrong), "--token", app.first_token, "status")
        assert rc == 0 and "admin (admin)" in out

        # Nothing at all: UNAUTHENTICATED with a hint, no traceback.
        monkeypatch.delenv("KEFU_CP_TOKEN")
        monkeypatch.setenv("KEFU_DATA_DIR", str(tmp_path / "elsewhere"))
        rc, _, err = await kefu("tenants", "list")
        assert rc != 0 and "UNAUTHENTICATED" in err and "no token found" in err
        assert "Traceback" not in err
        rc, out, _ = await kefu("--token", app.first_token, "tokens", "revoke", "ci-bot")
        assert rc == 0 and "revoked" in out
    assert os.stat(data / TOKEN_FILE).st_mode & 0o777 == 0o600


async def test_kefu_up_token_file_is_kept_or_reissued(
    nats_server: NatsServer, ops_key: SigningKey, tmp_path: Path
) -> None:
    """`kefu up` keeps a working token file, and re-issues `admin` into it when it is lost."""
    token_file = tmp_path / "d" / TOKEN_FILE
    async with ControlPlaneApp(_opts(nats_server.url, ops_key, token_file)) as app:
        assert app.tokens is not None and app.first_token
        assert not await app.tokens.ensure_file(token_file, actor="kefu-up")
        assert token_file.read_text(encoding="utf-8").strip() == app.first_token
        token_file.unlink()
        assert await app.tokens.ensure_file(token_file, actor="kefu-up")
        new = token_file.read_text(encoding="utf-8").strip()
        assert new != app.first_token and token_file.stat().st_mode & 0o777 == 0o600
        assert await app.tokens.verify(app.first_token) is None  # rotated: the old one is dead
        assert await app.tokens.verify(new) == Operator(name="admin", role=Role.ADMIN)
