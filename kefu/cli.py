"""The one CLI: ``kefu <area> <verb>``.

Every area registers its own sub-commands; this module owns error translation: a
:class:`~kefu.errors.KefuError` becomes one clear line on stderr and its exit code, never a
stack trace (set ``KEFU_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kefu import __version__
from kefu.errors import KefuError

Handler = Callable[[argparse.Namespace], int]


def _keys_new(args: argparse.Namespace) -> int:
    from kefu.keys import generate_keypair
    from kefu.models.store import data_dir

    out = Path(args.out) if args.out else data_dir(args.data_dir) / "keys"
    sk = generate_keypair(out, args.name, overwrite=args.force)
    print(f"private key: {out / (args.name + '.key')} (mode 0600; keep it secret)")
    print(f"public key:  {out / (args.name + '.pub')}  id {sk.public.key_id}")
    if args.trust:
        trusted = data_dir(args.data_dir) / "trusted-keys"
        trusted.mkdir(parents=True, exist_ok=True)
        (trusted / f"{args.name}.pub").write_text(sk.public.to_line(), encoding="utf-8")
        print(f"trusted:     {trusted / (args.name + '.pub')}")
    return 0


def _register_keys(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="Ed25519 signing keys for model bundles")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    n = verbs.add_parser("new", help="create a signing key pair")
    n.add_argument("--name", default="local", help="key name (file stem), default: local")
    n.add_argument("--out", help="directory (default: <data-dir>/keys)")
    n.add_argument("--data-dir", help="data directory (default: $KEFU_DATA_DIR or ./kefu-data)")
    n.add_argument("--trust", action="store_true", help="also add the public key to trusted-keys")
    n.add_argument("--force", action="store_true", help="overwrite an existing key of that name")
    n.set_defaults(handler=_keys_new)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kefu", description="Kefu edge customer-service platform (客服)."
    )
    parser.add_argument("--version", action="version", version=f"kefu {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="area", required=True, metavar="AREA")
    _register_keys(sub)
    from kefu.demo.cli import register as register_demo
    from kefu.models.cli import register as register_model
    from kefu.node.cli import register as register_node

    register_model(sub)
    register_node(sub)
    from kefu.node.gateway.cli import register as register_gateway

    register_gateway(sub)
    register_demo(sub)
    from kefu.control_plane.cli import register as register_control_plane
    from kefu.up_regions import register as register_up

    register_control_plane(sub)
    register_up(sub)
    from kefu.certs_cli import register as register_certs

    register_certs(sub)
    from kefu.tui.cli import register as register_tui  # Textual is imported only when run

    register_tui(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Handler = args.handler
    try:
        return handler(args)
    except KefuError as exc:
        if os.environ.get("KEFU_DEBUG"):
            raise
        print(f"kefu: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kefu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
