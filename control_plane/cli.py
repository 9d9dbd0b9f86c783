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
from kefu.control_plane.cli_tenants import TENANT_VERBS, add_tenant_args
from kefu.control_plane.client import (
    DEFAULT_CP,
    DEFAULT_NATS,
    TOKEN_ENV,
    call_control_plane,
    default_token_file,
    resolve_operator_token,
)
from kefu.control_plane.tables import ago as _ago
from kefu.control_plane.tables import listed as _listed
from kefu.control_plane.tables import simple as _simple
from kefu.control_plane.tables import table as _table
from kefu.control_plane.tables import when as _when
from kefu.errors import PermanentError
from kefu.model_ref import MODEL_SLOTS
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


def _show_assignments(r: Any) -> None:
    rows = _listed(r, "assignments")
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


VERBS: dict[tuple[str, ...], dict[str, Any]] = {
    ("status",): _simple(
        "GetStatus",
        lambda pb, a: pb.GetStatusRequest(),
        lambda r: print(
            f"replica {r.replica} (leader: {r.leader or 'none'}; this replica leads: {r.is_leader})"
            f"; you are {r.caller} ({r.caller_role})"
        ),
    ),
    **TENANT_VERBS,
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
    if path in TENANT_VERBS:
        return add_tenant_args(path, p)
    if path == ("regions", "create"):
        p.add_argument("region")
        p.add_argument("--description")
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
