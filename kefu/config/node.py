"""The node configuration file (``/etc/kefu/node.yaml``): where a node keeps its data, where
it listens, which tenants it serves and its limits.

Every field has a typed default, so an empty mapping (``{}``) is a valid config: the node then
serves the demo tenant on loopback only. Relative paths are resolved against the directory of
the config file, never against the working directory (a service has no meaningful one).
Errors name file, line and field (``/etc/kefu/node.yaml:7: field 'limits.max_in_flight':
Input should be greater than or equal to 1 (got 0)``), via :mod:`kefu.config.yamlsource`.

Example (what ``kefu-node install`` writes, see :data:`DEFAULT_NODE_YAML`)::

    data_dir: /var/lib/kefu
    listen: 127.0.0.1:7400
    metrics_listen: 127.0.0.1:7401
    tenants: []            # tenant YAML files or globs; empty = the built-in demo tenant
    limits:
      max_in_flight: 8
      drain_timeout_s: 10
    control_plane:         # optional: follow a control plane over NATS (see the README)
      credentials: nats.json
      region: eu-1
"""

from __future__ import annotations

import glob
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from kefu.config.yamlsource import Problem, YamlDocument, load_yaml, parse_yaml
from kefu.wire import WireError, check_id

__all__ = [
    "DEFAULT_NODE_YAML",
    "ControlPlaneSettings",
    "EncryptionSettings",
    "InferenceSettings",
    "LimitSettings",
    "LoggingSettings",
    "NodeConfig",
    "ReplicationSettings",
    "ResolvedNodeConfig",
    "TlsSettings",
    "load_node_config",
    "parse_host_port",
    "parse_node_config",
]


def parse_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:7400"`` / ``"[::1]:7400"`` / ``"0.0.0.0:0"`` → (host, port); ValueError."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:7400)")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"{value!r}: port must be a number from 0 to 65535")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        if not all(part and part.replace("-", "").isalnum() for part in bare.split(".")):
            raise ValueError(f"{value!r}: {host!r} is not an IP address or host name") from None
    return host, int(port_s)


def _address(v: str) -> str:
    parse_host_port(v)
    return v


def _optional_address(v: str | None) -> str | None:
    return _address(v) if v else None


Address = Annotated[str, AfterValidator(_address)]


class _Section(BaseModel):
    # A typo in an operator's file must be an error, not a silently ignored line.
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitSettings(_Section):
    """Overload and shutdown limits (defaults measured on 2 cores, see the README)."""

    #: Turns served at once; more only queues inside the node and inflates latency.
    max_in_flight: int = Field(default=8, ge=1, le=10_000)
    #: Turns that may wait for a slot; beyond it new turns are shed with UNAVAILABLE.
    max_queue: int = Field(default=256, ge=0, le=1_000_000)
    #: Longest expected wait (seconds) before a turn is shed instead of queued.
    queue_timeout_s: float = Field(default=0.05, ge=0, le=60)
    #: On SIGTERM: how long in-flight turns get to finish before they are cancelled.
    drain_timeout_s: float = Field(default=10.0, ge=0, le=600)
    #: How often expired sessions are purged (seconds).
    retention_interval_s: float = Field(default=3600.0, gt=0, le=7 * 86400)


class InferenceSettings(_Section):
    """Model serving knobs (per model version)."""

    #: Execution providers in order of preference; CPU is always the last resort.
    providers: tuple[Literal["tensorrt", "cuda", "cpu"], ...] = ("tensorrt", "cuda", "cpu")
    max_batch: int = Field(default=32, ge=1, le=4096)
    max_wait_us: int = Field(default=2_000, ge=0, le=1_000_000)
    cache_size: int = Field(default=10_000, ge=0, le=10_000_000)
    intra_op_threads: int = Field(default=1, ge=1, le=256)
    #: TensorRT engine cache (GPU hosts); relative to the data directory when relative.
    trt_engine_cache_dir: str | None = None


class LoggingSettings(_Section):
    format: Literal["json", "text"] = "json"


def _nats_url(v: str | None) -> str | None:
    if v is None:
        return None
    scheme, sep, rest = v.partition("://")
    # No ws:// here: the node binary does not ship the websocket transport (aiohttp).
    if not sep or scheme not in ("nats", "tls") or not rest:
        raise ValueError(f"{v!r} is not a NATS URL (nats://host:4222 or tls://host:4222)")
    return v


def _id(what: str) -> AfterValidator:
    def check(v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return check_id(v, what)
        except WireError as exc:
            raise ValueError(str(exc)) from None

    return AfterValidator(check)


class ControlPlaneSettings(_Section):
    """``control_plane:``: the node follows its region's desired state over NATS and reports
    status and telemetry (the same agent as ``kefu node run --control-plane``)."""

    #: NATS URL; may be omitted when the credentials file carries one.
    url: Annotated[str | None, AfterValidator(_nats_url)] = None
    #: JSON credentials file as ``kefu up`` writes (``<data>/nats/creds/<user>.json``: url, user,
    #: password); relative to this file. Must be readable by the node's user.
    credentials: Annotated[str | None, Field(min_length=1)] = None
    region: Annotated[str, _id("region")] = "local"
    #: Default: the credentials' user, else the host name.
    node_id: Annotated[str | None, _id("node id")] = None
    telemetry_interval_s: float = Field(default=10.0, gt=0, le=3600)
    heartbeat_s: float = Field(default=5.0, gt=0, le=600)
    #: On SIGTERM, after the drain: how long the last telemetry may take to reach NATS before
    #: it is saved to the data directory instead (and sent after the restart).
    flush_timeout_s: float = Field(default=3.0, ge=0, le=60)


class GuardSettings(_Section):
    """``guard:``: the node-local guard of a node following a control plane. A new model or
    config version whose requests fail (at least ``max_error_share`` of at least ``min_turns``
    requests within ``probation_s`` of its apply) is reverted to the last-known-good by the
    node itself, also while NATS is unreachable, and not re-applied until the desired state
    names another version."""

    enabled: bool = True
    probation_s: float = Field(default=600.0, gt=0, le=86400)
    min_turns: int = Field(default=20, ge=1, le=1_000_000)
    max_error_share: float = Field(default=0.5, gt=0, le=1)


class TlsSettings(_Section):
    """``tls:``: the gRPC API serves TLS with this pair (re-read when renewed); paths relative
    to node.yaml. ``client_auth`` asks clients (gateways) for a certificate of ``ca_file``."""

    cert_file: Annotated[str, Field(min_length=1)]
    key_file: Annotated[str, Field(min_length=1)]
    ca_file: Annotated[str, Field(min_length=1)]
    client_auth: bool = False


def _otlp_url(v: str | None) -> str | None:
    if v is None:
        return None
    scheme, sep, rest = v.partition("://")
    if not sep or scheme not in ("http", "https") or not rest:
        raise ValueError(f"{v!r} is not an OTLP/HTTP traces URL (http://collector:4318/v1/traces)")
    return v


class TracingSettings(_Section):
    """``tracing:``: OpenTelemetry spans exported over OTLP/HTTP (protobuf). Absent or no
    endpoint = off (and free). One line turns it on:
    ``tracing: {otlp_endpoint: http://127.0.0.1:4318/v1/traces}``."""

    otlp_endpoint: Annotated[str | None, AfterValidator(_otlp_url)] = None
    #: ``service.name`` of the spans; default ``kefu-node`` / ``kefu-gateway``.
    service_name: Annotated[str | None, Field(min_length=1, max_length=64)] = None


class EncryptionSettings(_Section):
    """``encryption:``: conversation text and slots sealed in SQLite with per-tenant keys,
    wrapped by the node master key: ``$KEFU_MASTER_KEY`` if set, else ``master_key_file``
    (relative to node.yaml; default ``<data_dir>/keys/master.key``, created 0600 on first
    start). On by default; rows written before it was turned on stay readable."""

    at_rest: bool = True
    master_key_file: Annotated[str | None, Field(min_length=1)] = None


class ReplicationSettings(_Section):
    """``replication:``: replicated sessions inside the residency zone (docs/failover.md). The
    node's second NATS connection, to its region leaf server's ``ZONE`` account; the region is
    ``control_plane.region``. Absent = no replication (single-region installs)."""

    #: NATS URL of the region's leaf server; may be omitted when the credentials file has one.
    url: Annotated[str | None, AfterValidator(_nats_url)] = None
    #: JSON credentials (url, user ``<node_id>-repl``, password), relative to this file.
    credentials: Annotated[str | None, Field(min_length=1)] = None
    #: The residency zone (e.g. ``cn``); its key file is the same in every region of it.
    zone: Annotated[str, _id("zone")]
    #: The zone replication key: 32 bytes in base64, provided by the deployment.
    key_file: Annotated[str, Field(min_length=1)]
    batch: int = Field(default=64, ge=1, le=10_000)
    timeout_s: float = Field(default=5.0, gt=0, le=120)


class NodeConfig(_Section):
    """The node.yaml schema. Paths are as written; :meth:`resolve` makes them absolute."""

    data_dir: str = "/var/lib/kefu"
    listen: Address = "127.0.0.1:7400"
    #: Prometheus /metrics address; empty or null turns the endpoint off.
    metrics_listen: Annotated[str | None, AfterValidator(_optional_address)] = "127.0.0.1:7401"
    #: Tenant YAML files or glob patterns (``tenants/*.yaml``). Empty = the demo tenant.
    tenants: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    #: Node processes sharing the gRPC port (one per core for throughput). The node owns the
    #: port: it refuses to start when anything else listens there.
    workers: int = Field(default=1, ge=1, le=64)
    #: Share the gRPC port with processes started by someone else (SO_REUSEPORT); rarely wanted.
    reuse_port: bool = False
    limits: LimitSettings = LimitSettings()
    inference: InferenceSettings = InferenceSettings()
    logging: LoggingSettings = LoggingSettings()
    #: Absent = a standalone node serving the tenants above.
    control_plane: ControlPlaneSettings | None = None
    #: The node-local guard (used when following a control plane).
    guard: GuardSettings = GuardSettings()
    #: Absent = plaintext gRPC (warned at start; keep ``listen`` on loopback then).
    tls: TlsSettings | None = None
    #: Absent = no OpenTelemetry spans.
    tracing: TracingSettings = TracingSettings()
    encryption: EncryptionSettings = EncryptionSettings()
    #: Absent = sessions stay on this node only.
    replication: ReplicationSettings | None = None


@dataclass(frozen=True, kw_only=True)
class ResolvedNodeConfig:
    """A validated config with absolute paths and the tenant files it names, expanded."""

    source: str = "<node config>"
    config: NodeConfig = field(default_factory=NodeConfig)
    data_dir: Path = Path("/var/lib/kefu")
    #: Tenant config files; empty means the node serves the built-in demo tenant.
    tenant_files: tuple[Path, ...] = ()
    #: ``control_plane.credentials`` made absolute (checked readable), if given.
    credentials_file: Path | None = None
    #: ``tls:`` with absolute paths (cert, key, CA), if given.
    tls_files: tuple[Path, Path, Path] | None = None
    #: ``encryption.master_key_file`` made absolute, if given.
    master_key_file: Path | None = None
    #: ``replication:`` credentials and zone key file made absolute (checked readable).
    replication_credentials: Path | None = None
    replication_key_file: Path | None = None


def load_node_config(path: str | Path) -> ResolvedNodeConfig:
    """Read, validate and resolve a node.yaml; every problem is a located ConfigError."""
    return _resolve(load_yaml(path), base=Path(path).resolve().parent)


def parse_node_config(
    text: str | bytes, *, source: str = "<node config>", base: Path | None = None
) -> ResolvedNodeConfig:
    """Like :func:`load_node_config` for text; relative paths resolve against ``base``."""
    return _resolve(parse_yaml(text, source=source), base=base or Path.cwd())


def _resolve(doc: YamlDocument, *, base: Path) -> ResolvedNodeConfig:
    data = doc.data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise doc.error("the top level must be a mapping (data_dir:, listen:, tenants:, ...)")
    cfg = YamlDocument(path=doc.path, data=data, lines=doc.lines).validate(NodeConfig)
    problems: list[Problem] = []
    files: list[Path] = []
    for i, entry in enumerate(cfg.tenants):
        pattern = Path(entry) if Path(entry).is_absolute() else base / entry
        if glob.has_magic(str(pattern)):
            matched = sorted(Path(p) for p in glob.glob(str(pattern)))
            if not matched:
                problems.append(
                    Problem(loc=("tenants", i), message=f"no file matches {str(pattern)!r}")
                )
            files.extend(matched)
        elif not pattern.is_file():
            problems.append(Problem(loc=("tenants", i), message=f"no such file: {pattern}"))
        else:
            files.append(pattern)
    seen: set[Path] = set()
    for i, f in enumerate(files):
        if f in seen:
            problems.append(Problem(loc=("tenants", i), message=f"{f} is listed twice"))
        seen.add(f)
    credentials: Path | None = None
    cp = cfg.control_plane
    if cp is not None:
        credentials = _login_file("control_plane", cp.url, cp.credentials, base, problems)
        if cfg.workers > 1:
            # The worker pool does not run agents yet: N processes would each need their own
            # node id and telemetry stream.
            problems.append(
                Problem(
                    loc=("workers",),
                    message="workers > 1 with control_plane is not supported yet: set "
                    "workers: 1 (run one node per core, each with its own node_id and listen "
                    "port) / 受控节点暂不支持多工作进程",
                )
            )
    tls_files: tuple[Path, Path, Path] | None = None
    if cfg.tls is not None:
        absolute = []
        for name in ("cert_file", "key_file", "ca_file"):
            p = Path(getattr(cfg.tls, name))
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                problems.append(Problem(loc=("tls", name), message=f"no such file: {p}"))
            absolute.append(p)
        tls_files = (absolute[0], absolute[1], absolute[2])
    master_key: Path | None = None
    if cfg.encryption.master_key_file is not None:
        master_key = Path(cfg.encryption.master_key_file)
        master_key = master_key if master_key.is_absolute() else base / master_key
    repl_creds, repl_key = _replication_files(cfg, base, problems)
    if problems:
        raise doc.problems_error(problems)
    data_dir = Path(cfg.data_dir)
    if not cfg.data_dir.strip():
        raise doc.error("must not be empty", ("data_dir",))
    return ResolvedNodeConfig(
        source=doc.path,
        config=cfg,
        data_dir=data_dir if data_dir.is_absolute() else base / data_dir,
        tenant_files=tuple(files),
        credentials_file=credentials,
        tls_files=tls_files,
        master_key_file=master_key,
        replication_credentials=repl_creds,
        replication_key_file=repl_key,
    )


def _login_file(
    section: str, url: str | None, credentials: str | None, base: Path, problems: list[Problem]
) -> Path | None:
    """A NATS connection section's credentials file, absolute and checked (url or file)."""
    if url is None and credentials is None:
        problems.append(
            Problem(
                loc=(section,),
                message="needs url: or credentials: (a file holding the NATS URL) / "
                "需要 url 或 credentials",
            )
        )
    if credentials is None:
        return None
    path = Path(credentials) if Path(credentials).is_absolute() else base / credentials
    if (why := _credentials_problem(path, need_url=url is None)) is not None:
        problems.append(Problem(loc=(section, "credentials"), message=why))
    return path


def _replication_files(
    cfg: NodeConfig, base: Path, problems: list[Problem]
) -> tuple[Path | None, Path | None]:
    """The ``replication:`` section's files, absolute; what is wrong goes to ``problems``."""
    r = cfg.replication
    if r is None:
        return None, None
    if cfg.control_plane is None:
        problems.append(
            Problem(
                loc=("replication",),
                message="needs control_plane: (residency and the region come from it) / "
                "复制需要 control_plane 配置",
            )
        )
    creds = _login_file("replication", r.url, r.credentials, base, problems)
    key = Path(r.key_file) if Path(r.key_file).is_absolute() else base / r.key_file
    if not key.is_file():
        problems.append(
            Problem(
                loc=("replication", "key_file"),
                message=f"no such file: {key} (the zone replication key) / 找不到区域复制密钥文件",
            )
        )
    return creds, key


def _credentials_problem(path: Path, *, need_url: bool) -> str | None:
    """Why the node could not use this credentials file (None: it can)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no such file: {path}"
    except PermissionError:
        return f"{path} is not readable by this user (the node's user must read it)"
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read {path}: {exc}"
    except ValueError as exc:
        return f"{path} is not JSON credentials ({exc})"
    if not isinstance(raw, dict):
        return f"{path}: expected a JSON object with url, user, password"
    if need_url and not isinstance(raw.get("url"), str):
        return f"{path} has no url (and control_plane.url is not set)"
    return None


#: The config ``kefu-node install`` writes (mode 0640): loopback only, demo tenant, defaults.
DEFAULT_NODE_YAML = """\
# Kefu node configuration / Kefu 节点配置
# Check it with:  kefu-node check-config /etc/kefu/node.yaml
# Every field is optional; the values below are the defaults.

# Sessions (one SQLite file per tenant), model store and generated keys. 会话与模型数据目录。
data_dir: /var/lib/kefu

# gRPC API (kefu.v1). Loopback only by default: put a TLS-terminating proxy in front, or set
# 0.0.0.0:7400 on a private network. 默认只监听本机。
listen: 127.0.0.1:7400

# Prometheus /metrics over HTTP; "" turns it off.
metrics_listen: 127.0.0.1:7401

# TLS for the gRPC API (needed before listening on the network; see docs/security.md).
# Certificates from `kefu certs issue <node-id> --role node --san <address>`, re-read when
# renewed. client_auth: true = mutual TLS (gateways present a certificate of ca_file).
# 启用 TLS（对外监听前必须配置）。
#tls:
#  cert_file: pki/node.crt
#  key_file: pki/node.key      # 0600, readable by the kefu user
#  ca_file: pki/ca.crt
#  client_auth: false

# Encryption at rest: conversation text, entities and slots are sealed in SQLite (AES-256-GCM,
# one data key per tenant, wrapped by the node master key). The master key comes from
# $KEFU_MASTER_KEY if set, else master_key_file (default <data_dir>/keys/master.key, created
# 0600 on first start: back it up, losing it loses the conversations). Rotate a tenant's key
# with `kefu-node rekey --tenant T`. at_rest: false stores text in clear (not recommended).
# 静态加密：会话文本按租户密钥加密存储；主密钥丢失则数据无法读取，请备份。
encryption:
  at_rest: true
#  master_key_file: /etc/kefu/master.key   # 0600, owned by the kefu user

# Tenant configs (files or globs, relative to this file). Empty = the built-in demo tenant
# "demo-shop", whose API key is generated on first start into <data_dir>/demo-shop.key.
# 租户配置文件；留空则运行内置演示租户 demo-shop。
tenants: []
#  - tenants/*.yaml

# Node processes sharing the gRPC port: one per core for throughput (each loads the models).
# 工作进程数（共享端口），建议与 CPU 核数相同。
workers: 1

limits:
  max_in_flight: 8         # turns served at once (see the README's load benchmark)
  max_queue: 256           # turns waiting for a slot; beyond it: UNAVAILABLE (shed)
  queue_timeout_s: 0.05    # longest expected wait before a turn is shed
  drain_timeout_s: 10      # on SIGTERM, in-flight turns get this long to finish
                           # (above 10: raise TimeoutStopSec past it + 20 s, systemctl edit)
  retention_interval_s: 3600

inference:
  providers: [tensorrt, cuda, cpu]   # preference order; CPU is always the fallback
  max_batch: 32
  max_wait_us: 2000
  cache_size: 10000
  intra_op_threads: 1

logging:
  format: json             # or text

# Node-local guard (with a control plane): a new model/config version whose requests fail
# (>= max_error_share of >= min_turns requests within probation_s of its apply) is reverted to
# the last-known-good by the node itself, even with NATS down, and reported when it reconnects.
# 节点守护：新版本在观察期内请求失败率过高时，节点自行回退到上一个可用版本（NATS 断开时也可）。
#guard:
#  enabled: true
#  probation_s: 600
#  min_turns: 20
#  max_error_share: 0.5

# Replicated sessions inside the residency zone (optional; needs control_plane). Each committed
# turn of a tenant whose residency says `replicate` is shipped, sealed with the zone key, to
# this region's JetStream; the zone's other allowed regions keep a copy, so a conversation
# continues there with its history after a failover (docs/failover.md).
# 区域内会话复制（可选）：租户允许时，会话密封后复制到同一驻留区域的其他允许区域。
#replication:
#  credentials: nats-repl.json   # the region leaf server's ZONE account: {url, user, password}
#  zone: cn                      # residency zone of control_plane.region
#  key_file: zone-cn.key         # 32 bytes base64, the same file in every region of the zone

# Join a control plane (optional; absent = a standalone node serving the tenants above).
# The node then serves what the control plane assigns to its region, reports status and
# telemetry (counts only, never conversation text), and keeps serving its last-known-good
# tenants while NATS is unreachable. Needs workers: 1.
# 加入控制平面（可选）：节点按区域接收租户与模型分配，上报状态与统计数据（不含对话内容）。
#control_plane:
#  credentials: nats.json        # JSON {url, user, password}, as `kefu up` writes (0640)
#  url: tls://cp.example:4222    # optional when the credentials file has one
#  region: local                 # region this node serves
#  node_id: node-1               # default: the credentials' user, else the host name
#  telemetry_interval_s: 10
#  heartbeat_s: 5
#  flush_timeout_s: 3            # on SIGTERM: last telemetry to NATS, else saved to data_dir
"""
