"""``kefu-node install`` / ``uninstall``: put a node on a Linux host as a system service.

What install does, each step printed (and idempotent: running it again upgrades the binary and
keeps the operator's config):

1. a system user and group (``kefu``, no login shell, home ``/var/lib/kefu``);
2. the program: a one-directory build (the shipped archive) is copied to
   ``/opt/kefu/kefu-node-<version>-<commit>/`` and ``/usr/local/bin/kefu-node`` becomes a
   symlink to it, switched atomically (a running node keeps its files; earlier versions stay
   for rollback); a one-file build is copied to ``/usr/local/bin/kefu-node`` (beside, then
   renamed);
3. ``/etc/kefu`` (root:kefu 0750), ``/etc/kefu/node.yaml`` (root:kefu **0640**, the safe
   defaults of :data:`~kefu.config.node.DEFAULT_NODE_YAML`; an existing file is kept) and
   ``/etc/kefu/tenants/``;
4. ``/var/lib/kefu`` (kefu:kefu 0750) for sessions, models and keys;
5. the systemd unit ``/etc/systemd/system/kefu-node.service`` (:func:`systemd_unit`:
   ``Restart=on-failure``, ``NoNewPrivileges``, ``ProtectSystem=strict``, ``ReadWritePaths``
   = the data directory only, ``PrivateTmp``, ...); with systemd running, ``daemon-reload``
   and ``enable --now``; without systemd, how to run the node under another supervisor.

``--root DIR`` installs below ``DIR`` instead of ``/`` (packaging tests use a temporary root):
the user is then created with ``useradd --prefix DIR`` when ``DIR/etc/passwd`` exists, and
systemctl is never called. Uninstall removes the unit and the program and keeps config and data;
``--purge`` also removes ``/etc/kefu``, ``/var/lib/kefu`` and the user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kefu.errors import PermanentError

__all__ = [
    "UNIT_NAME",
    "InstallError",
    "InstallOptions",
    "check_tls_options",
    "install",
    "node_yaml",
    "supervisor_help",
    "systemd_unit",
    "uninstall",
]

UNIT_NAME = "kefu-node.service"


class InstallError(PermanentError):
    exit_code = 77  # EX_NOPERM: the usual cause is not being root


@dataclass(frozen=True, kw_only=True)
class InstallOptions:
    root: Path = Path("/")
    user: str = "kefu"
    #: The executable to install; default: the running one when frozen (PyInstaller).
    binary: Path | None = None
    bin_path: str = "/usr/local/bin/kefu-node"
    #: Where one-directory builds are unpacked, one subdirectory per version.
    opt_dir: str = "/opt/kefu"
    config_dir: str = "/etc/kefu"
    data_dir: str = "/var/lib/kefu"
    unit_dir: str = "/etc/systemd/system"
    #: Enable and start the unit when systemd runs.
    start: bool = True
    #: Call systemctl when systemd runs (False: only write the unit and print help).
    systemd: bool = True
    force_config: bool = False
    #: Seconds in-flight turns get on stop (node.yaml limits.drain_timeout_s default).
    drain_timeout_s: float = 10.0
    #: The gRPC address written into a new node.yaml (a non-loopback one needs TLS).
    listen: str = "127.0.0.1:7400"
    #: TLS for the gRPC API: copied to ``/etc/kefu/pki/`` and enabled in a new node.yaml.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    #: Mutual TLS: gateways must present a certificate of ``tls_ca``.
    client_auth: bool = False

    def at(self, path: str) -> Path:
        """``path`` (absolute, on the target system) below the install root."""
        return self.root / path.lstrip("/")

    @property
    def live(self) -> bool:
        """Installing onto the running system (not into a directory tree)."""
        return self.root.resolve() == Path("/")


# ------------------------------------------------------------------------------- texts


def systemd_unit(opts: InstallOptions) -> str:
    """The unit file: restart on failure, least privilege, writes only to the data dir."""
    # TimeoutStopSec must outlast the drain (turns finish) plus closing the stores.
    stop_timeout = int(opts.drain_timeout_s) + 20
    return f"""\
# Kefu regional node / Kefu 客服节点 — installed by `kefu-node install`.
# Edit /etc/kefu/node.yaml, then: systemctl restart kefu-node
[Unit]
Description=Kefu regional node (customer-service agents, gRPC)
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
User={opts.user}
Group={opts.user}
ExecStartPre={opts.bin_path} check-config {opts.config_dir}/node.yaml
ExecStart={opts.bin_path} run --config {opts.config_dir}/node.yaml
# SIGTERM drains: stop accepting, finish in-flight turns, flush SQLite; exit 0 (clean) or
# 3 (drain deadline expired). See `kefu-node --help` for every exit code.
KillSignal=SIGTERM
TimeoutStopSec={stop_timeout}
Restart=on-failure
RestartSec=2
# Invalid config (78) or permissions (77): restarting cannot help.
RestartPreventExitStatus=78 77
UMask=0027
LimitNOFILE=65536

# Hardening
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={opts.data_dir}
PrivateTmp=yes
ProtectHome=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RemoveIPC=yes
PrivateMounts=yes
ProtectProc=invisible
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
# Not set on purpose: PrivateDevices (GPU nodes need /dev/nvidia*), MemoryDenyWriteExecute
# (the one-file executable unpacks and maps its libraries at start).

[Install]
WantedBy=multi-user.target
"""


def supervisor_help(opts: InstallOptions) -> str:
    """How to run the node without systemd (runit, s6, supervisord, OpenRC, a container)."""
    cmd = f"{opts.bin_path} run --config {opts.config_dir}/node.yaml"
    return f"""\
systemd is not running here: the unit was written but not enabled. / 未检测到 systemd。
Run the node under your supervisor as user '{opts.user}', in the foreground:

    {cmd}

  supervisord:  [program:kefu-node]
                command={cmd}
                user={opts.user}
                stopsignal=TERM
                stopwaitsecs={int(opts.drain_timeout_s) + 20}
                autorestart=unexpected
                exitcodes=0,3
  runit:        exec chpst -u {opts.user} {cmd}
  plain shell:  su -s /bin/sh {opts.user} -c '{cmd}'

Stop it with SIGTERM and allow {int(opts.drain_timeout_s) + 20} s: it stops accepting,
finishes in-flight turns and flushes SQLite. Exit 0 = clean stop, 3 = drain deadline expired,
77 = permissions, 78 = invalid config (do not restart on 77/78); `kefu-node --help` lists all.
Logs are JSON lines on stderr."""


# ------------------------------------------------------------------------------- helpers


def _say(msg: str) -> None:
    print(f"  {msg}")


def _is_root() -> bool:
    return os.geteuid() == 0


def _systemd_running(opts: InstallOptions) -> bool:
    return opts.live and opts.systemd and Path("/run/systemd/system").is_dir()


def _lookup(opts: InstallOptions, db: str, name: str) -> int | None:
    """uid / gid of ``name`` from ``<root>/etc/passwd`` or ``group`` (never the live system
    unless root is /)."""
    try:
        lines = opts.at(f"/etc/{db}").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":")
        if len(parts) > 2 and parts[0] == name and parts[2].isdigit():
            return int(parts[2])
    return None


def _run(cmd: list[str]) -> None:
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as exc:
        raise InstallError(f"{cmd[0]} not found: {exc}") from exc
    except subprocess.CalledProcessError as exc:
        raise InstallError(f"{' '.join(cmd)} failed: {exc.stderr.strip() or exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise InstallError(f"{' '.join(cmd)} timed out") from exc


def _prefix(opts: InstallOptions) -> list[str]:
    return [] if opts.live else ["--prefix", str(opts.root.resolve())]


def _ensure_user(opts: InstallOptions) -> tuple[int | None, int | None]:
    uid, gid = _lookup(opts, "passwd", opts.user), _lookup(opts, "group", opts.user)
    if uid is not None:
        _say(f"user {opts.user}: exists (uid {uid})")
        return uid, gid
    if not opts.at("/etc/passwd").is_file():
        _say(f"user {opts.user}: skipped ({opts.at('/etc/passwd')} does not exist)")
        return None, None
    if not _is_root():
        _say(f"user {opts.user}: skipped (not root)")
        return None, None
    _run(
        ["useradd", *_prefix(opts), "--system", "--user-group", "--home-dir", opts.data_dir,
         "--no-create-home", "--shell", "/usr/sbin/nologin", "--comment", "Kefu node",
         opts.user]
    )  # fmt: skip
    uid, gid = _lookup(opts, "passwd", opts.user), _lookup(opts, "group", opts.user)
    _say(f"user {opts.user}: created (system user, uid {uid}, no login shell)")
    return uid, gid


def _chown(path: Path, uid: int | None, gid: int | None) -> None:
    if _is_root() and (uid is not None or gid is not None):
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)


def _write(path: Path, text: str, mode: int) -> None:
    """Write atomically with ``mode`` from the start (no window where it is world-readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)  # umask may have narrowed it
    os.replace(tmp, path)


def _source_binary(opts: InstallOptions) -> Path:
    if opts.binary is not None:
        src = opts.binary
    elif getattr(sys, "frozen", False):
        src = Path(sys.executable)
    else:
        raise InstallError(
            "not running from the built kefu-node executable: pass --binary PATH "
            "(build it with packaging/build.sh)"
        )
    if not src.is_file():
        raise InstallError(f"{src}: no such executable")
    return src


def _release_name() -> str:
    from kefu.node.build_info import build_info

    info = build_info()
    commit = str(info.get("commit") or "unknown").split()[0].removesuffix("-dirty")
    tag = f"-{commit[:12]}" if commit != "unknown" else ""
    return f"kefu-node-{info['version']}{tag}"


def _install_program(opts: InstallOptions, src: Path) -> None:
    dest = opts.at(opts.bin_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if (src.parent / "_internal").is_dir():  # one-directory build: the whole tree
        release = opts.at(opts.opt_dir) / _release_name()
        target_on_host = Path(opts.opt_dir) / release.name / src.name
        if src.resolve() != (release / src.name).resolve():
            staging = release.with_name(f".{release.name}.tmp")
            if staging.exists():
                shutil.rmtree(staging)
            shutil.copytree(src.parent, staging, symlinks=True)
            if release.exists():
                old = release.with_name(f".{release.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                release.rename(old)
                staging.rename(release)
                shutil.rmtree(old, ignore_errors=True)
            else:
                staging.rename(release)
        _say(f"program: {release}")
        link_tmp = dest.with_name(f".{dest.name}.tmp")
        if link_tmp.is_symlink() or link_tmp.exists():
            link_tmp.unlink()
        link_tmp.symlink_to(target_on_host)
        os.replace(link_tmp, dest)  # atomic switch to the new version
        _say(f"binary:  {dest} -> {target_on_host}")
        others = sorted(
            p.name for p in release.parent.iterdir() if p != release and not p.name.startswith(".")
        )
        if others:
            _say(f"kept earlier versions for rollback: {', '.join(others)}")
        return
    if src.resolve() != dest.resolve():
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    _say(f"binary:  {dest} (0755)")


# ------------------------------------------------------------------------------- TLS

#: node.yaml's commented-out tls: block, as DEFAULT_NODE_YAML writes it.
_TLS_COMMENTED = """#tls:
#  cert_file: pki/node.crt
#  key_file: pki/node.key      # 0600, readable by the kefu user
#  ca_file: pki/ca.crt
#  client_auth: false"""


def _loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "::1", "localhost")


def check_tls_options(opts: InstallOptions) -> bool:
    """Whether TLS is asked for; refuses half a pair and a network listener without TLS."""
    given = [p for p in (opts.tls_cert, opts.tls_key, opts.tls_ca) if p is not None]
    if given and len(given) != 3:
        raise PermanentError(
            "TLS needs all three of --tls-cert, --tls-key and --tls-ca / "
            "启用 TLS 需同时提供 --tls-cert、--tls-key 与 --tls-ca"
        )
    for p in given:
        if not p.is_file():
            raise PermanentError(f"{p}: no such file / 文件不存在")
    if not given and not _loopback(opts.listen):
        raise PermanentError(
            f"--listen {opts.listen} faces the network: give --tls-cert, --tls-key and "
            "--tls-ca (`kefu certs issue <node-id> --role node --san <address>`) / "
            "对外监听必须启用 TLS"
        )
    if opts.client_auth and not given:
        raise PermanentError("--client-auth needs TLS (--tls-cert ...) / 双向 TLS 需先启用 TLS")
    return bool(given)


def _install_tls(opts: InstallOptions, etc: Path, gid: int | None) -> None:
    """Copy the pair and the CA to ``/etc/kefu/pki`` (key 0640 root:kefu: the node reads it)."""
    assert opts.tls_cert and opts.tls_key and opts.tls_ca
    pki = etc / "pki"
    pki.mkdir(exist_ok=True)
    os.chmod(pki, 0o750)
    _chown(pki, 0, gid)
    for src, name, mode in (
        (opts.tls_cert, "node.crt", 0o644),
        (opts.tls_key, "node.key", 0o640),
        (opts.tls_ca, "ca.crt", 0o644),
    ):
        _write_bytes(pki / name, src.read_bytes(), mode)
        _chown(pki / name, 0, gid)
    _say(f"tls:    {pki}/node.crt, node.key (0640, root:{opts.user}), ca.crt")


def _write_bytes(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def node_yaml(opts: InstallOptions, *, tls: bool) -> str:
    """The node.yaml a fresh install writes: the defaults, the data directory, ``listen``
    and, with TLS, the tls: block enabled (encryption at rest is on in the defaults)."""
    from kefu.config.node import DEFAULT_NODE_YAML

    text = DEFAULT_NODE_YAML.replace("/var/lib/kefu", opts.data_dir)
    text = text.replace("listen: 127.0.0.1:7400", f"listen: {opts.listen}", 1)
    if tls:
        enabled = (
            "tls:\n  cert_file: pki/node.crt\n  key_file: pki/node.key\n  ca_file: pki/ca.crt\n"
            f"  client_auth: {'true' if opts.client_auth else 'false'}"
        )
        assert _TLS_COMMENTED in text
        text = text.replace(_TLS_COMMENTED, enabled, 1)
    return text


# ------------------------------------------------------------------------------- install


def install(opts: InstallOptions) -> int:
    if opts.live and not _is_root():
        raise InstallError("installing onto this system needs root: sudo kefu-node install")
    tls = check_tls_options(opts)
    src = _source_binary(opts)
    print(f"Installing kefu-node into {opts.root} / 安装 kefu-node")
    uid, gid = _ensure_user(opts)

    _install_program(opts, src)

    etc = opts.at(opts.config_dir)
    etc.mkdir(parents=True, exist_ok=True)
    os.chmod(etc, 0o750)
    _chown(etc, 0, gid)
    (etc / "tenants").mkdir(exist_ok=True)
    os.chmod(etc / "tenants", 0o750)
    _chown(etc / "tenants", 0, gid)
    if tls:
        _install_tls(opts, etc, gid)
    config = etc / "node.yaml"
    if config.exists() and not opts.force_config:
        _say(f"config: {config} kept (exists; --force-config replaces it)")
        if tls:
            _say("        enable TLS in it: tls: {cert_file: pki/node.crt, key_file: "
                 "pki/node.key, ca_file: pki/ca.crt}")  # fmt: skip
    else:
        _write(config, node_yaml(opts, tls=tls), 0o640)
        _chown(config, 0, gid)
        where = f"TLS on {opts.listen}" if tls else "loopback only, plaintext"
        _say(
            f"config: {config} (0640, root:{opts.user}; {where}, encryption at rest on, "
            "demo tenant)"
        )

    data = opts.at(opts.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o750)
    _chown(data, uid, gid)
    _say(f"data:   {data} (0750, {opts.user}:{opts.user})")

    unit_dir = opts.at(opts.unit_dir)
    unit_dir.mkdir(parents=True, exist_ok=True)
    _write(unit_dir / UNIT_NAME, systemd_unit(opts), 0o644)
    _say(f"unit:   {unit_dir / UNIT_NAME}")

    if _systemd_running(opts):
        _run(["systemctl", "daemon-reload"])
        if opts.start:
            _run(["systemctl", "enable", UNIT_NAME])
            # restart, not start: an upgrade must replace the running (old) version; the old
            # one drains first (SIGTERM).
            _run(["systemctl", "restart", UNIT_NAME])
            _say("systemd: enabled and (re)started (systemctl status kefu-node)")
        else:
            _say("systemd: unit loaded; start it with: systemctl enable --now kefu-node")
    else:
        print(supervisor_help(opts))
    print(f"Done. Check the config with: {opts.bin_path} check-config {opts.config_dir}/node.yaml")
    return 0


def uninstall(opts: InstallOptions, *, purge: bool = False) -> int:
    if opts.live and not _is_root():
        raise InstallError("uninstalling from this system needs root: sudo kefu-node uninstall")
    print(f"Removing kefu-node from {opts.root}{' (purge)' if purge else ''} / 卸载 kefu-node")
    unit = opts.at(opts.unit_dir) / UNIT_NAME
    if _systemd_running(opts) and unit.exists():
        # A stopped or never-started unit makes disable/stop fail; that is fine here.
        subprocess.run(
            ["systemctl", "disable", "--now", UNIT_NAME], capture_output=True, timeout=120
        )
    for path in (unit, opts.at(opts.bin_path)):
        if path.exists() or path.is_symlink():
            path.unlink()
            _say(f"removed {path}")
    if opts.at(opts.opt_dir).is_dir():
        shutil.rmtree(opts.at(opts.opt_dir))
        _say(f"removed {opts.at(opts.opt_dir)}")
    if _systemd_running(opts):
        _run(["systemctl", "daemon-reload"])
    etc, data = opts.at(opts.config_dir), opts.at(opts.data_dir)
    if not purge:
        _say(f"kept {etc} and {data} (sessions, models, keys); --purge deletes them")
        return 0
    for path in (etc, data):
        if path.exists():
            shutil.rmtree(path)
            _say(f"deleted {path}")
    if _lookup(opts, "passwd", opts.user) is not None:
        if _is_root():
            _run(["userdel", *_prefix(opts), opts.user])
            _say(f"user {opts.user}: deleted")
        else:
            _say(f"user {opts.user}: kept (not root)")
    return 0
