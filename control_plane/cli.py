"""``kefu control-plane run`` (serve a replica) and ``kefu cp ...`` (the CLI over its API).

``kefu cp`` prints human tables by default and JSON with ``--json`` (for scripts). Every call
carries an operator token (``--token``, ``--token-file``, ``$KEFU_CP_TOKEN``, else the file
``kefu up`` / ``kefu control-plane run`` writes under ``$KEFU_DATA_DIR`` or ``./kefu-data``);
the audit log names the token. ``--actor`` only adds a note beside that name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from kefu.certstore import TlsFiles
from kefu.control_plane.alerts import Webhook
from kefu.control_plane.cli_help import HELP
from kefu.control_plane.cli_regions import REGION_VERBS, add_region_args
from kefu.control_plane.cli_rollout import ROLLOUT_VERBS, add_rollout_args
from kefu.control_plane.client import (
    DEFAULT_CP,
    DEFAULT_NATS,
    TOKEN_ENV,
    call_control_plane,
    default_token_file,
    resolve_operator_token,
)
from kefu.control_plane.tables import ago as _ago
from kefu.control_plane.tables import table as _table
from kefu.control_plane.tables import when as _when
from kefu.errors import PermanentError
from kefu.model_ref import MODEL_SLOTS
from kefu.rotation import format_utc, parse_duration
from kefu.tls import add_client_tls_arguments, client_tls

__all__ = [
    "DEFAULT_CP",
    "DEFAULT_NATS",
    "TOKEN_ENV",
    "cmd_cp",
    "cmd_run",
    "default_token_file",
    "print_first_token",
    "register",
    "resolve_operator_token",
]


def _nats_login(
    args: argparse.Namespace,
) -> tuple[str, str | None, str | None, TlsFiles | None]:
    if getattr(args, "nats_creds", None):
        from kefu.natscreds import load_credentials

        c = load_credentials(Path(args.nats_creds))
        return c.url, c.user, c.password, c.tls
    return args.nats, None, None, None


def _server_tls(args: argparse.Namespace) -> TlsFiles | None:
    given = [args.tls_cert, args.tls_key, args.tls_ca]
    if not any(given):
        return None
    if not all(given):
        raise PermanentError("give --tls-cert, --tls-key and --tls-ca together / 需同时指定")
    return TlsFiles(
        ca_file=Path(args.tls_ca), cert_file=Path(args.tls_cert), key_file=Path(args.tls_key)
    )


# ---------------------------------------------------------------------- control-plane run


def _webhooks(args: argparse.Namespace) -> list[Webhook]:
    if not args.alert_webhook:
        return []
    if not args.alert_webhook_secret_file:
        raise PermanentError(
            "--alert-webhook needs --alert-webhook-secret-file / 需同时指定 webhook 签名密钥文件"
        )
    try:
        secret = Path(args.alert_webhook_secret_file).read_text().strip()
    except OSError as exc:
        raise PermanentError(
            f"cannot read {args.alert_webhook_secret_file}: {exc.strerror} / 无法读取密钥文件"
        ) from exc
    if not secret:
        raise PermanentError(f"{args.alert_webhook_secret_file} is empty / 密钥文件为空")
    hooks = []
    for i, url in enumerate(args.alert_webhook):
        if not url.startswith(("http://", "https://")):
            raise PermanentError(f"--alert-webhook {url!r}: use an http(s) URL / 须为 http(s) 地址")
        hooks.append(Webhook(name=f"hook{i + 1}", url=url, secret=secret))
    return hooks


async def _run(args: argparse.Namespace) -> int:
    from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions, default_replica_id
    from kefu.control_plane.auth import TOKEN_FILE
    from kefu.models.store import data_dir, trust_for

    url, user, password, nats_tls = _nats_login(args)
    token_file = data_dir(args.data_dir).resolve() / TOKEN_FILE
    opts = ControlPlaneOptions(
        nats_url=url,
        nats_user=user,
        nats_password=password,
        nats_tls=nats_tls,
        tls=_server_tls(args),
        trust=trust_for(data_dir(args.data_dir), args.trust),
        replica=args.replica or default_replica_id(),
        listen=args.listen,
        admin_token_file=token_file,
        webhooks=_webhooks(args),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with ControlPlaneApp(opts) as app:
        host = args.listen.rsplit(":", 1)[0]
        print(f"kefu control plane {opts.replica} serving on {host}:{app.port}")
        if app.first_token:
            print_first_token(app.first_token, token_file)
        print(f"try: kefu cp --target 127.0.0.1:{app.port} --token-file {token_file} status")
        sys.stdout.flush()
        await stop.wait()
        print("kefu control plane: stopping…", file=sys.stderr)
    return 0


def print_first_token(token: str, path: Path) -> None:
    print(
        "First start: created the admin operator token (shown once; saved 0600 in "
        f"{path}) / 首次启动：已创建 admin 操作员令牌（仅显示一次，已保存到该文件）:\n  {token}"
    )


def cmd_run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


# ---------------------------------------------------------------------- kefu cp


async def _call(args: argparse.Namespace) -> Any:
    return await call_control_plane(
        args.target,
        lambda pb: args.build(pb, args),
        token=args.token,
        token_file=args.token_file,
        actor=args.actor,
        timeout=args.timeout,
        tls=client_tls(args),
    )


def cmd_cp(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    reply = asyncio.run(_call(args))
    if args.json:
        print(
            json.dumps(
                MessageToDict(reply, preserving_proto_field_name=True), ensure_ascii=False, indent=2
            )
        )
    else:
        show = args.show_for(args) if getattr(args, "show_for", None) else args.show
        show(reply)
    return 0


# Each verb: how to build the request, how to show the reply.


def _simple(method: str, build: Any, show: Any) -> dict[str, Any]:
    return {"build": lambda pb, a: (method, build(pb, a)), "show": show}


def _show_tenants(r: Any) -> None:
    tenants = getattr(r, "tenants", None)
    rows = tenants if tenants is not None else [r]
    _table(
        "tenants / 租户",
        ["tenant", "name", "enabled", "config", "keys (active)", "created"],
        [
            (
                t.id,
                t.name,
                t.enabled,
                t.current_config,
                sum(not k.revoked for k in t.api_keys),
                _when(t.created_at),
            )
            for t in rows
        ],
    )


def _show_keys(tenant: str) -> Any:
    def show(r: Any) -> None:
        rows = [(t.id, k) for t in r.tenants if t.id == tenant for k in t.api_keys]
        if not rows:
            raise PermanentError(f"no tenant {tenant!r} / 租户 {tenant!r} 不存在")
        _table(
            f"API keys of {tenant} / 租户 API 密钥",
            ["key", "state", "created", "expires", "successor"],
            [
                (
                    k.id,
                    "revoked" if k.revoked else "active",
                    _when(k.created_at),
                    _expiry(k.expires_at),
                    k.successor or "-",
                )
                for _, k in rows
            ],
        )

    return show


def _show_configs(r: Any) -> None:
    versions = getattr(r, "versions", None)
    rows = versions if versions is not None else [r]
    _table(
        "config versions / 配置版本",
        ["tenant", "version", "digest", "author", "when", "comment"],
        [(c.tenant, c.version, c.digest, c.author, _when(c.created_at), c.comment) for c in rows],
    )


def _show_models(r: Any) -> None:
    models = getattr(r, "models", None)
    rows = models if models is not None and not hasattr(r, "sha256") else [r]
    _table(
        "model versions / 模型版本",
        ["model", "version", "task", "size", "accuracy", "macro-F1", "signer", "published"],
        [
            (
                m.name,
                m.version,
                m.task,
                f"{m.size / 1e6:.1f} MB",
                f"{m.metrics['accuracy']:.4f}" if "accuracy" in m.metrics else "-",
                f"{m.metrics['macro_f1']:.4f}" if "macro_f1" in m.metrics else "-",
                m.signer[:12],
                _when(m.published_at),
            )
            for m in rows
        ],
    )


def _show_assignments(r: Any) -> None:
    rows = getattr(r, "assignments", None)
    rows = rows if rows is not None else [r]
    _table(
        "assignments / 分配",
        ["tenant", "region", "config", "models", "by", "when"],
        [
            (
                a.tenant,
                a.region,
                a.config_version or "current",
                ", ".join(f"{k}={v}" for k, v in sorted(a.models.items())),
                a.updated_by,
                _when(a.updated_at),
            )
            for a in rows
        ],
    )


def _show_nodes(r: Any) -> None:
    _table(
        "nodes / 节点",
        ["node", "region", "online", "heartbeat", "tenants", "models loaded", "telemetry dropped"],
        [
            (
                n.node_id,
                n.region,
                "yes" if n.online else "NO",
                _ago(n.heartbeat_at),
                "; ".join(
                    f"{t.tenant}:{t.state} v{t.config_version}"
                    + (f" ({t.error[:60]})" if t.error else "")
                    for t in n.tenants
                )
                + (
                    f"; RECONCILE FAILING / 同步失败: {n.reconcile_error[:120]}"
                    if n.reconcile_error
                    else ""
                ),
                ", ".join(n.models_loaded),
                n.telemetry_dropped,
            )
            for n in r.nodes
        ],
    )


def _show_audit(r: Any) -> None:
    _table(
        "audit log / 审计日志",
        ["seq", "when", "actor", "action", "resource", "before", "after", "detail"],
        [
            (
                e.seq,
                _when(e.at),
                e.actor,
                e.action,
                e.resource,
                e.before_digest,
                e.after_digest,
                e.detail,
            )
            for e in r.events
        ],
    )


def _show_telemetry(r: Any) -> None:
    _table(
        f"telemetry / 遥测 ({r.nodes_reporting} nodes reporting, {r.dropped} intervals dropped)",
        [
            "tenant",
            "scenario",
            "model",
            "turns",
            "errors",
            "p50 ms",
            "p95 ms",
            "fallback",
            "handoff",
            "confidence",
        ],
        [
            (
                s.tenant,
                s.scenario,
                s.model_version,
                s.turns,
                s.errors,
                f"{s.p50_ms:.0f}",
                f"{s.p95_ms:.0f}",
                f"{s.fallback_rate:.1%}",
                f"{s.handoff_rate:.1%}",
                f"{s.mean_confidence:.2f}",
            )
            for s in r.series
        ],
    )


def _show_key(r: Any) -> None:
    print(f"API key {r.key_id} (shown once; only its hash is stored / 仅显示一次):\n  {r.key}")


def _show_rotated_key(r: Any) -> None:
    print(
        f"API key {r.key_id} replaces {r.old_key_id} (shown once; only its hash is stored / "
        f"仅显示一次):\n  {r.key}\n"
        f"{r.old_key_id} keeps working until {format_utc(r.old_expires_at)}, then is refused / "
        f"{r.old_key_id} 在 {format_utc(r.old_expires_at)} 之前仍可使用，之后将被拒绝"
    )


def _show_rotated_token(r: Any) -> None:
    until = format_utc(r.info.previous_expires_at)
    print(
        f"operator token {r.info.name} ({r.info.role}) rotated; the new secret is shown once / "
        f"令牌已轮换，新令牌仅显示一次:\n  {r.token}\n"
        f"the old secret keeps working until {until}, then is refused / "
        f"旧令牌在 {until} 之前仍可使用，之后将被拒绝"
    )


def _ttl(a: argparse.Namespace) -> float:
    return parse_duration(a.ttl, what="--ttl", maximum=5 * 365 * 86400.0) if a.ttl else 0.0


def _expiry(ts: float) -> str:
    return _when(ts) if ts else "-"


def _show_tokens(r: Any) -> None:
    rows = getattr(r, "tokens", None)
    rows = rows if rows is not None else [r]
    _table(
        "operator tokens / 操作员令牌",
        ["name", "role", "state", "created", "by", "expires", "old secret until", "revoked"],
        [
            (
                t.name,
                t.role,
                "revoked" if t.revoked else "active",
                _when(t.created_at),
                t.created_by,
                _expiry(t.expires_at),
                _expiry(t.previous_expires_at),
                f"{_when(t.revoked_at)} by {t.revoked_by}" if t.revoked else "-",
            )
            for t in rows
        ],
    )


def _show_new_token(r: Any) -> None:
    print(
        f"operator token {r.info.name} ({r.info.role}); shown once, only its hash is stored / "
        f"仅显示一次:\n  {r.token}"
    )


def _publish(pb: Any, a: argparse.Namespace) -> Any:
    from kefu.bundle import pack
    from kefu.models.store import ModelStore, data_dir, trust_for

    path = Path(a.bundle)
    if not (path / "manifest.json").is_file():
        path = ModelStore(data_dir(a.data_dir) / "models", trust_for(data_dir(a.data_dir))).resolve(
            a.bundle
        )
    return pb.PublishModelRequest(packed_bundle=pack(path))


def _assign(pb: Any, a: argparse.Namespace) -> Any:
    models = {slot: getattr(a, slot) for slot in MODEL_SLOTS if getattr(a, slot)}
    scenario: dict[str, Any] = {}
    for item in a.scenario_model or []:
        try:
            where, ref = item.split("=", 1)
            sc, slot = where.split(":", 1)
        except ValueError as exc:
            raise PermanentError(
                f"--scenario-model {item!r}: use SCENARIO:SLOT=MODEL@VERSION"
            ) from exc
        scenario.setdefault(sc, pb.ScenarioModels()).models[slot] = ref
    req = pb.AssignRequest(
        tenant=a.tenant,
        region=a.region,
        models=models,
        scenario_models=scenario,
        remove=a.remove or [],
    )
    if a.config_version is not None:
        req.config_version = a.config_version
    return req


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PermanentError(f"{path}: cannot read ({exc})") from exc


VERBS: dict[tuple[str, ...], dict[str, Any]] = {
    ("status",): _simple(
        "GetStatus",
        lambda pb, a: pb.GetStatusRequest(),
        lambda r: print(
            f"replica {r.replica} (leader: {r.leader or 'none'}; this replica leads: {r.is_leader})"
            f"; you are {r.caller} ({r.caller_role})"
        ),
    ),
    ("tokens", "issue"): _simple(
        "IssueOperatorToken",
        lambda pb, a: pb.IssueOperatorTokenRequest(
            name=a.name, role=a.role, replace=a.replace, ttl_s=_ttl(a)
        ),
        _show_new_token,
    ),
    ("tokens", "rotate"): _simple(
        "RotateOperatorToken",
        lambda pb, a: pb.RotateOperatorTokenRequest(
            name=a.name, overlap_s=parse_duration(a.overlap)
        ),
        _show_rotated_token,
    ),
    ("tokens", "list"): _simple(
        "ListOperatorTokens", lambda pb, a: pb.ListOperatorTokensRequest(), _show_tokens
    ),
    ("tokens", "revoke"): _simple(
        "RevokeOperatorToken",
        lambda pb, a: pb.RevokeOperatorTokenRequest(name=a.name),
        _show_tokens,
    ),
    ("tenants", "list"): _simple(
        "ListTenants", lambda pb, a: pb.ListTenantsRequest(), _show_tenants
    ),
    ("tenants", "create"): _simple(
        "CreateTenant",
        lambda pb, a: pb.CreateTenantRequest(tenant=a.tenant, name=a.name or ""),
        _show_tenants,
    ),
    ("tenants", "disable"): _simple(
        "SetTenantEnabled",
        lambda pb, a: pb.SetTenantEnabledRequest(tenant=a.tenant, enabled=False),
        _show_tenants,
    ),
    ("tenants", "enable"): _simple(
        "SetTenantEnabled",
        lambda pb, a: pb.SetTenantEnabledRequest(tenant=a.tenant, enabled=True),
        _show_tenants,
    ),
    ("keys", "issue"): _simple(
        "IssueApiKey",
        lambda pb, a: pb.IssueApiKeyRequest(tenant=a.tenant, ttl_s=_ttl(a)),
        _show_key,
    ),
    ("keys", "list"): {
        "build": lambda pb, a: ("ListTenants", pb.ListTenantsRequest()),
        "show": None,
        "show_with_args": lambda a: _show_keys(a.tenant),
    },
    ("keys", "rotate"): _simple(
        "RotateApiKey",
        lambda pb, a: pb.RotateApiKeyRequest(
            tenant=a.tenant, key_id=a.key_id, overlap_s=parse_duration(a.overlap)
        ),
        _show_rotated_key,
    ),
    ("keys", "revoke"): _simple(
        "RevokeApiKey",
        lambda pb, a: pb.RevokeApiKeyRequest(tenant=a.tenant, key_id=a.key_id),
        _show_tenants,
    ),
    ("config", "put"): _simple(
        "PutConfig",
        lambda pb, a: pb.PutConfigRequest(
            tenant=a.tenant, yaml=_read_text(a.file), comment=a.comment or "", staged=a.staged
        ),
        _show_configs,
    ),
    ("config", "list"): _simple(
        "ListConfigs", lambda pb, a: pb.ListConfigsRequest(tenant=a.tenant), _show_configs
    ),
    ("config", "show"): _simple(
        "GetConfig",
        lambda pb, a: pb.GetConfigRequest(tenant=a.tenant, version=a.version or 0),
        lambda r: print(r.yaml, end=""),
    ),
    ("config", "diff"): _simple(
        "DiffConfig",
        lambda pb, a: pb.DiffConfigRequest(
            tenant=a.tenant, from_version=a.from_version, to_version=a.to_version or 0
        ),
        lambda r: print(
            r.unified_diff or "(no difference / 无差异)", end="" if r.unified_diff else "\n"
        ),
    ),
    ("config", "rollback"): _simple(
        "RollbackConfig",
        lambda pb, a: pb.RollbackConfigRequest(tenant=a.tenant, version=a.version),
        _show_configs,
    ),
    ("model", "publish"): _simple("PublishModel", _publish, _show_models),
    ("model", "list"): _simple(
        "ListModels", lambda pb, a: pb.ListModelsRequest(name=a.name or ""), _show_models
    ),
    ("model", "show"): _simple(
        "GetModel", lambda pb, a: pb.GetModelRequest(ref=a.ref), _show_models
    ),
    ("assign",): _simple("Assign", _assign, _show_assignments),
    ("assignments",): _simple(
        "ListAssignments",
        lambda pb, a: pb.ListAssignmentsRequest(tenant=a.tenant or ""),
        _show_assignments,
    ),
    ("nodes",): _simple(
        "ListNodes", lambda pb, a: pb.ListNodesRequest(region=a.region or ""), _show_nodes
    ),
    ("audit",): _simple(
        "QueryAudit",
        lambda pb, a: pb.QueryAuditRequest(tenant=a.tenant or "", limit=a.limit),
        _show_audit,
    ),
    ("telemetry",): _simple(
        "QueryTelemetry",
        lambda pb, a: pb.QueryTelemetryRequest(tenant=a.tenant or "", since_s=a.since, bucket_s=60),
        _show_telemetry,
    ),
}


def _add_args(path: tuple[str, ...], p: argparse.ArgumentParser) -> None:
    if path[0] in ("rollout", "alerts"):
        return add_rollout_args(path, p)
    if path in REGION_VERBS and path != ("regions", "create"):
        return add_region_args(path, p)
    if path in (
        ("tenants", "create"),
        ("tenants", "disable"),
        ("tenants", "enable"),
        ("keys", "issue"),
        ("keys", "list"),
    ):
        p.add_argument("tenant")
    if path == ("tenants", "create"):
        p.add_argument("--name")
    if path in (("keys", "revoke"), ("keys", "rotate")):
        p.add_argument("tenant")
        p.add_argument("key_id")
    if path in (("tokens", "issue"), ("tokens", "revoke"), ("tokens", "rotate")):
        p.add_argument("name", help="token name (the audit log's actor)")
    if path in (("keys", "rotate"), ("tokens", "rotate")):
        p.add_argument(
            "--overlap",
            default="24h",
            help="how long the old secret keeps working beside the new one, e.g. 30m, 24h, "
            "7d (default 24h; 0 = refuse it at once)",
        )
    if path in (("keys", "issue"), ("tokens", "issue")):
        p.add_argument("--ttl", help="expire after this long, e.g. 90d (default: never)")
    if path == ("tokens", "issue"):
        p.add_argument("--role", choices=("viewer", "admin"), default="viewer")
        p.add_argument(
            "--replace", action="store_true", help="rotate an existing active token of this name"
        )
    if path == ("regions", "create"):
        p.add_argument("region")
        p.add_argument("--description")
    if path == ("config", "put"):
        p.add_argument("tenant")
        p.add_argument("file", help="tenant YAML")
        p.add_argument("--comment")
        p.add_argument(
            "--staged",
            action="store_true",
            help="store the version without making it current (for a config canary)",
        )
    if path in (("config", "list"),):
        p.add_argument("tenant")
    if path == ("config", "show"):
        p.add_argument("tenant")
        p.add_argument("--version", type=int, help="default: current")
    if path == ("config", "diff"):
        p.add_argument("tenant")
        p.add_argument("from_version", type=int)
        p.add_argument("to_version", type=int, nargs="?", help="default: current")
    if path == ("config", "rollback"):
        p.add_argument("tenant")
        p.add_argument("version", type=int)
    if path == ("model", "publish"):
        p.add_argument("bundle", help="bundle directory, or name / name@version in the local store")
        p.add_argument("--data-dir")
    if path == ("model", "list"):
        p.add_argument("--name")
    if path == ("model", "show"):
        p.add_argument("ref", help="name@version, or name for the newest")
    if path == ("assign",):
        p.add_argument("tenant")
        p.add_argument("region")
        p.add_argument("--intent", help="intent model: name or name@version")
        p.add_argument("--sentiment", help="sentiment model: name or name@version")
        p.add_argument("--encoder", help="sentence encoder: name or name@version")
        p.add_argument(
            "--config-version", type=int, help="pin a config version (0 = follow current)"
        )
        p.add_argument(
            "--scenario-model", action="append", help="SCENARIO:SLOT=MODEL@VERSION (repeatable)"
        )
        p.add_argument(
            "--remove",
            action="append",
            metavar="SLOT|SCENARIO[:SLOT]",
            help="take away a model slot, a scenario's pins or one pin (repeatable)",
        )
    if path in (("assignments",), ("audit",), ("telemetry",)):
        p.add_argument("--tenant")
    if path == ("audit",):
        p.add_argument("--limit", type=int, default=50)
    if path == ("telemetry",):
        p.add_argument("--since", type=float, default=3600.0, help="look back this many seconds")
    if path == ("nodes",):
        p.add_argument("--region")


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("control-plane", help="the central control plane (serve a replica)")
    rv = r.add_subparsers(dest="verb", required=True, metavar="VERB")
    run = rv.add_parser("run", help="serve the control-plane gRPC API over NATS JetStream")
    run.add_argument("--nats", default=DEFAULT_NATS, help="NATS URL (default %(default)s)")
    run.add_argument("--nats-creds", help="JSON credentials file (url, user, password)")
    run.add_argument("--listen", default=DEFAULT_CP, help="gRPC address (default %(default)s)")
    run.add_argument("--replica", help="replica id (default: cp-<hostname>)")
    run.add_argument("--data-dir", help="for trusted keys (default: $KEFU_DATA_DIR or ./kefu-data)")
    run.add_argument("--trust", action="append", default=[], help="extra trusted public key file")
    run.add_argument("--tls-cert", help="the API's TLS certificate (PEM; re-read on renewal)")
    run.add_argument("--tls-key", help="its private key (PEM, 0600)")
    run.add_argument("--tls-ca", help="the CA certificate (PEM); without the three: plaintext")
    run.add_argument(
        "--alert-webhook",
        action="append",
        default=[],
        metavar="URL",
        help="POST every alert here as signed JSON (repeatable)",
    )
    run.add_argument(
        "--alert-webhook-secret-file",
        help="file holding the HMAC secret of the X-Kefu-Signature header (required with "
        "--alert-webhook)",
    )
    run.set_defaults(handler=cmd_run)

    cp = sub.add_parser(
        "cp", help="manage tenants, configs, models, assignments (control-plane CLI)"
    )
    cp.add_argument(
        "--target", default=DEFAULT_CP, help="control plane address (default %(default)s)"
    )
    cp.add_argument("--json", action="store_true", help="machine-readable output")
    cp.add_argument("--token", help=f"operator token (default: ${TOKEN_ENV} or the token file)")
    cp.add_argument(
        "--token-file",
        help="file holding the operator token (default: $KEFU_DATA_DIR or ./kefu-data, "
        "secrets/control-plane-admin.token, as written by kefu up)",
    )
    cp.add_argument(
        "--actor", help="a note recorded beside the token's name in the audit log (not identity)"
    )
    cp.add_argument("--timeout", type=float, default=30.0)
    add_client_tls_arguments(cp)
    verbs = cp.add_subparsers(dest="cp_verb", required=True, metavar="VERB")
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, spec in {**VERBS, **ROLLOUT_VERBS, **REGION_VERBS}.items():
        if len(path) == 1:
            p = verbs.add_parser(path[0], help=HELP.get(path, ""))
        else:
            if path[0] not in groups:
                g = verbs.add_parser(path[0], help=HELP.get(path[:1], ""))
                groups[path[0]] = g.add_subparsers(
                    dest=f"{path[0]}_verb", required=True, metavar="VERB"
                )
            p = groups[path[0]].add_parser(path[1], help=HELP.get(path, ""))
        _add_args(path, p)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
        p.set_defaults(
            handler=cmd_cp,
            build=spec["build"],
            show=spec["show"],
            show_for=spec.get("show_with_args"),
        )
