"""``kefu certs``: the private CA and the certificates of a real deployment.

    kefu certs init-ca [--dir DIR] [--name NAME] [--force]
    kefu certs issue NAME --role node|control-plane|gateway|nats|client --san HOST ... [--days N]
    kefu certs show [NAME|ca] [--dir DIR]
    kefu certs renew NAME --role ROLE --san HOST ...   # only when due (cron-friendly)

``DIR`` defaults to ``<data-dir>/pki`` (``$KEFU_DATA_DIR`` or ``./kefu-data``), where
``kefu up`` keeps its own. Keys are written 0600 and replaced atomically; the servers re-read
a renewed pair on their next handshake (NATS on SIGHUP), so renewal needs no restart.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path

from kefu.certstore import CA_NAME, CertStore, pki_dir
from kefu.pki import Role, cert_problem

__all__ = ["register"]


def _store(args: argparse.Namespace) -> CertStore:
    if args.dir:
        return CertStore(Path(args.dir))
    base = Path(os.environ.get("KEFU_DATA_DIR") or "kefu-data")
    return CertStore(pki_dir(base))


def _print_files(store: CertStore, name: str) -> None:
    files = store.files(name)
    print(f"  certificate {files.cert_file}")
    print(f"  key         {files.key_file} (0600)")
    print(f"  CA          {files.ca_file}")


def cmd_init_ca(args: argparse.Namespace) -> int:
    store = _store(args)
    info = store.init_ca(name=args.name, force=args.force)
    print(f"created CA {info.subject}, valid until {info.not_after:%Y-%m-%d} / 已创建 CA")
    print(f"  {store.ca_cert}\n  {store.ca_key} (0600: keep it offline when you can)")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.renew:
        _, fresh = store.ensure(args.name, role=Role(args.role), sans=args.san)
        print(f"{args.name}: {'renewed' if fresh else 'still valid, not renewed'}")
    else:
        store.issue(args.name, role=Role(args.role), sans=args.san, days=args.days)
        print(f"issued {args.name} ({args.role}) / 已签发:")
    _print_files(store, args.name)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    info = store.show(args.name)
    now = datetime.now(UTC)
    print(f"subject      {info.subject}")
    print(f"issuer       {info.issuer}")
    print(f"valid        {info.not_before:%Y-%m-%d %H:%M} .. {info.not_after:%Y-%m-%d %H:%M} UTC")
    print(f"names (SAN)  {', '.join(info.sans) or '-'}")
    print(f"CA           {'yes' if info.is_ca else 'no'}")
    print(f"sha256       {info.fingerprint_sha256}")
    problem = cert_problem(info, now=now)
    print(f"status       {problem or f'valid, {(info.not_after - now).days} days left'}")
    return 1 if problem else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certs", help="private CA and TLS certificates / 证书管理")
    verbs = p.add_subparsers(dest="certs_verb", required=True, metavar="VERB")

    def common(v: argparse.ArgumentParser) -> None:
        v.add_argument("--dir", help="PKI directory (default: <data-dir>/pki, as kefu up uses)")

    init = verbs.add_parser("init-ca", help="create the private CA")
    common(init)
    init.add_argument("--name", default=CA_NAME, help="the CA's common name")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(handler=cmd_init_ca)

    for verb, renew in (("issue", False), ("renew", True)):
        v = verbs.add_parser(
            verb,
            help="issue a certificate" if not renew else "re-issue a certificate when due",
        )
        common(v)
        v.add_argument("name", help="component name: node id, control-plane, nats, gateway-1…")
        v.add_argument("--role", required=True, choices=[r.value for r in Role])
        v.add_argument(
            "--san",
            action="append",
            default=[],
            help="an address it serves (IP or DNS name; repeatable)",
        )
        v.add_argument("--days", type=int, help="lifetime in days (default 90)")
        v.set_defaults(handler=cmd_issue, renew=renew)

    show = verbs.add_parser("show", help="describe a certificate (exit 1 when unusable)")
    common(show)
    show.add_argument("name", nargs="?", default="ca", help="certificate name (default: ca)")
    show.set_defaults(handler=cmd_show)
