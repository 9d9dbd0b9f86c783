"""``kefu node run`` (serve a node, through :mod:`kefu.node.bootstrap`) and ``kefu chat``
(:mod:`kefu.node.chat`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kefu.errors import ConfigError, PermanentError
from kefu.node.bootstrap import NodePlan, Started, serve
from kefu.node.chat import DEFAULT_TARGET, add_chat_arguments, run_chat

if TYPE_CHECKING:
    from kefu.node.agent.cp_link import ControlPlaneLink
    from kefu.node.serving.server import NodeOptions


class DevVoice:
    """What ``kefu node run`` prints (``kefu-node run`` words it apart: kefu.node.main)."""

    def started(self, plan: NodePlan, s: Started) -> None:
        if s.agent is not None:
            print(
                f"kefu node: agent {s.agent.options.node_id} following region "
                f"{s.agent.options.region}"
            )
        _announce(
            plan.options,
            listen=plan.options.listen,
            port=s.port,
            metrics_port=s.metrics_port,
            tenants=s.tenants,
            errors=s.errors,
            new_keys=s.new_keys,
            workers=s.workers,
        )

    def signal_again(self, sig: str) -> None:
        pass

    def stopping(self, plan: NodePlan, sig: str, *, pool: bool) -> None:
        what = "stopping workers" if pool else "stopping"
        print(f"kefu node: {what} (finishing in-flight turns)…", file=sys.stderr)

    def shutdown_report(self, text: str) -> None:
        print(f"kefu node: {text}", file=sys.stderr)

    def shutdown_failed(self, exc: BaseException) -> None:
        print(f"kefu node: error: shutdown could not close storage: {exc}", file=sys.stderr)

    def turns_cut(self, plan: NodePlan, n: int) -> None:
        print(f"kefu node: drain deadline expired, {n} turn(s) cancelled", file=sys.stderr)

    def workers_cut(self, n: int) -> None:
        pass

    def stopped_cleanly(self) -> None:
        pass


def _announce(
    opts: NodeOptions,
    *,
    listen: str,
    port: int,
    metrics_port: int,
    tenants: list[str],
    errors: list[str],
    new_keys: dict[str, str],
    workers: int = 1,
) -> None:
    from kefu.node.dialog.tenant import demo_key_path, new_key_notice

    for err in errors:
        print(f"kefu: tenant refused: {err}", file=sys.stderr)
    for tenant, key in new_keys.items():
        print(new_key_notice(opts.data_dir, tenant, key))
    procs = f" with {workers} worker processes" if workers > 1 else ""
    print(
        f"kefu node serving tenants [{', '.join(tenants)}] on "
        f"{listen.rsplit(':', 1)[0]}:{port}{procs}"
    )
    if tenants:  # a node managed by a control plane may start with none
        key_file = demo_key_path(opts.data_dir, tenants[0])
        print(f"try: kefu chat --target 127.0.0.1:{port} --key-file {key_file}")
    if metrics_port:
        print(f"metrics: http://127.0.0.1:{metrics_port}/metrics")
    sys.stdout.flush()


def _is_tenant_config(path: Path) -> bool:
    """Tenant YAMLs have a top-level ``tenant:``; anything else given to --config is a node.yaml.
    Unreadable files count as tenant configs, whose loader reports them with file and line."""
    from kefu.config.yamlsource import load_yaml

    try:  # the bounded loader: a too-deep file is a ConfigError, not a RecursionError
        data = load_yaml(path).data
    except ConfigError:
        return True
    return not isinstance(data, dict) or "tenant" in data


def _options(
    args: argparse.Namespace, data_dir: Callable[[str | None], Path], *, managed: bool = False
) -> tuple[NodeOptions, int, ControlPlaneLink | None]:
    """NodeOptions from an optional node.yaml (``--config node.yaml``, as ``kefu-node`` reads
    it), tenant YAMLs (``--config tenant.yaml ...``) and the flags, which win when given."""
    from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG
    from kefu.node.serving.server import NodeOptions

    paths = [Path(p) for p in args.config]
    node_files = [p for p in paths if not _is_tenant_config(p)]
    tenants = [p for p in paths if p not in node_files]
    if len(node_files) > 1:
        raise PermanentError(f"more than one node config: {', '.join(map(str, node_files))}")
    workers = 1
    link = None
    if node_files:
        from kefu.config.node import load_node_config
        from kefu.node.agent.cp_link import ControlPlaneLink
        from kefu.node.bootstrap import node_options

        resolved = load_node_config(node_files[0])
        opts = node_options(resolved)
        workers = resolved.config.workers
        link = ControlPlaneLink.from_config(resolved)
        managed = managed or link is not None
        if tenants:  # tenant files on the command line come on top of the node.yaml's
            given = list(resolved.tenant_files)
            opts.tenant_configs = given + tenants
        if args.data_dir:
            opts.data_dir = data_dir(args.data_dir)
    else:
        opts = NodeOptions(
            data_dir=data_dir(args.data_dir),
            tenant_configs=tenants or ([] if managed else [DEMO_TENANT_CONFIG]),
        )
    opts.require_tenants = not managed
    if args.listen:
        opts.listen = args.listen
    if args.metrics_listen is not None:
        opts.metrics_listen = args.metrics_listen or None
    if args.reuse_port:
        opts.reuse_port = True
    if args.max_in_flight:
        opts.max_in_flight = args.max_in_flight
    if args.queue_timeout is not None:
        opts.queue_timeout_s = args.queue_timeout
    if args.workers:
        workers = args.workers
    if args.encrypt_at_rest:
        from kefu.node.sessions.tenant_keys import EncryptionOptions

        opts.encryption = EncryptionOptions()
    return opts, workers, link


def _plan(args: argparse.Namespace) -> NodePlan:
    """The node to start: options from the flags and YAMLs, the control-plane link from
    --control-plane / --nats-creds (they win) or a node.yaml ``control_plane:`` section."""
    from kefu.models.store import data_dir
    from kefu.node.agent.cp_link import ControlPlaneLink

    flags = bool(args.control_plane or args.nats_creds)
    opts, workers, link = _options(args, data_dir, managed=flags)
    if flags:
        link = ControlPlaneLink(
            url=args.control_plane,
            credentials=Path(args.nats_creds) if args.nats_creds else None,
            region=args.region,
            node_id=args.node_id,
            telemetry_s=args.telemetry_interval,
        )
    return NodePlan(options=opts, workers=workers, link=link, log_format=args.log_format)


def cmd_run(args: argparse.Namespace) -> int:
    return asyncio.run(serve(_plan(args), DevVoice()))


def cmd_chat(args: argparse.Namespace) -> int:
    return run_chat(args, key_dir=Path("kefu-data"))


def cmd_rekey(args: argparse.Namespace) -> int:
    """New writes use the new key from the tenant store's next open (node restart or tenant
    reload); rows sealed with older keys stay readable while those keys are kept."""
    from kefu.models.store import data_dir
    from kefu.node.sessions.tenant_keys import EncryptionOptions, TenantKeys, load_master_key

    base = data_dir(args.data_dir)
    master = Path(args.master_key_file) if args.master_key_file else None
    keys = TenantKeys(base, load_master_key(base, EncryptionOptions(master_key_file=master)))
    if args.shred:
        gone = keys.shred(args.tenant)
        _audit_local(base, "key.shred", args.tenant)
        print(f"tenant {args.tenant}: data keys {'deleted' if gone else 'were absent'} / 已删除")
        return 0
    kid = keys.rekey(args.tenant)
    _audit_local(base, "key.rekey", args.tenant, kid)
    print(f"tenant {args.tenant}: new data key {kid} / 已生成新数据密钥")
    return 0


def _audit_local(base: Path, action: str, tenant: str, target: str = "") -> None:
    """Record a command run on the node itself in the node's audit log."""
    import getpass

    from kefu.node.audit.chain import AuditEntry, safe_id
    from kefu.node.audit.journal import append

    append(
        base,
        [
            AuditEntry(
                ts=time.time(),
                actor=safe_id(f"local:{getpass.getuser()}"),
                action=action,
                tenant=tenant,
                target=target,
            )
        ],
    )


def cmd_audit(args: argparse.Namespace) -> int:
    """`kefu node audit verify|list`: check the hash chain, or show entries."""
    import json
    from dataclasses import asdict

    from kefu.models.store import data_dir
    from kefu.node.audit.journal import AUDIT_FILE, read_records, verify_file

    base = data_dir(args.data_dir)
    if args.audit_verb == "verify":
        count, breaks = verify_file(base)
        if breaks:
            for b in breaks:
                print(f"TAMPERED {b} / 审计日志被篡改", file=sys.stderr)
            print(
                f"{base / AUDIT_FILE}: {len(breaks)} break(s) in {count} entries / "
                f"哈希链有 {len(breaks)} 处断裂",
                file=sys.stderr,
            )
            return 1
        print(f"{base / AUDIT_FILE}: {count} entries, hash chain intact / 哈希链完整")
        return 0
    records = read_records(base, tenant=args.tenant or "", limit=args.limit)
    if args.json:
        print(json.dumps([asdict(r) for r in records], ensure_ascii=False, indent=1))
        return 0
    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.ts))
        print(
            f"{r.seq:>6} {when} {r.actor} [{r.role or '-'}] {r.action} "
            f"{r.tenant or '-'} {r.target or '-'} {r.outcome} {r.detail}"
        )
    return 0


def add_key_commands(verbs: argparse._SubParsersAction, *, data_dir_default: str | None) -> None:
    """``rekey`` and ``audit verify|list`` (``kefu node ...`` and ``kefu-node ...``)."""
    where = data_dir_default or "$KEFU_DATA_DIR or ./kefu-data"

    def data_dir_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", default=data_dir_default, help=f"default: {where}")

    k = verbs.add_parser(
        "rekey",
        help="give a tenant a new data key for encryption at rest (old rows stay readable)",
    )
    k.add_argument("--tenant", required=True)
    data_dir_arg(k)
    k.add_argument(
        "--master-key-file",
        help="the master key (default: $KEFU_MASTER_KEY, else <data-dir>/keys/master.key)",
    )
    k.add_argument(
        "--shred",
        action="store_true",
        help="delete ALL of the tenant's data keys instead: its stored text becomes unreadable",
    )
    k.set_defaults(handler=cmd_rekey)

    a = verbs.add_parser(
        "audit", help="the node's hash-chained audit log of admin and agent actions"
    )
    av = a.add_subparsers(dest="audit_verb", required=True, metavar="VERB")
    v = av.add_parser("verify", help="check the hash chain; exit 1 naming any edited entry")
    lst = av.add_parser("list", help="show the latest entries (ids and counts, no text)")
    lst.add_argument("--tenant", help="only this tenant's entries")
    lst.add_argument("--limit", type=int, default=50, help="how many (default 50; 0 = all)")
    lst.add_argument("--json", action="store_true", help="JSON output")
    for p_ in (v, lst):
        data_dir_arg(p_)
        p_.set_defaults(handler=cmd_audit)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="the regional node that serves customer conversations")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    r = verbs.add_parser("run", help="serve gRPC (demo tenant and shipped models by default)")
    r.add_argument(
        "--config",
        action="append",
        default=[],
        help="node.yaml (as kefu-node reads it) and/or tenant YAMLs (repeatable)",
    )
    r.add_argument("--data-dir", help="data directory (default: $KEFU_DATA_DIR or ./kefu-data)")
    r.add_argument("--listen", help=f"gRPC address (default {DEFAULT_TARGET})")
    r.add_argument("--max-in-flight", type=int, help="turns served at once (default: 8)")
    r.add_argument(
        "--queue-timeout",
        type=float,
        help="longest expected wait before a turn is shed, seconds (default: 0.05)",
    )
    r.add_argument(
        "--log-format", choices=("json", "text"), default="json", help="stderr log format"
    )
    r.add_argument(
        "--metrics-listen",
        help="Prometheus /metrics address, '' to disable (default 127.0.0.1:7401)",
    )
    r.add_argument(
        "--workers",
        type=int,
        help="node processes sharing the port (use the core count for throughput; default 1)",
    )
    r.add_argument(
        "--reuse-port", action="store_true", help="share the port with other worker processes"
    )
    r.add_argument(
        "--encrypt-at-rest",
        action="store_true",
        help="encrypt conversation text and slots in SQLite (master key: $KEFU_MASTER_KEY, "
        "else <data-dir>/keys/master.key, 0600)",
    )
    r.add_argument(
        "--control-plane", metavar="NATS_URL", help="follow the control plane over this NATS URL"
    )
    r.add_argument("--nats-creds", help="NATS credentials file (url, user, password; JSON)")
    r.add_argument("--region", default="local", help="region this node serves (default: local)")
    r.add_argument("--node-id", help="node id (default: the credentials' user, else hostname)")
    r.add_argument(
        "--telemetry-interval", type=float, default=10.0, help="seconds between telemetry batches"
    )
    r.set_defaults(handler=cmd_run)

    add_key_commands(verbs, data_dir_default=None)

    c = sub.add_parser("chat", help="chat with a node from the terminal")
    add_chat_arguments(c, key_dir="kefu-data")
    c.set_defaults(handler=cmd_chat)
