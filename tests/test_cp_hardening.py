
"""Issue 10, control-plane side: a model update through `kefu up`'s own NATS users, a node
that cannot apply its desired state says so, hostile names and inputs get the documented
codes (never UNKNOWN and a traceback), big configs are refused up front and parsed off the
event loop, and failed authentication is counted and slowed down."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from cp_support import (
    ACTOR,
    control_plane,
    new_version,
    seed_demo,
    shipped_packed,
    trust_on_node,
    trust_with,
)

from kefu.bundle import Manifest, pack
from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
from kefu.control_plane.auth import parse_role
from kefu.control_plane.service import ControlPlane
from kefu.errors import BundleError
from kefu.keys import SigningKey
from kefu.models.store import ModelStore, shipped_dir
from kefu.natsserver import NatsServer
from kefu.node.agent.cp_link import attach_agent
from kefu.node.serving.server import Node, NodeOptions
from kefu.up import NODE_ID, REGION, _users
from kefu.v1 import bearer_metadata
from kefu.v1 import control_plane_pb2 as pb
from kefu.v1 import control_plane_pb2_grpc as pbg

pytestmark = pytest.mark.slow


async def _roll_out(cp: ControlPlane, packed: bytes, version: str) -> None:
    """Publish a newly signed intent model and assign it in `kefu up`'s region."""
    await cp.publish_model(packed, actor=ACTOR)
    models = {"intent": f"demo-shop-intent@{version}"}
    await cp.assign("demo-shop", REGION, models=models, actor=ACTOR)


def _served(agent: object, ref: str) -> bool:
    o = agent.observed.get("demo-shop")  # type: ignore[attr-defined]
    return o is not None and o.state == "serving" and ref in o.models.values()


async def test_model_update_reaches_a_node_through_kefu_up_nats_users(
    tmp_path: Path, ops_key: SigningKey
) -> None:
    """C1: the users `kefu up` writes (control plane + least-privilege node) carry a new model
    version end to end; and while the node could not fetch it, its status said why."""
    cp_user, node_user = _users(tmp_path / "nats")
    with NatsServer(tmp_path / "nats", users=[cp_user, node_user]) as srv:
        async with control_plane(srv.url, trust_with(ops_key), user=cp_user) as stack:
            await seed_demo(stack.cp, region=REGION)
            data = tmp_path / "node"
            trust_on_node(data, ops_key)
            opts = NodeOptions(
                data_dir=data, listen="127.0.0.1:0", metrics_listen=None, tenant_configs=[]
            )
            opts.require_tenants = False
            async with Node(opts) as node:
                agent = attach_agent(
                    node,
                    url=srv.url,
                    node_id=NODE_ID,
                    region=REGION,
                    user=node_user.user,
                    password=node_user.password,
                    heartbeat_s=0.5,
                    telemetry_s=5.0,
                )
                agent.options.reconnect_min_s = 0.2
                async with agent:
                    await agent.wait_for(lambda: "demo-shop" in agent.applied, timeout_s=60)
                    await _roll_out(stack.cp, new_version(tmp_path, ops_key, "up-2"), "up-2")
                    ref = "demo-shop-intent@up-2"
                    await agent.wait_for(lambda: _served(agent, ref), timeout_s=30)
                    assert ref in agent.target.loaded()
                    assert agent.reconcile_error == ""

                    # Take the bundle read away from the node's user (as nats-py 2.16 did to
                    # every `kefu up` node): it cannot apply the next version and says so.
                    full = list(node_user.publish)
                    node_user.publish = [s for s in full if "OBJ_" not in s]
                    srv.reload()
                    await _roll_out(stack.cp, new_version(tmp_path, ops_key, "up-3"), "up-3")
                    for _ in range(150):
                        nodes = await stack.cp.list_nodes(REGION)
                        if nodes and nodes[0].reconcile_error:
                            break
                        await asyncio.sleep(0.2)
                    assert "demo-shop-intent@up-3" in nodes[0].reconcile_error
                    assert nodes[0].reconcile_error_at > 0
                    assert _served(agent, ref)  # still serving the last good version
                    node_user.publish = full  # permissions restored: it converges, error gone
                    srv.reload()
                    new = "demo-shop-intent@up-3"
                    await agent.wait_for(lambda: _served(agent, new), timeout_s=30)
                    assert agent.reconcile_error == ""


# --------------------------------------------------------------------------- C3: names


def _hostile_bundle(tmp_path: Path, key: SigningKey, **fields: object) -> bytes:
    """The shipped intent bundle with manifest fields overwritten and signed by ``key``
    (bypassing write_manifest/sign_bundle, which refuse such fields, as an attacker would)."""
    dest = tmp_path / f"hostile-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(shipped_dir() / "demo-shop-intent", dest)
    raw = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    raw.update(fields)
    data = (json.dumps(raw, indent=2) + "\n").encode()
    (dest / "manifest.json").write_bytes(data)
    record = {
        "algorithm": "ed25519",
        "key_id": key.public.key_id,
        "signature": base64.b64encode(key.sign(data)).decode(),
    }
    (dest / "manifest.sig").write_text(json.dumps(record), encoding="utf-8")
    return pack(dest)


@pytest.mark.parametrize(
    "name", ["/tmp/escape", "../../escape", "a/b", "..", "Demo", "a b", "x\n", ""]
)
def test_manifest_refuses_names_that_are_paths(name: str) -> None:
    raw = json.loads((shipped_dir() / "demo-shop-intent" / "manifest.json").read_text())
    for field in ("name", "version"):
        with pytest.raises(BundleError, match="invalid model"):
            Manifest.from_bytes(json.dumps({**raw, field: name}).encode())


def test_model_store_refuses_paths_outside_it(tmp_path: Path, ops_key: SigningKey) -> None:
    store = ModelStore(tmp_path / "models", trust_with(ops_key))
    for name, version in [("/tmp/x", "1"), ("..", "1"), ("a", "../../b"), ("a", "/etc")]:
        with pytest.raises(BundleError):
            store.bundle_path(name, version)
    with pytest.raises(BundleError):
        store.resolve("../../etc@1")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BundleError, match="outside"):
        store.bundle_path("linked", "1")
    assert store.bundle_path("ok", "1") == tmp_path / "models" / "ok" / "1"


# --------------------------------------------------------------------------- the API


@asynccontextmanager
async def cp_api(
    tmp_path: Path, key: SigningKey
) -> AsyncIterator[tuple[ControlPlaneApp, pbg.ControlPlaneStub, grpc.aio.Channel, tuple]]:
    with NatsServer(tmp_path / "nats") as srv:
        opts = ControlPlaneOptions(
            nats_url=srv.url, trust=trust_with(key), listen="127.0.0.1:0", regions=["r1"]
        )
        async with (
            ControlPlaneApp(opts) as app,
            grpc.aio.insecure_channel(
                f"127.0.0.1:{app.port}", options=[("grpc.max_send_message_length", 64 << 20)]
            ) as ch,
        ):
            assert app.first_token
            yield app, pbg.ControlPlaneStub(ch), ch, bearer_metadata(app.first_token)


async def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await call  # type: ignore[misc]
    return ei.value.code(), ei.value.details() or ""


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not bad, [r.getMessage()[:300] for r in bad]


async def test_hostile_requests_get_documented_codes_without_tracebacks(
    tmp_path: Path, ops_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with cp_api(tmp_path, ops_key) as (app, stub, ch, md):
        await stub.CreateTenant(pb.CreateTenantRequest(tenant="demo-shop"), metadata=md)
        bad = grpc.StatusCode.INVALID_ARGUMENT
        code, msg = await _code(
            stub.PutConfig(pb.PutConfigRequest(tenant="demo-shop", yaml="[" * 5000), metadata=md)
        )
        assert code == bad and "demo-shop.yaml:1" in msg and "nested" in msg
        # format "2" (a string) is refused as a bad manifest, not a TypeError.
        packed = _hostile_bundle(tmp_path, ops_key, format="2")
        code, msg = await _code(
            stub.PublishModel(pb.PublishModelRequest(packed_bundle=packed), metadata=md)
        )
        assert code == bad and "format" in msg
        # A trusted signature does not make a path a model name (C3).
        for name in ("/tmp/escape", "../escape"):
            packed = _hostile_bundle(tmp_path, ops_key, name=name)
            code, msg = await _code(
                stub.PublishModel(pb.PublishModelRequest(packed_bundle=packed), metadata=md)
            )
            assert code == bad and "invalid model name" in msg
        assert app.tokens is not None
        _, viewer = await app.tokens.issue("v", parse_role("viewer"), actor=ACTOR)
        code, msg = await _code(
            stub.QueryAudit(pb.QueryAuditRequest(limit=-1), metadata=bearer_metadata(viewer))
        )
        assert code == bad and "limit" in msg
        code, _ = await _code(stub.ListModels(pb.ListModelsRequest(name="a b"), metadata=md))
        assert code == bad
        code, _ = await _code(stub.GetModel(pb.GetModelRequest(ref="x@y z"), metadata=md))
        assert code == bad
        code, _ = await _code(stub.ListNodes(pb.ListNodesRequest(region="a b"), metadata=md))
        assert code == bad
        code, _ = await _code(
            stub.QueryTelemetry(pb.QueryTelemetryRequest(tenant="a>b"), metadata=md)
        )
        assert code == bad
        code, _ = await _code(
            stub.Assign(
                pb.AssignRequest(tenant="demo-shop", region="r1", models={"intent": "../x@1"}),
                metadata=md,
            )
        )
        assert code == bad
        raw = ch.unary_unary("/kefu.v1.ControlPlane/ListTenants")
        code, msg = await _code(raw(b"\xff\xff\xff\xff", metadata=md))
        assert code == bad and "malformed" in msg
        code, _ = await _code(raw(b"\xff\xff\xff\xff"))  # and without a token: refused first
        assert code == grpc.StatusCode.UNAUTHENTICATED
        # Still answering.
        assert (await stub.GetStatus(pb.GetStatusRequest(), metadata=md)).caller == "admin"
    _no_tracebacks(caplog)


async def test_republishing_a_retarred_identical_bundle_is_idempotent(
    tmp_path: Path, ops_key: SigningKey
) -> None:
    import io
    import tarfile

    async with cp_api(tmp_path, ops_key) as (_, stub, _, md):
        packed, version = shipped_packed("demo-shop-intent")
        first = await stub.PublishModel(pb.PublishModelRequest(packed_bundle=packed), metadata=md)
        # The same files in another order, with other modes and times: other tar bytes.
        buf = io.BytesIO()
        with (
            tarfile.open(fileobj=io.BytesIO(packed)) as src,
            tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out,
        ):
            for m in reversed(src.getmembers()):
                data = src.extractfile(m).read()  # type: ignore[union-attr]
                info = tarfile.TarInfo(m.name)
                info.size, info.mode, info.mtime = len(data), 0o600, 1_700_000_000
                out.addfile(info, io.BytesIO(data))
        assert buf.getvalue() != packed
        again = await stub.PublishModel(
            pb.PublishModelRequest(packed_bundle=buf.getvalue()), metadata=md
        )
        assert (again.version, again.sha256) == (version, first.sha256)


async def test_big_config_refused_up_front_and_parsing_runs_off_the_event_loop(
    tmp_path: Path, ops_key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kefu.control_plane import service

    async with cp_api(tmp_path, ops_key) as (_, stub, _, md):
        await stub.CreateTenant(pb.CreateTenantRequest(tenant="demo-shop"), metadata=md)
        huge = "tenant:\n  id: demo-shop\n# " + "x" * (service.MAX_CONFIG_TEXT + 10) + "\n"
        code, msg = await _code(
            stub.PutConfig(pb.PutConfigRequest(tenant="demo-shop", yaml=huge), metadata=md)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "limit" in msg

        # Validation runs in a worker thread: while it is held there, other RPCs answer.
        entered, release = threading.Event(), threading.Event()
        real = service.ControlPlane.validate_config
        loop_thread = threading.get_ident()

        def held(self: service.ControlPlane, tenant: str, text: str, *, source: str) -> None:
            assert threading.get_ident() != loop_thread, "validated on the event loop"
            entered.set()
            release.wait(30)
            real(self, tenant, text, source=source)

        monkeypatch.setattr(service.ControlPlane, "validate_config", held)
        big = asyncio.ensure_future(
            stub.PutConfig(pb.PutConfigRequest(tenant="demo-shop", yaml="a: 1\n"), metadata=md)
        )
        assert await asyncio.to_thread(entered.wait, 30)
        status = await stub.GetStatus(pb.GetStatusRequest(), metadata=md, timeout=10)
        assert status.caller == "admin" and not big.done()
        release.set()
        code, _ = await _code(big)
        assert code == grpc.StatusCode.INVALID_ARGUMENT  # "a: 1" is not a tenant config


async def test_failed_authentication_is_counted_logged_and_slowed(
    tmp_path: Path, ops_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kefu.control_plane.api")
    async with cp_api(tmp_path, ops_key) as (app, stub, _, md):
        wrong = bearer_metadata("kcp_wrong")
        for _ in range(app.api.auth_guard.free_failures + 3):  # type: ignore[union-attr]
            code, _ = await _code(stub.ListTenants(pb.ListTenantsRequest(), metadata=wrong))
            assert code == grpc.StatusCode.UNAUTHENTICATED
        guard = app.api.auth_guard  # type: ignore[union-attr]
        assert guard.failures("ipv4:127.0.0.1") == guard.free_failures + 3
        status = await stub.GetStatus(pb.GetStatusRequest(), metadata=md)
        assert status.auth_failures == guard.free_failures + 3
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "127.0.0.1" in warnings[0].getMessage()
        # A success does not reset the count: one valid token must not launder a key search.
        assert guard.failures("ipv4:127.0.0.1") == guard.free_failures + 3
