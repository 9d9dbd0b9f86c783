"""``kefu tui [--control-plane HOST:PORT] [--token ... | --token-file ...]``."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def cmd_tui(args: argparse.Namespace) -> int:
    from kefu.tls import client_tls
    from kefu.tui.app import KefuConsole
    from kefu.tui.client import GrpcControlPlaneClient, resolve_operator_token

    # The token is resolved by the client, on its first call and again after a refusal: no
    # token or a bad one is not fatal here, the console's banner says what is wrong.
    client = GrpcControlPlaneClient(
        args.control_plane,
        lambda: resolve_operator_token(args.token, args.token_file),
        timeout_s=args.timeout,
        tls=client_tls(args),
    )
    KefuConsole(client, refresh_s=args.refresh).run()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from kefu.tls import add_client_tls_arguments
    from kefu.tui.client import DEFAULT_CP, TOKEN_ENV

    p = sub.add_parser(
        "tui", help="the operator console (terminal UI over the control plane) / 运维控制台"
    )
    p.add_argument(
        "--control-plane",
        default=DEFAULT_CP,
        metavar="HOST:PORT",
        help="control plane address (default %(default)s)",
    )
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--token", help=f"operator token (default: ${TOKEN_ENV} or the token file)")
    tok.add_argument(
        "--token-file",
        help="file holding the operator token (default: $KEFU_DATA_DIR or ./kefu-data, "
        "secrets/control-plane-admin.token, as written by kefu up)",
    )
    add_client_tls_arguments(p)
    p.add_argument(
        "--refresh", type=float, default=5.0, help="seconds between refreshes (default 5)"
    )
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds per control-plane call (default 5)"
    )
    p.set_defaults(handler=cmd_tui)
