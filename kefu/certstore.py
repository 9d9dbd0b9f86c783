"""Certificates on disk: the CA and the leaves of a deployment, keys 0600, atomic renewal.

Layout of a PKI directory (``kefu up``: ``<data-dir>/pki``; ``kefu certs --dir``)::

    ca.crt  ca.key            the private CA (the key stays here; 0600)
    <name>.crt  <name>.key    one pair per component: control-plane, nats, local-1, ...

A renewal writes the new pair next to the old one and renames it into place (key first, then
certificate), so a reader sees either the old or the new pair; the servers re-read a pair when
its modification time changes (:mod:`kefu.tls`), which is how certificates are renewed without
a restart. An enterprise CA works the same way: put its ``ca.crt`` and the pairs it issued
here (or point the ``tls:`` options at them) and never run ``init-ca``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from kefu.errors import ConfigError, PermanentError
from kefu.pki import (
    CertInfo,
    CertPolicy,
    Issued,
    Role,
    cert_problem,
    describe,
    issue,
    key_matches,
    needs_renewal,
    new_ca,
    utc_now,
)

__all__ = [
    "CA_NAME",
    "CertStore",
    "TlsFiles",
    "check_pair",
    "find_ca",
    "pki_dir",
    "write_private",
]

CA_NAME = "Kefu private CA"


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """Where one component's TLS material is: the CA to verify peers with, and its own pair
    (absent for a client that only verifies the server)."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"ca_file": str(self.ca_file)}
        if self.cert_file and self.key_file:
            out |= {"cert_file": str(self.cert_file), "key_file": str(self.key_file)}
        return out


def pki_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "pki"


def write_private(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to a temporary file (``mode``) and rename it over ``path``: readers see
    the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path} not found / 未找到 {path}") from exc
    except OSError as exc:
        raise ConfigError(f"{what} {path} unreadable: {exc} / 无法读取 {path}") from exc


def check_pair(files: TlsFiles, *, now: datetime | None = None) -> CertInfo | None:
    """Refuse, with a clear message, material a TLS stack would reject later with an opaque
    handshake error: a missing file, an expired or not-yet-valid certificate, a key of
    another certificate. Returns the certificate's description (None without a pair)."""
    _read(files.ca_file, "CA certificate")
    if files.cert_file is None or files.key_file is None:
        return None
    cert = _read(files.cert_file, "certificate")
    key = _read(files.key_file, "private key")
    try:
        info = describe(cert)
        matches = key_matches(cert, key)
    except ValueError as exc:
        raise ConfigError(f"{files.cert_file}: not a PEM certificate and key ({exc})") from exc
    if not matches:
        raise ConfigError(
            f"{files.key_file} is not the key of {files.cert_file} / 私钥与证书不匹配"
        )
    problem = cert_problem(info, now=now or utc_now())
    if problem:
        raise ConfigError(f"{files.cert_file}: {problem}")
    return info


class CertStore:
    """A PKI directory (see the module docstring)."""

    def __init__(self, root: Path, *, policy: CertPolicy | None = None):
        self.root = Path(root)
        self.policy = policy or CertPolicy()

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    def has_ca(self) -> bool:
        return self.ca_cert.exists()

    def files(self, name: str) -> TlsFiles:
        _check_name(name)
        return TlsFiles(
            ca_file=self.ca_cert,
            cert_file=self.root / f"{name}.crt",
            key_file=self.root / f"{name}.key",
        )

    def init_ca(self, *, name: str = CA_NAME, force: bool = False) -> CertInfo:
        if self.has_ca() and not force:
            raise PermanentError(
                f"{self.ca_cert} exists; a new CA would invalidate every certificate it "
                f"signed (use --force to replace it) / CA 已存在"
            )
        ca = new_ca(name, now=utc_now(), policy=self.policy)
        write_private(self.ca_key, ca.key_pem)
        write_private(self.ca_cert, ca.cert_pem, mode=0o644)
        return describe(ca.cert_pem)

    def ensure_ca(self) -> bool:
        """Create the CA when there is none; True when created."""
        if self.has_ca():
            return False
        self.init_ca()
        return True

    def _ca(self) -> Issued:
        if not self.ca_key.exists():
            raise PermanentError(
                f"{self.ca_key} not found: this directory cannot issue certificates (an "
                f"external CA's pairs are installed, not issued here) / 缺少 CA 私钥"
            )
        return Issued(
            cert_pem=_read(self.ca_cert, "CA certificate"),
            key_pem=_read(self.ca_key, "CA key"),
        )

    def issue(self, name: str, *, role: Role, sans: list[str], days: int | None = None) -> TlsFiles:
        files = self.files(name)
        leaf = issue(
            ca=self._ca(),
            name=name,
            role=role,
            sans=sans,
            now=utc_now(),
            days=days,
            policy=self.policy,
        )
        assert files.cert_file is not None and files.key_file is not None
        # Key first: a reader that sees the new certificate also finds its key. The reloaders
        # re-check that the pair matches before using it.
        write_private(files.key_file, leaf.key_pem)
        write_private(files.cert_file, leaf.cert_pem, mode=0o644)
        return files

    def ensure(
        self, name: str, *, role: Role, sans: list[str], now: datetime | None = None
    ) -> tuple[TlsFiles, bool]:
        """The pair of ``name``, issued when missing, expiring or lacking a SAN; (files,
        renewed)."""
        files = self.files(name)
        assert files.cert_file is not None and files.key_file is not None
        if files.cert_file.exists() and files.key_file.exists():
            try:
                cert = files.cert_file.read_bytes()
                ok = key_matches(cert, files.key_file.read_bytes()) and not needs_renewal(
                    describe(cert), now=now or utc_now(), sans=sans, policy=self.policy
                )
                issuer_ok = describe(cert).issuer == describe(self.ca_cert.read_bytes()).subject
            except (OSError, ValueError):
                ok = issuer_ok = False
            if ok and issuer_ok:
                return files, False
        return self.issue(name, role=role, sans=sans), True

    def show(self, name: str | None = None) -> CertInfo:
        path = self.ca_cert if name in (None, "ca") else self.files(str(name)).cert_file
        assert path is not None
        return describe(_read(path, "certificate"))


def _check_name(name: str) -> None:
    ok = name and len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name)
    if not ok or name.startswith(".") or name == "ca":
        raise ConfigError(
            f"certificate name {name!r}: use letters, digits, '-', '_', '.' (not 'ca') / "
            f"证书名称无效"
        )


def find_ca(explicit: str | Path | None, *, data_dir: Path | None = None) -> Path | None:
    """The CA a client verifies servers with: ``--ca-file``, else ``$KEFU_CA_FILE``, else the
    one ``kefu up`` made: ``<data_dir>/pki/ca.crt``, ``$KEFU_DATA_DIR/pki/ca.crt``,
    ``./kefu-data/pki/ca.crt``; None when there is none (the client then uses plaintext)."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("KEFU_CA_FILE"):
        return Path(env)
    bases = [data_dir, os.environ.get("KEFU_DATA_DIR"), "kefu-data"]
    for base in bases:
        if base:
            candidate = pki_dir(Path(base)) / "ca.crt"
            if candidate.exists():
                return candidate
    return None
