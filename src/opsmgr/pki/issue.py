"""Signing leaf certificates for a role; nothing is signed without an explicit `Approval`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from opsmgr.pki.ca import CLOCK_SKEW, CertificateAuthority
from opsmgr.pki.errors import CertificateError, Check
from opsmgr.pki.keys import DEFAULT_KEY_ALGORITHM, KeyAlgorithm, PrivateKey, check_public_key, generate_private_key
from opsmgr.pki.names import Identity
from opsmgr.pki.pem import certificate_pem, private_key_pem
from opsmgr.pki.profiles import PROFILES, dns_names_for
from opsmgr.pki.verify import check_valid_at

# VM agents may sit powered off for months; renewal at 2/3 still leaves four months of slack.
DEFAULT_LEAF_VALIDITY = timedelta(days=365)
_SIGNATURE_ONLY = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                                encipher_only=False, decipher_only=False)


@dataclass(frozen=True)
class Approval:
    """The decision that `identity` may have a certificate: an approved Agent, a policy, or a renewal check."""

    identity: Identity
    approved_by: str
    approved_at: datetime


@dataclass(frozen=True)
class IssuedIdentity:
    """A key the operator generated and its certificate, for identities whose key never leaves the cluster."""

    key: PrivateKey
    certificate: x509.Certificate

    def key_pem(self) -> bytes:
        return private_key_pem(self.key)

    def certificate_pem(self) -> bytes:
        return certificate_pem(self.certificate)


def issue_certificate(ca: CertificateAuthority, approval: Approval, public_key: object, now: datetime, *,
                      dns_names: Iterable[str] = (),
                      validity: timedelta = DEFAULT_LEAF_VALIDITY) -> x509.Certificate:
    """Sign a leaf for the approved identity with its role's profile; it never outlives the CA."""
    identity = approval.identity
    key = check_public_key(public_key, f"{identity.name} public key")
    check_valid_at(ca.certificate, now, "management-group CA")
    profile = PROFILES[identity.role]
    not_after = min(now + validity, ca.certificate.not_valid_after_utc)
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names_for(identity, dns_names)]
    names.append(x509.UniformResourceIdentifier(identity.uri))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, identity.name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_SIGNATURE_ONLY, critical=True)
        .add_extension(x509.ExtendedKeyUsage(sorted(profile.extended_key_usages, key=lambda o: o.dotted_string)),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    return ca.sign(builder)


def issue_with_new_key(ca: CertificateAuthority, approval: Approval, now: datetime, *,
                       dns_names: Iterable[str] = (), algorithm: KeyAlgorithm = DEFAULT_KEY_ALGORITHM,
                       validity: timedelta = DEFAULT_LEAF_VALIDITY) -> IssuedIdentity:
    key = generate_private_key(algorithm)
    certificate = issue_certificate(ca, approval, key.public_key(), now, dns_names=dns_names, validity=validity)
    return IssuedIdentity(key, certificate)


def check_approval(approval: Approval, identity: Identity) -> None:
    if approval.identity != identity:
        raise CertificateError(Check.NOT_APPROVED, "approval identity", approval.identity.uri,
                               f"does not approve {identity.uri}", "approve the Agent or Gateway that sent the request")
