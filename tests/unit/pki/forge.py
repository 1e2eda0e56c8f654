"""Certificates opsmgr would never issue, made with cryptography directly: what the rejections are tested against."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID, ObjectIdentifier

from opsmgr.pki import Approval, CertificateAuthority, Identity, Role
from opsmgr.pki.keys import PrivateKey, generate_private_key
from opsmgr.pki.profiles import CLIENT_AUTH

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
GROUP = "contoso"
AGENT_FQDN = "web01.contoso.test"
GATEWAY_FQDN = "gw01.dmz.contoso.test"


def agent(name: str = AGENT_FQDN) -> Identity:
    return Identity.of(GROUP, Role.AGENT, name)


def gateway(name: str = GATEWAY_FQDN) -> Identity:
    return Identity.of(GROUP, Role.GATEWAY, name)


def approved(identity: Identity, now: datetime = NOW) -> Approval:
    return Approval(identity, "test", now)


@dataclass(frozen=True)
class Forged:
    key: PrivateKey
    certificate: x509.Certificate


def forge_leaf(issuer: CertificateAuthority, cn: str, *, now: datetime = NOW,
               ekus: Sequence[ObjectIdentifier] = (CLIENT_AUTH,), uris: Sequence[str] = (),
               dns_names: Sequence[str] = (), not_before: datetime | None = None, not_after: datetime | None = None,
               key: PrivateKey | None = None, ca: bool = False) -> Forged:
    """A leaf signed by `issuer` with exactly the fields given, whatever a profile would allow."""
    key = key or generate_private_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(hours=1))
        .not_valid_after(not_after or now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Forged(key, builder.sign(issuer.key, hashes.SHA256()))
