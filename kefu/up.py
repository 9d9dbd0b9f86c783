"""``kefu up``: the whole platform on one machine, managed the way a real deployment is.

Starts, in order: a ``nats-server`` with JetStream (data under ``<data-dir>/nats``, a free
port, generated users with subject permissions: one for the control plane, one for the node),
one control-plane replica, the demo order center when the module is installed, and one node
in region ``local`` with its agent. The demo tenant, its config and the shipped default models
are then published and assigned **through the control plane** (idempotent, so a second
``kefu up`` reuses everything), the node converges on them, and the command prints how to
chat. Everything is TLS by default: a private CA and one certificate per component under
``<data-dir>/pki`` (:mod:`kefu.certstore`), NATS refuses plaintext and maps each client's
certificate to its user (no passwords), and the certificates are renewed while running
(``--plaintext`` turns TLS off for loopback development, loudly). The control plane's admin
operator token lives in
``<data-dir>/secrets/control-plane-admin.token`` (0600; created on the first start, re-issued
when the file is lost), where ``kefu cp`` finds it. Ctrl-C stops everything in reverse order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from kefu.config.tenant import hash_api_key
from kefu.errors import KefuError, PermanentError, TemporaryError
from kefu.rotation import usable

__all__ = ["register", "seed_demo_tenant"]

REGION = "local"
NODE_ID = "local-1"
TENANT = "demo-shop"


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def _users(nats_dir: Path, *, certificates: bool = False) -> tuple[Any, Any]:
    """The control-plane and node NATS users. With ``certificates`` they log in with their TLS
    client certificates; else with passwords kept (0600) so restarts reuse them."""
    from kefu.natsserver import deployment_users

    if certificates:
        (nats_dir / "users.json").unlink(missing_ok=True)  # no password left behind
        cp, node = deployment_users([(NODE_ID, REGION)], certificates=True)
        return cp, node
    path = nats_dir / "users.json"
    saved: dict[str, str] = {}
    if path.exists():
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(path.read_text(encoding="utf-8"))
    cp, node = deployment_users([(NODE_ID, REGION)], saved)
    _write_secret(path, json.dumps({"control-plane": cp.password, NODE_ID: node.password}))
    return cp, node


#: (certificate name, role, SANs) of the one-machine stack.
def _pki_plan(
    nodes: tuple[str, ...] = (NODE_ID,), gateways: tuple[str, ...] = ("gateway",)
) -> list[tuple[str, Any, list[str]]]:
    import socket

    from kefu.pki import Role

    local = ["127.0.0.1", "::1", "localhost"]
    host = socket.gethostname()
    here = [*local, host] if host and host != "localhost" else local
    return [
        ("nats", Role.NATS, local),
        ("control-plane", Role.CONTROL_PLANE, here),
        *((n, Role.NODE, here) for n in nodes),
        *((g, Role.GATEWAY, here) for g in gateways),
    ]


def _ensure_certificates(
    data: Path, plan: list[tuple[str, Any, list[str]]] | None = None
) -> tuple[Any, dict[str, Any], list[str]]:
    """The CA and every component's pair under ``<data>/pki`` (created, or renewed when
    expiring); (store, name → TlsFiles, names renewed)."""
    from kefu.certstore import CertStore, pki_dir

    store = CertStore(pki_dir(data))
    store.ensure_ca()
    files: dict[str, Any] = {}
    renewed: list[str] = []
    for name, role, sans in plan if plan is not None else _pki_plan():
        files[name], fresh = store.ensure(name, role=role, sans=sans)
        if fresh:
            renewed.append(name)
    return store, files, renewed


async def _renew_loop(
    data: Path, nats: Any, every_s: float, plan: list[tuple[str, Any, list[str]]] | None = None
) -> None:
    """Renew the stack's certificates before they expire, while it runs: the gRPC servers
    re-read theirs on the next handshake, NATS is told to reload (SIGHUP), NATS clients pick
    theirs up on their next reconnect. Open connections are never cut."""
    import logging

    log = logging.getLogger("kefu.up")
    while True:
        await asyncio.sleep(every_s)
        try:
            _, _, renewed = await asyncio.to_thread(_ensure_certificates, data, plan)
        except (OSError, KefuError) as exc:
            log.error("certificate renewal failed, will retry: %s", exc)
            continue
        if renewed:
            log.info("renewed certificates: %s", ", ".join(renewed))
            if "nats" in renewed:
                await asyncio.to_thread(nats.reload)


async def seed_demo_tenant(
    cp: Any, data_dir: Path, *, region: str = REGION, actor: str = "kefu-up"
) -> Path:
    """Demo tenant, config, shipped models and assignment to ``region`` via the control
    plane; returns the file holding a valid API key (issued by the control plane when there
    is none)."""
    from kefu.bundle import Manifest, pack
    from kefu.bus import Conflict
    from kefu.models.store import shipped_dir
    from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG

    if region == REGION:
        await cp.create_region(REGION, description="this machine", actor=actor)
    with contextlib.suppress(Conflict):
        await cp.create_tenant(TENANT, name="Demo shop / 演示商店", actor=actor)
    await cp.put_config(TENANT, DEMO_TENANT_CONFIG.read_text(encoding="utf-8"), actor=actor)
    models: dict[str, str] = {}
    for slot, name in (("intent", "demo-shop-intent"), ("sentiment", "sentiment")):
        path = shipped_dir() / name
        m = Manifest.from_bytes((path / "manifest.json").read_bytes())
        await cp.publish_model(pack(path), actor=actor)
        models[slot] = f"{m.name}@{m.version}"
    assigned = {a.region: a for a in await cp.list_assignments(TENANT)}
    if region not in assigned:  # keep whatever an operator rolled out since
        await cp.assign(TENANT, region, models=models, actor=actor)
    key_file = data_dir / f"{TENANT}.key"
    tenant = await cp.get_tenant(TENANT)
    have = key_file.read_text(encoding="utf-8").strip() if key_file.exists() else ""
    expiry = tenant.key_expiry().get(hash_api_key(have), 0.0) if have else 0.0
    if (
        not have
        or hash_api_key(have) not in tenant.active_key_hashes()
        or not usable(expiry, time.time())
    ):
        _, key = await cp.issue_key(TENANT, actor=actor)
        _write_secret(key_file, key + "\n")
    return key_file


def _check_ports(args: argparse.Namespace) -> None:
    """Every fixed address `kefu up` will bind, checked up front: a busy one is a clear error
    naming the flag that moves it (not a failure half-way through the start)."""
    from kefu.node.serving.server import PortInUse
    from kefu.node.serving.workers import reserve_port

    wanted = [
        ("--listen", args.listen),
        ("--metrics-listen", args.metrics_listen),
        ("--cp-listen", args.cp_listen),
        ("--order-center-listen", args.order_center_listen),
        ("--gateway-listen", args.gateway_listen),
    ]
    if args.nats_port:
        wanted.append(("--nats-port", f"127.0.0.1:{args.nats_port}"))
    for flag, address in wanted:
        if not address or address.endswith(":0"):
            continue  # off, or a free port chosen at bind time
        try:
            reserve_port(address)
        except PortInUse as exc:
            raise PermanentError(
                f"kefu up: {exc}; choose another address with {flag} HOST:PORT / "
                f"请用 {flag} 指定其他地址"
            ) from exc


@contextlib.asynccontextmanager
async def _order_center(data_dir: Path, listen: str) -> AsyncIterator[str]:
    """The demo order center (issue 4's module) when installed; yields its URL or ''."""
    if importlib.util.find_spec("kefu.demo") is None or not listen:
        yield ""
        return
    try:
        mod = importlib.import_module("kefu.demo.order_center")
        token_file = data_dir / "secrets" / "order_center_token"
        if not token_file.exists():
            _write_secret(token_file, secrets.token_urlsafe(24) + "\n")
        token = token_file.read_text(encoding="utf-8").strip()
        host, _, port = listen.rpartition(":")
        oc = mod.OrderCenter(
            data_dir / "order-center.db", host=host, port=int(port), token=token, seed_orders=600
        )
        async with oc:
            yield str(getattr(oc, "url", f"http://{listen}"))
    except (ImportError, AttributeError, TypeError, OSError) as exc:
        print(f"kefu up: demo order center not started: {exc}", file=sys.stderr)
        yield ""


async def _start_gateway(listen: str, node_port: int, key_file: Path, tls: Any) -> Any:
    """The access gateway in front of the node (issue 14), or None when ``listen`` is ''."""
    if not listen:
        return None
    from kefu.node.gateway.app import Gateway
    from kefu.node.gateway.config import GatewayConfig, resolve_gateway

    cfg = GatewayConfig.model_validate(
        {
            "listen": listen,
            "nodes": [{"id": NODE_ID, "address": f"127.0.0.1:{node_port}"}],
            "tenants": [{"id": TENANT, "api_key_file": str(key_file)}],
            # TLS to the node with the gateway's own certificate (mutual-TLS ready).
            "node_tls": tls.to_dict() if tls is not None else None,
        }
    )
    return await Gateway(resolve_gateway(cfg, base=key_file.parent)).start()


async def _up(args: argparse.Namespace) -> int:
    from kefu.certstore import find_ca
    from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
    from kefu.control_plane.auth import TOKEN_FILE
    from kefu.control_plane.cli import default_token_file, print_first_token
    from kefu.models.store import data_dir as resolve_data_dir
    from kefu.models.store import trust_for
    from kefu.natsserver import NatsServer
    from kefu.node.agent.cp_link import attach_agent
    from kefu.node.serving.logs import configure_logging
    from kefu.node.serving.server import Node, NodeOptions
    from kefu.node.sessions.files import private_dir
    from kefu.node.sessions.tenant_keys import EncryptionOptions

    configure_logging(fmt=args.log_format)
    _check_ports(args)
    data = private_dir(resolve_data_dir(args.data_dir).resolve())  # conversations: 0700
    nats_dir = data / "nats"
    secure = not args.plaintext
    certs: dict[str, Any] = {}
    if secure:
        _, certs, _ = _ensure_certificates(data)
        print(f"TLS everywhere; private CA {data / 'pki' / 'ca.crt'} / 已启用 TLS")
    else:
        print(
            "kefu up --plaintext: NATS, the control plane and the node speak PLAINTEXT on "
            "loopback; for development only / 明文模式，仅供开发",
            file=sys.stderr,
        )
    cp_user, node_user = _users(nats_dir, certificates=secure)
    nats = NatsServer(
        nats_dir, port=args.nats_port, users=[cp_user, node_user], tls=certs.get("nats")
    )
    for u, name in ((cp_user, "control-plane"), (node_user, NODE_ID)):
        creds = u.to_credentials(nats.url, tls=certs.get(name))
        _write_secret(nats_dir / "creds" / f"{u.user}.json", json.dumps(creds))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.to_thread(nats.start)
    renewing = (
        asyncio.create_task(_renew_loop(data, nats, args.renew_check_s), name="kefu-up-renew")
        if secure
        else None
    )
    try:
        print(f"nats-server (JetStream) on {nats.url}, data in {nats_dir}")
        cp_opts = ControlPlaneOptions(
            nats_url=nats.url,
            nats_user=cp_user.user,
            nats_password=None if secure else cp_user.password,
            nats_tls=certs.get("control-plane"),
            tls=certs.get("control-plane"),
            trust=trust_for(data),
            replica="cp-local",
            listen=args.cp_listen,
            regions=[REGION],
            admin_token_file=data / TOKEN_FILE,
        )
        async with (
            ControlPlaneApp(cp_opts) as app,
            _order_center(data, args.order_center_listen) as oc_url,
        ):
            assert app.cp is not None
            assert app.tokens is not None
            print(f"control plane on 127.0.0.1:{app.port}")
            token_file = data / TOKEN_FILE
            if app.first_token:
                print_first_token(app.first_token, token_file)
            elif await app.tokens.ensure_file(token_file, actor="kefu-up"):
                print(f"control-plane admin token re-issued into {token_file} / 已重新签发令牌")
            else:
                print(f"control-plane admin token in {token_file} / 控制面令牌文件")
            if oc_url:
                print(f"demo order center on {oc_url}")
            key_file = await seed_demo_tenant(app.cp, data)
            node_opts = NodeOptions(
                data_dir=data,
                listen=args.listen,
                metrics_listen=args.metrics_listen or None,
                tenant_configs=[],
                require_tenants=False,
                tls=certs.get(NODE_ID),
                # Conversation text and slots encrypted at rest; the master key in
                # <data>/keys/master.key (0600) unless $KEFU_MASTER_KEY gives one.
                encryption=None if args.plaintext else EncryptionOptions(),
            )
            async with Node(node_opts) as node:
                agent = attach_agent(
                    node,
                    url=nats.url,
                    node_id=NODE_ID,
                    region=REGION,
                    user=node_user.user,
                    password=None if secure else node_user.password,
                    tls=certs.get(NODE_ID),
                    telemetry_s=args.telemetry_interval,
                )
                async with agent:
                    try:
                        await agent.wait_for(lambda: TENANT in agent.applied, timeout_s=120)
                    except TimeoutError as exc:
                        raise TemporaryError(
                            "the node did not converge on the demo tenant within 120 s / "
                            "节点未能在 120 秒内加载演示租户"
                        ) from exc
                    where = f"127.0.0.1:{node.port}"
                    print(f"node {NODE_ID} (region {REGION}) serving {TENANT} on {where}")
                    gateway = await _start_gateway(
                        args.gateway_listen, node.port, key_file, certs.get("gateway")
                    )
                    if gateway is not None:
                        print(f"gateway on {gateway.url}; demo page / 演示页面: {gateway.url}/demo")
                    print("\nChat / 对话:")
                    ca_flag = ""
                    found = find_ca(None)
                    if secure and (found is None or found.resolve() != data / "pki" / "ca.crt"):
                        ca_flag = f" --ca-file {data / 'pki' / 'ca.crt'}"
                    chat = f"kefu chat --target 127.0.0.1:{node.port} --key-file {key_file}"
                    print(f"  {chat}{ca_flag} -d")
                    print("Control plane / 控制面:")
                    cp_cmd = f"kefu cp --target 127.0.0.1:{app.port}"
                    if token_file != default_token_file().resolve():
                        cp_cmd += f" --token-file {token_file}"
                    cp_cmd += ca_flag
                    print(f"  {cp_cmd} nodes  |  {cp_cmd} model list  |  {cp_cmd} telemetry")
                    print("Operator console / 运维控制台:")
                    if importlib.util.find_spec("kefu.tui.app") is not None:
                        tui_cmd = f"kefu tui --control-plane 127.0.0.1:{app.port}"
                        if token_file != default_token_file().resolve():
                            tui_cmd += f" --token-file {token_file}"
                        tui_cmd += ca_flag
                        print(f"  {tui_cmd}")
                    else:
                        print("  (not built yet in this version: use `kefu cp nodes` / 尚未提供)")
                    print("Ctrl-C stops everything / 按 Ctrl-C 停止")
                    sys.stdout.flush()
                    try:
                        await stop.wait()
                    finally:
                        if gateway is not None:
                            await gateway.close()
                    print("kefu up: stopping node, control plane, NATS…", file=sys.stderr)
    finally:
        if renewing is not None:
            renewing.cancel()
            await asyncio.wait({renewing})
        await asyncio.to_thread(nats.stop)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_up(args))
    except OSError as exc:
        raise PermanentError(f"kefu up: {exc}") from exc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up", help="run NATS, the control plane and a node with the demo tenant on this machine"
    )
    p.add_argument("--data-dir", help="data directory (default: $KEFU_DATA_DIR or ./kefu-data)")
    p.add_argument("--listen", default="127.0.0.1:7400", help="node gRPC (default %(default)s)")
    p.add_argument("--metrics-listen", default="127.0.0.1:7401", help="node /metrics ('' = off)")
    p.add_argument("--cp-listen", default="127.0.0.1:7500", help="control-plane gRPC address")
    p.add_argument("--nats-port", type=int, default=0, help="NATS port (default: a free one)")
    p.add_argument(
        "--order-center-listen",
        default="127.0.0.1:7480",
        help="demo order center HTTP address ('' = off; default %(default)s)",
    )
    p.add_argument(
        "--gateway-listen",
        default="127.0.0.1:7600",
        help="access gateway HTTP address: API, WebSocket, /demo ('' = off; default %(default)s)",
    )
    p.add_argument("--telemetry-interval", type=float, default=10.0, help="seconds")
    p.add_argument("--log-format", choices=("json", "text"), default="text")
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="no TLS anywhere (loopback development only; the default is TLS with a private CA)",
    )
    p.add_argument(
        "--renew-check-s",
        type=float,
        default=3600.0,
        help="how often certificates are checked and renewed before expiry (seconds)",
    )
    p.set_defaults(handler=cmd_up)
