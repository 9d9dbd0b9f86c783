"""The gateway's configuration file (``gateway.yaml``), typed and validated like node.yaml:
errors name file, line and field; relative paths resolve against the file's directory.

Example::

    listen: 127.0.0.1:7600
    nodes:                       # the nodes of this region (their gRPC addresses)
      - {id: edge-1, address: 10.0.0.11:7400}
      - {id: edge-2, address: 10.0.0.12:7400}
    tenants:
      - id: demo-shop            # the tenant on the nodes
        public_id: demo-shop     # the widget id pages embed (not a secret)
        api_key_file: keys/demo-shop.key     # a `channel` key of the tenant
        identity_secret_files: [keys/demo-shop.identity]   # HMAC secrets (rotation: several)
        anonymous: true          # customers without an identity token may chat
        allowed_origins: [https://shop.example.com]
        rate: {rate: 5, burst: 10}   # messages per second per channel
    limits: {max_body_bytes: 16384, max_in_flight: 256, max_waiting: 512}
    health: {interval_s: 1, failures_to_eject: 3}
    routes: {nats: nats://10.0.0.2:4222, gateway_id: gw-cn}   # follow failover routes
                                 # (then every node needs `region:`; docs/failover.md)
    node_tls:                    # TLS to the nodes (verify them with ca_file); with a pair
      ca_file: pki/ca.crt        # the gateway authenticates to them (mutual TLS)
      cert_file: pki/gateway.crt
      key_file: pki/gateway.key
    listen_tls: {cert_file: pki/gateway.crt, key_file: pki/gateway.key}   # HTTPS outward
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kefu.certstore import TlsFiles
from kefu.config.node import TracingSettings, parse_host_port
from kefu.config.yamlsource import YamlDocument, load_yaml
from kefu.errors import ConfigError
from kefu.node.gateway.routing import NODE_ID_RE, EjectionPolicy, NodeSpec
from kefu.node.gateway.traffic import BucketSettings
from kefu.node.gateway.wechat_crypto import aes_key

__all__ = [
    "GatewayConfig",
    "GatewayTenant",
    "ResolvedGateway",
    "TenantAccess",
    "load_gateway_config",
    "resolve_gateway",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeEntry(_Section):
    id: str
    address: str
    #: The node's region; needed when ``routes:`` is set.
    region: str = ""

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not NODE_ID_RE.fullmatch(v):
            raise ValueError("use 1-32 of a-z 0-9 _ - (no dots)")
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        parse_host_port(v)
        return v


class RateSettings(_Section):
    rate: float = Field(default=5.0, gt=0, le=100_000)
    burst: float = Field(default=10.0, ge=1, le=1_000_000)


class WeChatSettings(_Section):
    #: The Token set in the Official Account's server configuration (signature check).
    token_file: str
    app_id: str = ""
    app_secret_file: str | None = None
    #: WeChat's API (a local fake in tests); the customer-service message and token calls.
    api_base: str = "https://api.weixin.qq.com"
    #: Answer passively when the node is this quick, else "success" and a customer-service
    #: message later (WeChat waits 5 s and retries 3 times).
    passive_deadline_s: float = Field(default=4.0, gt=0, le=4.5)
    #: ``plain`` (明文模式) or ``safe`` (安全模式: messages and replies AES-encrypted with the
    #: EncodingAESKey; needs ``encoding_aes_key_file`` and ``app_id``).
    mode: Literal["plain", "safe"] = "plain"
    #: The 43-character EncodingAESKey from the account's server configuration.
    encoding_aes_key_file: str | None = None


class GatewayTenant(_Section):
    id: str
    public_id: str | None = None
    api_key_file: str | None = None
    #: Environment variable holding the key instead of a file.
    api_key_env: str | None = None
    identity_secret_files: list[str] = Field(default_factory=list)
    anonymous: bool = True
    allowed_origins: list[str] = Field(default_factory=list)
    rate: RateSettings = Field(default_factory=RateSettings)
    wechat: WeChatSettings | None = None


class LimitSettings(_Section):
    max_body_bytes: int = Field(default=16_384, ge=256, le=1_048_576)
    max_in_flight: int = Field(default=256, ge=1, le=100_000)
    max_waiting: int = Field(default=512, ge=0, le=1_000_000)
    max_wait_s: float = Field(default=2.0, gt=0, le=60)
    node_timeout_s: float = Field(default=10.0, gt=0, le=120)
    max_websockets: int = Field(default=10_000, ge=1, le=1_000_000)


class HealthSettings(_Section):
    interval_s: float = Field(default=1.0, gt=0, le=60)
    timeout_s: float = Field(default=1.0, gt=0, le=30)
    failures_to_eject: int = Field(default=3, ge=1, le=100)
    base_ejection_s: float = Field(default=2.0, gt=0, le=600)
    max_ejection_s: float = Field(default=30.0, gt=0, le=3600)


class NodeTlsSettings(_Section):
    """TLS to the nodes: verify them against ``ca_file``; ``cert_file`` + ``key_file`` (both
    or neither) present the gateway's certificate to nodes that require mutual TLS."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    #: How often the pair's files are checked for a renewal (then the channels are rebuilt).
    check_interval_s: float = Field(default=30.0, gt=0, le=3600)


class ListenTlsSettings(_Section):
    """HTTPS on the gateway's own listener (re-read when the files change)."""

    cert_file: str
    key_file: str


class RoutesSettings(_Section):
    """Follow the control plane's routes (docs/failover.md): each tenant's new conversations
    go to the nodes of the region its route names; the gateway reports which nodes it reaches."""

    nats: str
    #: JSON credentials file (url, user, password) for the NATS user, as nodes use.
    creds_file: str | None = None
    #: This gateway's name in its reachability reports.
    gateway_id: str = Field(default="gateway", pattern="^[a-z0-9][a-z0-9_-]{0,62}$")
    report_s: float = Field(default=1.0, gt=0, le=60)
    #: Also take nodes from the control plane's node registry (each node's reported gRPC
    #: address and region): ``nodes:`` may then be empty.
    discover_nodes: bool = False
    #: With ``discover_nodes``: take only the nodes of these regions (a zone's gateway lists
    #: its zone's regions); empty = every region.
    regions: list[Annotated[str, Field(pattern="^[a-z0-9][a-z0-9_-]{0,62}$")]] = []


class GatewayConfig(_Section):
    listen: str = "127.0.0.1:7600"
    #: May be empty only with ``routes: {discover_nodes: true}``.
    nodes: list[NodeEntry] = Field(default_factory=list)
    tenants: list[GatewayTenant] = Field(min_length=1)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    #: Seconds between hand-off polls pushing agent messages to WebSocket customers.
    agent_poll_s: float = Field(default=1.0, gt=0, le=60)
    log_format: str = Field(default="json", pattern="^(json|text)$")
    #: None: plaintext gRPC to the nodes (loopback development; warned about loudly).
    node_tls: NodeTlsSettings | None = None
    #: None: plain HTTP (behind a TLS-terminating load balancer, or loopback).
    listen_tls: ListenTlsSettings | None = None
    #: OpenTelemetry spans over OTLP/HTTP; off unless ``otlp_endpoint`` is set.
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    #: None: every tenant goes to any healthy node (one region behind this gateway).
    routes: RoutesSettings | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_host_port(v)
        return v


@dataclass(frozen=True, kw_only=True)
class TenantAccess:
    """One tenant as the gateway uses it: secrets read, defaults applied."""

    id: str
    public_id: str
    api_key: str
    identity_secrets: tuple[bytes, ...] = ()
    anonymous: bool = True
    allowed_origins: tuple[str, ...] = ()
    rate: BucketSettings = field(default_factory=BucketSettings)
    wechat: WeChatSettings | None = None
    wechat_token: str = ""
    wechat_secret: str = ""
    #: The AES key of safe mode (from the EncodingAESKey); empty in plain mode.
    wechat_aes_key: bytes = b""


@dataclass(frozen=True, kw_only=True)
class ResolvedGateway:
    config: GatewayConfig
    nodes: tuple[NodeSpec, ...]
    tenants: tuple[TenantAccess, ...]
    ejection: EjectionPolicy
    node_tls: TlsFiles | None = None
    #: The HTTPS pair (``ca_file`` unused: customers' browsers verify the gateway).
    listen_tls: TlsFiles | None = None
    source: str = "<code>"


def _read_secret(base: Path, name: str, what: str) -> str:
    path = Path(name) if Path(name).is_absolute() else base / name
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from exc
    if not text:
        raise ConfigError(f"{what}: {path} is empty")
    return text


def _wechat_key(base: Path, wc: WeChatSettings, where: str) -> bytes:
    """Safe mode's AES key; checked here so a wrong EncodingAESKey fails at start."""
    if wc.mode == "plain":
        return b""
    if not wc.encoding_aes_key_file or not wc.app_id:
        raise ConfigError(
            f"{where}: mode: safe needs encoding_aes_key_file and app_id / "
            "安全模式需要 encoding_aes_key_file 与 app_id"
        )
    text = _read_secret(base, wc.encoding_aes_key_file, f"{where}.encoding_aes_key_file")
    try:
        return aes_key(text)
    except ValueError as exc:
        raise ConfigError(f"{where}.encoding_aes_key_file: {exc} / EncodingAESKey 无效") from None


def _existing(base: Path, name: str, what: str) -> Path:
    path = Path(name) if Path(name).is_absolute() else base / name
    if not path.is_file():
        raise ConfigError(f"{what}: {path} does not exist / 文件不存在")
    return path


def _tls(cfg: GatewayConfig, base: Path, source: str) -> tuple[TlsFiles | None, TlsFiles | None]:
    node = listen = None
    if (t := cfg.node_tls) is not None:
        if (t.cert_file is None) != (t.key_file is None):
            raise ConfigError(f"{source}: node_tls needs cert_file and key_file together")
        pair = [
            _existing(base, f, f"{source}: node_tls.{what}")
            for f, what in ((t.cert_file, "cert_file"), (t.key_file, "key_file"))
            if f
        ]
        node = TlsFiles(
            ca_file=_existing(base, t.ca_file, f"{source}: node_tls.ca_file"),
            cert_file=pair[0] if pair else None,
            key_file=pair[1] if pair else None,
        )
    if (lt := cfg.listen_tls) is not None:
        cert = _existing(base, lt.cert_file, f"{source}: listen_tls.cert_file")
        listen = TlsFiles(
            ca_file=cert,
            cert_file=cert,
            key_file=_existing(base, lt.key_file, f"{source}: listen_tls.key_file"),
        )
    return node, listen


def resolve_gateway(cfg: GatewayConfig, *, base: Path, source: str = "<code>") -> ResolvedGateway:
    """Read the key and secret files ``cfg`` names; every problem is a ConfigError."""
    tenants: list[TenantAccess] = []
    seen: set[str] = set()
    for i, t in enumerate(cfg.tenants):
        where = f"{source}: tenants[{i}] ({t.id})"
        public = t.public_id or t.id
        if public in seen:
            raise ConfigError(f"{where}: public_id {public!r} is used twice")
        seen.add(public)
        if t.api_key_env:
            key = os.environ.get(t.api_key_env, "").strip()
            if not key:
                raise ConfigError(f"{where}: environment variable {t.api_key_env} is not set")
        elif t.api_key_file:
            key = _read_secret(base, t.api_key_file, f"{where} api_key_file")
        else:
            raise ConfigError(f"{where}: api_key_file or api_key_env is required")
        secrets = tuple(
            _read_secret(base, f, f"{where} identity_secret_files").encode("utf-8")
            for f in t.identity_secret_files
        )
        if not t.anonymous and not secrets:
            raise ConfigError(f"{where}: anonymous: false needs identity_secret_files")
        wc_token = wc_secret = ""
        wc_key = b""
        if t.wechat is not None:
            wc_token = _read_secret(base, t.wechat.token_file, f"{where} wechat.token_file")
            if t.wechat.app_secret_file:
                wc_secret = _read_secret(base, t.wechat.app_secret_file, f"{where} wechat")
            wc_key = _wechat_key(base, t.wechat, f"{where} wechat")
        tenants.append(
            TenantAccess(
                id=t.id,
                public_id=public,
                api_key=key,
                identity_secrets=secrets,
                anonymous=t.anonymous,
                allowed_origins=tuple(t.allowed_origins),
                rate=BucketSettings(rate=t.rate.rate, burst=t.rate.burst),
                wechat=t.wechat,
                wechat_token=wc_token,
                wechat_secret=wc_secret,
                wechat_aes_key=wc_key,
            )
        )
    ids = [n.id for n in cfg.nodes]
    if not ids and not (cfg.routes is not None and cfg.routes.discover_nodes):
        raise ConfigError(
            f"{source}: nodes: list at least one node, or set routes: {{discover_nodes: true}} / "
            "请列出节点，或启用 routes.discover_nodes",
            path=source,
            field="nodes",
        )
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{source}: a node id is listed twice: {ids}")
    if cfg.routes is not None and (missing := [n.id for n in cfg.nodes if not n.region]):
        raise ConfigError(
            f"{source}: routes: needs a region on every node (missing on {missing}) / "
            "启用 routes 时每个节点都要写 region"
        )
    h = cfg.health
    node_tls, listen_tls = _tls(cfg, base, source)
    return ResolvedGateway(
        config=cfg,
        nodes=tuple(NodeSpec(id=n.id, address=n.address, region=n.region) for n in cfg.nodes),
        tenants=tuple(tenants),
        ejection=EjectionPolicy(
            failures_to_eject=h.failures_to_eject,
            base_ejection_s=h.base_ejection_s,
            max_ejection_s=h.max_ejection_s,
        ),
        node_tls=node_tls,
        listen_tls=listen_tls,
        source=source,
    )


def load_gateway_config(path: str | Path) -> ResolvedGateway:
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise doc.error("the top level must be a mapping (listen:, nodes:, tenants:, ...)")
    cfg = YamlDocument(path=doc.path, data=doc.data, lines=doc.lines).validate(GatewayConfig)
    return resolve_gateway(cfg, base=Path(path).resolve().parent, source=str(path))
