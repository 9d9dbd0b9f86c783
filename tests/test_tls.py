"""TLS on the wire, with real servers: the node's gRPC API and NATS refuse plaintext and
certificates of another CA, an expired certificate is refused with a clear message, mutual
TLS asks for a client certificate, and a certificate renewed under load fails no RPC."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kefu.bus import BusUnavailable
from kefu.certstore import CertStore, TlsFiles
from kefu.errors import ConfigError
from kefu.natsbus import NatsBus, NatsOptions
from kefu.natsserver import NatsServer, deployment_users
from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG
from kefu.node.serving.server import Node, NodeOptions
from kefu.pki import Role, describe
from kefu.tls import secure_channel
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg

LOCAL = ["127.0.0.1", "localhost"]


@pytest.fixture
def pki(tmp_path: Path) -> CertStore:
    store = CertStore(tmp_path / "pki")
    store.init_ca()
    return store


@pytest.fixture
def other_ca(tmp_path: Path) -> CertStore:
    store = CertStore(tmp_path / "other-pki")
    store.init_ca(name="Someone else's CA")
    return store


def node_options(tmp_path: Path, tls: TlsFiles, *, client_auth: bool = False) -> NodeOptions:
    return NodeOptions(
        data_dir=tmp_path / "data",
        listen="127.0.0.1:0",
        metrics_listen=None,
        tenant_configs=[DEMO_TENANT_CONFIG],
        tls=tls,
        client_auth=client_auth,
    )


@pytest.fixture
async def tls_node(tmp_path: Path, pki: CertStore) -> AsyncIterator[Node]:
    files = pki.issue("node-1", role=Role.NODE, sans=LOCAL)
    async with Node(node_options(tmp_path, files)) as node:
        yield node


async def health(target: str, tls: TlsFiles | None) -> int:
    async with secure_channel(target, tls) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(reply.status)


async def test_node_grpc_refuses_plaintext_and_another_ca(
    tls_node: Node, pki: CertStore, other_ca: CertStore
) -> None:
    target = f"127.0.0.1:{tls_node.port}"
    assert await health(target, TlsFiles(ca_file=pki.ca_cert)) == 1  # SERVING
    with pytest.raises(grpc.aio.AioRpcError) as plain:
        await health(target, None)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    # A client that trusts another CA does not accept this node's certificate.
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await health(target, TlsFiles(ca_file=other_ca.ca_cert))
    assert foreign.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "handshake" in (foreign.value.details() or "").lower()


async def test_node_refuses_to_start_with_an_expired_certificate(
    tmp_path: Path, pki: CertStore
) -> None:
    expired = pki.issue("node-1", role=Role.NODE, sans=LOCAL, days=-1)
    with pytest.raises(ConfigError, match=r"expired on .*kefu certs issue"):
        async with Node(node_options(tmp_path, expired)):
            pass


async def test_mutual_tls_wants_a_client_certificate_of_the_ca(
    tmp_path: Path, pki: CertStore, other_ca: CertStore
) -> None:
    files = pki.issue("node-1", role=Role.NODE, sans=LOCAL)
    gateway = pki.issue("gateway-1", role=Role.GATEWAY, sans=LOCAL)
    stranger = other_ca.issue("gateway-1", role=Role.GATEWAY, sans=LOCAL)
    async with Node(node_options(tmp_path, files, client_auth=True)) as node:
        target = f"127.0.0.1:{node.port}"
        assert await health(target, gateway) == 1
        for who in (
            TlsFiles(ca_file=pki.ca_cert),  # no certificate at all
            TlsFiles(ca_file=pki.ca_cert, cert_file=stranger.cert_file, key_file=stranger.key_file),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health(target, who)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def served_fingerprint(port: int, ca: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


@pytest.mark.slow
async def test_certificate_renewed_under_load_fails_no_rpc(tls_node: Node, pki: CertStore) -> None:
    assert tls_node.registry is not None
    md = bearer_metadata(tls_node.registry.new_keys["demo-shop"])
    target = f"127.0.0.1:{tls_node.port}"
    ca = TlsFiles(ca_file=pki.ca_cert)
    before = await asyncio.to_thread(served_fingerprint, tls_node.port, pki.ca_cert)
    stop = asyncio.Event()
    ok = 0
    failures: list[str] = []

    async def client(fresh_channels: bool) -> None:
        nonlocal ok
        channel = secure_channel(target, ca)
        try:
            while not stop.is_set():
                if fresh_channels:  # a new connection, so a new handshake, every turn
                    await channel.close()
                    channel = secure_channel(target, ca)
                try:
                    if fresh_channels:  # health checks: no tenant rate limit in the way
                        await health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=10
                        )
                    else:
                        await pbg.KefuNodeStub(channel).Converse(
                            pb.ConverseRequest(text="where is my parcel", channel=pb.CHANNEL_WEB),
                            metadata=md,
                            timeout=10,
                        )
                        await asyncio.sleep(0.1)  # under the demo tenant's rate limit
                    ok += 1
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")
        finally:
            await channel.close()

    clients = [asyncio.create_task(client(fresh)) for fresh in (True, True, False, False)]
    for _ in range(3):  # three renewals while turns run
        await asyncio.sleep(0.8)
        await asyncio.to_thread(pki.issue, "node-1", role=Role.NODE, sans=LOCAL)
    await asyncio.sleep(0.8)
    stop.set()
    await asyncio.gather(*clients)
    after = await asyncio.to_thread(served_fingerprint, tls_node.port, pki.ca_cert)
    assert failures == [] and ok > 20, (failures[:3], ok)
    current = pki.files("node-1").cert_file
    assert current is not None
    assert before != after == describe(current.read_bytes()).fingerprint_sha256


# --------------------------------------------------------------------------- NATS


@pytest.fixture
def tls_nats(tmp_path: Path, pki: CertStore) -> NatsServer:
    users = deployment_users([("local-1", "local")], certificates=True)
    srv = NatsServer(
        tmp_path / "nats",
        users=users,
        tls=pki.issue("nats", role=Role.NATS, sans=LOCAL),
    )
    return srv


async def connect(url: str, tls: TlsFiles | None) -> NatsBus:
    return await NatsBus.connect(
        NatsOptions(servers=[url], tls=tls, connect_timeout_s=2, fail_fast=True)
    )


async def test_nats_maps_certificates_and_refuses_plaintext_and_another_ca(
    tls_nats: NatsServer, pki: CertStore, other_ca: CertStore
) -> None:
    with tls_nats:
        node = pki.issue("local-1", role=Role.NODE, sans=[])
        bus = await connect(tls_nats.url, node)
        try:
            assert bus.connected
            # Mapped to the node's least-privilege user: another node's status is refused.
            with pytest.raises(BusUnavailable):
                await bus.nc.publish("$KV.nodes.other-node", b"x")
                await bus.nc.flush(timeout=2)
                await asyncio.sleep(0.2)
                if "ermission" in bus.last_error:
                    raise BusUnavailable(bus.last_error)
        finally:
            await bus.nc.close()
        with pytest.raises(BusUnavailable, match="requires TLS"):
            await connect(tls_nats.url.replace("tls://", "nats://"), None)
        stranger = other_ca.issue("local-1", role=Role.NODE, sans=[])
        foreign = TlsFiles(
            ca_file=pki.ca_cert, cert_file=stranger.cert_file, key_file=stranger.key_file
        )
        # Refused. Under TLS 1.3 the server checks the client's certificate after the client
        # finished its handshake: the client reads the "unknown CA" alert (and is told what it
        # means) or, when the server closes first, only a reset.
        with pytest.raises(BusUnavailable, match=r"another CA|Connection reset"):
            await connect(tls_nats.url, foreign)
        # And the other way: a node that trusts another CA refuses this NATS server.
        with pytest.raises(BusUnavailable, match="not signed by"):
            await connect(tls_nats.url, stranger)
        # A certificate no NATS user is named after gets no connection.
        with pytest.raises(BusUnavailable):
            await connect(tls_nats.url, pki.issue("intruder", role=Role.NODE, sans=[]))


async def test_nats_refuses_an_expired_client_certificate(
    tls_nats: NatsServer, pki: CertStore
) -> None:
    with tls_nats:
        expired = pki.issue("local-1", role=Role.NODE, sans=[], days=-1)
        with pytest.raises(ConfigError, match="expired on"):
            await connect(tls_nats.url, expired)
