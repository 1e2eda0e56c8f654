"""The sidecar-injection webhook's serving certificate, from a dedicated webhook CA (never a group's CA: the
webhook serves every group, and the kube-apiserver trusts whatever CA sits in the caBundle).

Pure: the handler passes the Secret's decoded data in and writes back what comes out. The CA is kept across
restarts, so the caBundle in the MutatingWebhookConfiguration stays valid while the serving leaf is renewed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from opsmgr.pki import CertificateAuthority, CertificateError, create_ca, generate_private_key, import_ca
from opsmgr.pki.pem import certificate_pem, load_certificate, private_key_pem
from opsmgr.pki.verify import subject_alt_names

CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=365)
LEAF_RENEW_BEFORE = timedelta(days=120)
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class ServingIdentity:
    ca_pem: bytes
    ca_key_pem: bytes
    certificate_pem: bytes
    key_pem: bytes
    changed: bool  # the Secret must be written

    def secret_data(self) -> dict[str, bytes]:
        return {"ca.crt": self.ca_pem, "ca.key": self.ca_key_pem, "tls.crt": self.certificate_pem,
                "tls.key": self.key_pem}


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _serving_leaf(ca: CertificateAuthority, hosts: Sequence[str], now: datetime) -> tuple[bytes, bytes]:
    key = generate_private_key()
    not_after = min(now + LEAF_VALIDITY, ca.certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
    )
    return certificate_pem(ca.sign(builder)), private_key_pem(key)


def _names(certificate: x509.Certificate) -> set[str]:
    return {str(name.value) for name in subject_alt_names(certificate)
            if isinstance(name, (x509.DNSName, x509.IPAddress))}


def serving_identity(secret: Mapping[str, bytes], hosts: Sequence[str], now: datetime) -> ServingIdentity:
    """The webhook CA and serving pair: kept when valid for `hosts` and not due, else (re)issued."""
    if not hosts:
        raise ValueError("the webhook needs at least one host name or address for its certificate")
    ca: CertificateAuthority | None = None
    if "ca.crt" in secret and "ca.key" in secret:
        try:
            ca = import_ca(secret["ca.crt"], secret["ca.key"], now, field="webhook CA Secret")
        except CertificateError:
            ca = None  # nobody else trusts this CA: a new one only changes the caBundle the operator writes
    fresh_ca = ca is None
    if ca is None:
        ca = create_ca("sidecar-injection-webhook", now, validity=CA_VALIDITY)
    held = secret.get("tls.crt")
    if not fresh_ca and held and "tls.key" in secret:
        leaf = load_certificate(held)
        current = (leaf.issuer == ca.certificate.subject and _names(leaf) == {str(_san(h).value) for h in hosts}
                   and leaf.not_valid_after_utc - LEAF_RENEW_BEFORE > now)
        if current:
            return ServingIdentity(secret["ca.crt"], secret["ca.key"], held, secret["tls.key"], changed=False)
    certificate, key = _serving_leaf(ca, hosts, now)
    return ServingIdentity(ca.certificate_pem(), ca.key_pem(), certificate, key, changed=True)
