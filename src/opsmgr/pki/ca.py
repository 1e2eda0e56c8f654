"""The management-group CA: create, renew with the same key, import and validate, trust bundles and key rollover."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.x509.oid import NameOID

from opsmgr.pki.errors import CertificateError, Check
from opsmgr.pki.keys import (
    DEFAULT_KEY_ALGORITHM,
    KeyAlgorithm,
    PrivateKey,
    check_public_key,
    generate_private_key,
    same_public_key,
    signature_hash,
)
from opsmgr.pki.pem import certificate_pem, load_certificate, load_certificates, load_private_key, private_key_pem
from opsmgr.pki.verify import can_sign_certificates, check_valid_at, is_ca

DEFAULT_CA_VALIDITY = timedelta(days=3650)
# Peers' clocks drift: a certificate valid only from "now" would fail on a peer a minute behind.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: PrivateKey

    def certificate_pem(self) -> bytes:
        return certificate_pem(self.certificate)

    def key_pem(self) -> bytes:
        return private_key_pem(self.key)

    def sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self.key, signature_hash(self.key))


def create_ca(group: str, now: datetime, *, validity: timedelta = DEFAULT_CA_VALIDITY,
              algorithm: KeyAlgorithm = DEFAULT_KEY_ALGORITHM) -> CertificateAuthority:
    """A new self-signed CA for `group`; the name carries the key's id, so old and new keys never share a name."""
    key = generate_private_key(algorithm)
    key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest[:8].hex()
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "opsmgr"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, group[:64]),
        x509.NameAttribute(NameOID.COMMON_NAME, f"opsmgr management group CA {key_id}"),
    ])
    return _self_signed(key, subject, now, validity)


def renew_ca(ca: CertificateAuthority, now: datetime, *,
             validity: timedelta = DEFAULT_CA_VALIDITY) -> CertificateAuthority:
    """The same CA with a new validity period: same key and name, so every leaf it issued stays valid."""
    return _self_signed(ca.key, ca.certificate.subject, now, validity)


def _self_signed(key: PrivateKey, subject: x509.Name, now: datetime, validity: timedelta) -> CertificateAuthority:
    key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(key_id, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(key_id), critical=False)
    )
    return CertificateAuthority(builder.sign(key, signature_hash(key)), key)


def import_ca(certificate_pem: bytes, key_pem: bytes, now: datetime, password: bytes | None = None,
              field: str = "spec.certificates.ca") -> CertificateAuthority:
    """Validate a CA the user supplies: a CA, allowed to sign, key matches, valid now. Never replaced silently."""
    certificate = load_certificate(certificate_pem, f"{field} certificate")
    key = load_private_key(key_pem, password, f"{field} key")
    check_public_key(certificate.public_key(), f"{field} certificate public key")
    if not is_ca(certificate):
        raise CertificateError(Check.NOT_A_CA, f"{field} certificate basicConstraints", "CA:FALSE or absent",
                               "is not a CA certificate", "supply a CA certificate (basicConstraints CA:TRUE)")
    if not can_sign_certificates(certificate):
        raise CertificateError(Check.CA_CANNOT_SIGN, f"{field} certificate keyUsage", "no keyCertSign",
                               "may not sign certificates", "supply a CA certificate whose keyUsage has keyCertSign")
    if not same_public_key(certificate.public_key(), key.public_key()):
        raise CertificateError(Check.KEY_MISMATCH, f"{field} key", "a different key pair",
                               "does not belong to the CA certificate", "supply the CA certificate's own private key")
    check_valid_at(certificate, now, f"{field} certificate")
    return CertificateAuthority(certificate, key)


@dataclass(frozen=True)
class TrustBundle:
    """The CA certificates peers trust; carries old and new CA while a CA key changes."""

    certificates: tuple[x509.Certificate, ...]

    @classmethod
    def of(cls, *cas: CertificateAuthority | x509.Certificate) -> TrustBundle:
        bundle = cls(())
        for ca in cas:
            bundle = bundle.with_ca(ca)
        return bundle

    @classmethod
    def from_pem(cls, data: bytes, field: str = "ca.crt") -> TrustBundle:
        return cls.of(*load_certificates(data, field))

    def with_ca(self, ca: CertificateAuthority | x509.Certificate) -> TrustBundle:
        """Add a CA, replacing a certificate of the same key (a same-key renewal does not grow the bundle)."""
        certificate = ca.certificate if isinstance(ca, CertificateAuthority) else ca
        kept = tuple(c for c in self.certificates if not _same_ca(c, certificate))
        return TrustBundle((*kept, certificate))

    def without(self, ca: CertificateAuthority | x509.Certificate) -> TrustBundle:
        certificate = ca.certificate if isinstance(ca, CertificateAuthority) else ca
        return TrustBundle(tuple(c for c in self.certificates if not _same_ca(c, certificate)))

    def trusts(self, ca: CertificateAuthority | x509.Certificate) -> bool:
        certificate = ca.certificate if isinstance(ca, CertificateAuthority) else ca
        return any(_same_ca(c, certificate) for c in self.certificates)

    def pem(self) -> bytes:
        return certificate_pem(self.certificates)


def _same_ca(left: x509.Certificate, right: x509.Certificate) -> bool:
    return left.subject == right.subject and same_public_key(left.public_key(), right.public_key())


class RolloverPhase(StrEnum):
    """Trust-then-roll: peers trust the new CA before any leaf depends on it, and the old one until none does."""

    TRUST_NEW = "TrustNew"
    ISSUE_WITH_NEW = "IssueWithNew"
    COMPLETE = "Complete"


@dataclass(frozen=True)
class CaKeyRollover:
    """A CA key change in progress: which CA signs and which CAs peers must trust, phase by phase."""

    old: CertificateAuthority
    new: CertificateAuthority
    phase: RolloverPhase = RolloverPhase.TRUST_NEW

    @property
    def signing_ca(self) -> CertificateAuthority:
        return self.old if self.phase is RolloverPhase.TRUST_NEW else self.new

    @property
    def trust_bundle(self) -> TrustBundle:
        if self.phase is RolloverPhase.COMPLETE:
            return TrustBundle.of(self.new)
        return TrustBundle.of(self.old, self.new)

    def advance(self, *, every_peer_trusts_new: bool, no_leaf_from_old: bool) -> CaKeyRollover:
        """Move to the next phase once the fact it waits for holds; otherwise stay (safe to call every reconcile)."""
        if self.phase is RolloverPhase.TRUST_NEW and every_peer_trusts_new:
            return replace(self, phase=RolloverPhase.ISSUE_WITH_NEW)
        if self.phase is RolloverPhase.ISSUE_WITH_NEW and no_leaf_from_old:
            return replace(self, phase=RolloverPhase.COMPLETE)
        return self


def start_key_rollover(old: CertificateAuthority, group: str, now: datetime, *,
                       validity: timedelta = DEFAULT_CA_VALIDITY,
                       algorithm: KeyAlgorithm = DEFAULT_KEY_ALGORITHM) -> CaKeyRollover:
    return CaKeyRollover(old, create_ca(group, now, validity=validity, algorithm=algorithm))
