"""The product's small PKI: certificate policy and issuing, pure (no files, no sockets).

A private CA signs one certificate per component: the control plane, each node, each gateway,
the NATS servers, and operators' clients. Keys are ECDSA P-256 (fast handshakes, accepted by
grpcio, Go's nats-server and Python's ssl). Every leaf carries the subject alternative names
(SANs) of the addresses it serves and the extended key usages its role needs: servers
``serverAuth`` (and ``clientAuth``, because a node or the control plane is also a NATS client),
clients ``clientAuth`` only. The subject is ``CN=<name>`` alone, so NATS can map a client
certificate to a user named ``CN=<name>`` (``verify_and_map``).

Files, permissions and reloading are :mod:`kefu.certstore`'s; this module only decides and
builds, so it unit-tests without a server.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertInfo",
    "CertPolicy",
    "Issued",
    "Role",
    "cert_problem",
    "describe",
    "issue",
    "key_matches",
    "nats_user_name",
    "needs_renewal",
    "new_ca",
    "parse_sans",
]


class Role(enum.StrEnum):
    """What a certificate is for: decides its key usages."""

    CONTROL_PLANE = "control-plane"
    NODE = "node"
    GATEWAY = "gateway"
    NATS = "nats"
    CLIENT = "client"

    @property
    def serves(self) -> bool:
        return self is not Role.CLIENT


@dataclass(frozen=True, kw_only=True)
class CertPolicy:
    """Lifetimes. Leaves are short-lived and renewed ``renew_before`` ahead of expiry."""

    ca_days: int = 3650
    leaf_days: int = 90
    renew_before: timedelta = timedelta(days=30)
    #: Backdating absorbs clock skew between hosts.
    backdate: timedelta = timedelta(minutes=5)


@dataclass(frozen=True, kw_only=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True, kw_only=True)
class CertInfo:
    subject: str
    issuer: str
    serial: int
    not_before: datetime
    not_after: datetime
    sans: tuple[str, ...]
    is_ca: bool
    fingerprint_sha256: str


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; a leaf signs handshakes and agrees keys (ECDHE)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def parse_sans(values: Sequence[str]) -> list[x509.GeneralName]:
    """``127.0.0.1``, ``::1`` → IP SANs; anything else a DNS name (``node-1.eu.example``)."""
    out: list[x509.GeneralName] = []
    for raw in values:
        value = raw.strip()
        if not value:
            continue
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            if any(c.isspace() for c in value) or "/" in value:
                raise ValueError(f"not a host name or IP address: {value!r}") from None
            out.append(x509.DNSName(value.lower()))
    return out


def new_ca(name: str, *, now: datetime, policy: CertPolicy = CertPolicy()) -> Issued:
    """A self-signed CA that may sign leaves only (path length 0)."""
    key = _key()
    subject = _name(name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - policy.backdate)
        .not_valid_after(now + timedelta(days=policy.ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _usage(ca=True),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key))


def issue(
    *,
    ca: Issued,
    name: str,
    role: Role,
    sans: Sequence[str] = (),
    now: datetime,
    days: int | None = None,
    policy: CertPolicy = CertPolicy(),
) -> Issued:
    """A leaf certificate for ``name`` signed by ``ca``. ``days`` overrides the policy's
    lifetime; a negative ``not_after`` (``days=-1``) makes an already expired one (tests)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an ECDSA key")
    key = _key()
    lifetime = timedelta(days=policy.leaf_days if days is None else days)
    start = now - policy.backdate
    if lifetime <= timedelta(0):  # an expired certificate: valid for a moment in the past
        start, end = now + lifetime - timedelta(days=1), now + lifetime
    else:
        end = min(now + lifetime, ca_cert.not_valid_after_utc)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role.serves:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _usage(ca=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    names = parse_sans(sans)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key))


def describe(cert_pem: bytes) -> CertInfo:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(str(v) for v in san.get_values_for_type(x509.DNSName)) + tuple(
            str(v) for v in san.get_values_for_type(x509.IPAddress)
        )
    except x509.ExtensionNotFound:
        sans = ()
    try:
        is_ca = bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sans=sans,
        is_ca=is_ca,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def cert_problem(info: CertInfo, *, now: datetime) -> str | None:
    """Why a certificate cannot be used now (bilingual, names the dates), or None."""
    if now < info.not_before:
        return (
            f"certificate {info.subject} is not valid before {info.not_before:%Y-%m-%d %H:%M} UTC"
            f" (check the clock) / 证书尚未生效"
        )
    if now >= info.not_after:
        return (
            f"certificate {info.subject} expired on {info.not_after:%Y-%m-%d %H:%M} UTC; "
            f"renew it with `kefu certs issue` / 证书已于 {info.not_after:%Y-%m-%d} 过期，请续签"
        )
    return None


def needs_renewal(
    info: CertInfo, *, now: datetime, sans: Sequence[str] = (), policy: CertPolicy = CertPolicy()
) -> bool:
    """Expired, expiring within ``renew_before`` (or half its lifetime when shorter), or
    missing a wanted SAN."""
    lifetime = info.not_after - info.not_before
    window = min(policy.renew_before, lifetime / 2)
    if now >= info.not_after - window or now < info.not_before:
        return True
    wanted = {str(v.value) for v in parse_sans(sans)}
    return not wanted <= set(info.sans)


def key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return bool(cert.public_key().public_bytes(enc, pub) == key.public_key().public_bytes(enc, pub))


def nats_user_name(name: str) -> str:
    """The NATS user a client certificate maps to under ``verify_and_map`` (its subject DN)."""
    return f"CN={name}"


def utc_now() -> datetime:
    return datetime.now(UTC)
