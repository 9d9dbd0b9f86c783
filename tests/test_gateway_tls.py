"""The gateway on TLS: HTTPS outward, mutual TLS inward to a node that requires a client
certificate of the product's CA (real gRPC node, real aiohttp gateway, real handshakes)."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
from gateway_support import DEMO_KEY, demo_config

from kefu.certstore import CertStore
from kefu.errors import ConfigError
from kefu.node.gateway.app import Gateway
from kefu.node.gateway.config import GatewayConfig, resolve_gateway
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


async def test_https_in_mutual_tls_to_the_node_and_a_gateway_without_a_certificate_refused(
    tmp_path: Path,
) -> None:
    pki = CertStore(tmp_path / "pki")
    pki.init_ca()
    node_files = pki.issue("node-1", role=Role.NODE, sans=LOCAL)
    pki.issue("gateway-1", role=Role.GATEWAY, sans=LOCAL)
    opts = NodeOptions(
        data_dir=tmp_path / "node",
        listen="127.0.0.1:0",
        metrics_listen=None,
        tenant_configs=[demo_config(tmp_path)],
        tls=node_files,
        client_auth=True,  # only a gateway with a certificate of the CA gets in
    )
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
