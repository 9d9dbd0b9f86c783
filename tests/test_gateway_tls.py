"""The gateway on TLS: HTTPS outward, mutual TLS inward to a node that requires a client
certificate of the product's CA (real gRPC node, real aiohttp gateway, real handshakes)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gateway_support import DEMO_KEY, demo_config, wait_until

from kefu.certstore import CertStore, TlsFiles
from kefu.errors import ConfigError
from kefu.node.gateway.app import Gateway
from kefu.node.gateway.config import (
    GatewayConfig,
    HealthSettings,
    RateSettings,
    resolve_gateway,
)
from kefu.node.serving.server import Node, NodeOptions
from kefu.pki import Role

LOCAL = ["127.0.0.1", "localhost"]


def gateway_config(tmp: Path, node_port: int, node_tls: dict[str, str]) -> GatewayConfig:
    (tmp / "demo.key").write_text(DEMO_KEY + "\n", encoding="utf-8")
    return GatewayConfig.model_validate(
        {
            "listen": "127.0.0.1:0",
            "nodes": [{"id": "n1", "address": f"127.0.0.1:{node_port}"}],
            "tenants": [{"id": "demo-shop", "api_key_file": "demo.key"}],
            "health": {"interval_s": 0.2, "timeout_s": 0.5},
            "node_tls": node_tls,
            "listen_tls": {"cert_file": "pki/gateway-1.crt", "key_file": "pki/gateway-1.key"},
        }
    )


def mtls_node(tmp: Path, files: TlsFiles) -> NodeOptions:
    return NodeOptions(
        data_dir=tmp / "node",
        listen="127.0.0.1:0",
        metrics_listen=None,
        tenant_configs=[demo_config(tmp)],
        tls=files,
        client_auth=True,
    )


async def test_https_in_mutual_tls_to_the_node_and_a_gateway_without_a_certificate_refused(
    tmp_path: Path,
) -> None:
    pki = CertStore(tmp_path / "pki")
    pki.init_ca()
    node_files = pki.issue("node-1", role=Role.NODE, sans=LOCAL)
    pki.issue("gateway-1", role=Role.GATEWAY, sans=LOCAL)
    opts = mtls_node(tmp_path, node_files)  # only a gateway with a CA certificate gets in
    ca = {"ca_file": "pki/ca.crt"}
    pair = {"cert_file": "pki/gateway-1.crt", "key_file": "pki/gateway-1.key"}
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    async with Node(opts) as node:
        good = resolve_gateway(gateway_config(tmp_path, node.port, ca | pair), base=tmp_path)
        async with (
            Gateway(good) as gw,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        ):
            assert gw.url.startswith("https://")
            url = f"{gw.url}/v1/chat/demo-shop/messages"
            r = await http.post(url, json={"text": "我的订单什么时候到"}, ssl=client_ctx)
            body = await r.json()
            assert r.status == 200 and body["intent"] == "delivery_tracking", body
            # A client that does not trust the product's CA refuses the gateway.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.post(url, json={"text": "hi"}, ssl=ssl.create_default_context())
        # The same gateway without its certificate: the node refuses the handshake, so the
        # gateway has no healthy node and says so (503), never a stack trace.
        bare = resolve_gateway(gateway_config(tmp_path, node.port, ca), base=tmp_path)
        async with (
            Gateway(bare) as gw,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        ):
            r = await http.post(
                f"{gw.url}/v1/chat/demo-shop/messages", json={"text": "hi"}, ssl=client_ctx
            )
            body = await r.json()
            assert r.status == 503, body
            assert body["error"]["messages"]["zh"] and body["error"]["messages"]["en"]


def test_tls_files_are_checked_when_the_config_is_resolved(tmp_path: Path) -> None:
    (tmp_path / "demo.key").write_text(DEMO_KEY, encoding="utf-8")
    base = {
        "nodes": [{"id": "n1", "address": "127.0.0.1:7400"}],
        "tenants": [{"id": "demo-shop", "api_key_file": "demo.key"}],
    }
    missing = GatewayConfig.model_validate(base | {"node_tls": {"ca_file": "nope/ca.crt"}})
    with pytest.raises(ConfigError, match=r"node_tls.ca_file: .*nope/ca.crt does not exist"):
        resolve_gateway(missing, base=tmp_path)
    (tmp_path / "ca.crt").write_text("x", encoding="utf-8")
    half = GatewayConfig.model_validate(
        base | {"node_tls": {"ca_file": "ca.crt", "cert_file": "ca.crt"}}
    )
    with pytest.raises(ConfigError, match="cert_file and key_file together"):
        resolve_gateway(half, base=tmp_path)


def _install(src: CertStore, name: str, dest: Path) -> None:
    """Copy ``src``'s pair of ``name`` over the gateway's files (key first, as a renewal
    tool writes them)."""
    files = src.files(name)
    assert files.cert_file is not None and files.key_file is not None
    (dest / "gateway.key").write_bytes(files.key_file.read_bytes())
    (dest / "gateway.crt").write_bytes(files.cert_file.read_bytes())


async def test_renewed_gateway_certificate_is_used_without_failing_requests(
    tmp_path: Path,
) -> None:
    pki = CertStore(tmp_path / "pki")
    pki.init_ca()
    other = CertStore(tmp_path / "other")
    other.init_ca(name="Someone else's CA")
    node_files = pki.issue("node-1", role=Role.NODE, sans=LOCAL)
    pki.issue("gateway-1", role=Role.GATEWAY, sans=LOCAL)
    other.issue("gateway-1", role=Role.GATEWAY, sans=LOCAL)
    (tmp_path / "gw").mkdir()
    _install(other, "gateway-1", tmp_path / "gw")  # a pair the node does not trust
    opts = mtls_node(tmp_path, node_files)
    node_tls = {
        "ca_file": "pki/ca.crt",
        "cert_file": "gw/gateway.crt",
        "key_file": "gw/gateway.key",
        "check_interval_s": 0.2,
    }
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    async with Node(opts) as node:
        cfg = gateway_config(tmp_path, node.port, node_tls)
        tenant = cfg.tenants[0].model_copy(update={"rate": RateSettings(rate=1e4, burst=1e4)})
        cfg = cfg.model_copy(
            update={
                "health": HealthSettings(interval_s=0.2, timeout_s=0.5, base_ejection_s=0.1),
                "tenants": [tenant],
            }
        )
        async with (
            Gateway(resolve_gateway(cfg, base=tmp_path)) as gw,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        ):
            url = f"{gw.url}/v1/chat/demo-shop/messages"

            async def say(text: str) -> tuple[int, dict[str, Any]]:
                r = await http.post(url, json={"text": text}, ssl=client_ctx)
                return r.status, await r.json()

            status, body = await say("hi")
            assert status == 503, body  # the node refuses the untrusted certificate
            # Renewed with a certificate of the product's CA: picked up without a restart.
            await asyncio.to_thread(_install, pki, "gateway-1", tmp_path / "gw")
            await wait_until(lambda: gw.links.renewals == 1, 10, "the renewed pair")
            await wait_until(lambda: bool(gw.pool.healthy()), 10, "the node back in the pool")
            status, body = await say("我的订单什么时候到")
            assert status == 200 and body["intent"] == "delivery_tracking", body
            # Renewals under load: requests in flight on the old channels finish.
            stop = asyncio.Event()
            results: list[int] = []

            async def client() -> None:
                while not stop.is_set():
                    results.append((await say("我的订单什么时候到"))[0])

            clients = [asyncio.create_task(client()) for _ in range(3)]
            for n in (2, 3):
                await asyncio.sleep(0.5)
                await asyncio.to_thread(pki.issue, "gateway-1", role=Role.GATEWAY, sans=LOCAL)
                await asyncio.to_thread(_install, pki, "gateway-1", tmp_path / "gw")
                await wait_until(lambda n=n: gw.links.renewals == n, 10, "a renewal")
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)
            failed = [s for s in results if s != 200]
            assert failed == [] and len(results) > 10, (failed[:5], len(results))
