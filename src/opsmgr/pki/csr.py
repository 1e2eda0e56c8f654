"""Certificate signing requests for enrollment and renewal: built by the agent, validated and signed by the server."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

from opsmgr.pki.ca import CertificateAuthority
from opsmgr.pki.errors import CertificateError, Check
from opsmgr.pki.issue import DEFAULT_LEAF_VALIDITY, Approval, check_approval, issue_certificate
from opsmgr.pki.keys import PrivateKey, PublicKey, check_public_key, signature_hash
from opsmgr.pki.names import Identity, normalize_fqdn
from opsmgr.pki.pem import load_csr
from opsmgr.pki.profiles import EKU_NAMES, PROFILES, dns_names_for
from opsmgr.pki.verify import common_name, eku_label, extended_key_usages

_FIELD = "CSR"
_ALLOWED_EXTENSIONS = {ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.EXTENDED_KEY_USAGE,
                       ExtensionOID.KEY_USAGE, ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.SUBJECT_KEY_IDENTIFIER}


def build_csr(key: PrivateKey, fqdn: str, dns_names: Iterable[str] = ()) -> x509.CertificateSigningRequest:
    """What an agent or gateway sends to enroll or renew: its FQDN as CN and DNS name, nothing else."""
    name = normalize_fqdn(fqdn, "fqdn")
    sans = [x509.DNSName(n) for n in dict.fromkeys([name, *(normalize_fqdn(d, "dnsNames") for d in dns_names)])]
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
    )
    return builder.sign(key, signature_hash(key))


@dataclass(frozen=True)
class ValidatedCsr:
    """A request that passed `validate_csr`: only these facts reach the certificate, never the CSR's own fields."""

    identity: Identity
    public_key: PublicKey
    dns_names: tuple[str, ...]


def validate_csr(csr: x509.CertificateSigningRequest | bytes, expected: Identity, *,
                 allowed_dns_names: Iterable[str] = ()) -> ValidatedCsr:
    """Accept a CSR only for `expected`: signed by its key, strong key, CN = FQDN, nothing the role may not have."""
    request = load_csr(csr, _FIELD) if isinstance(csr, bytes) else csr
    if not request.is_signature_valid:
        raise CertificateError(Check.BAD_SIGNATURE, f"{_FIELD} signature", "invalid",
                               "was not made by the key in the request", "sign the request with its own private key")
    key = check_public_key(request.public_key(), f"{_FIELD} public key")
    cn = common_name(request)
    name = normalize_fqdn(cn or "", f"{_FIELD} subject CN")
    if name != expected.name:
        raise CertificateError(Check.CN_MISMATCH, f"{_FIELD} subject CN", repr(cn), f"is not {expected.name!r}",
                               f"request a certificate for CN={expected.name}, the FQDN this identity is registered as")
    allowed = set(dns_names_for(expected, allowed_dns_names))
    return ValidatedCsr(expected, key, _check_extensions(request, expected, allowed))


def _check_extensions(request: x509.CertificateSigningRequest, expected: Identity,
                      allowed: set[str]) -> tuple[str, ...]:
    profile = PROFILES[expected.role]
    dns_names: list[str] = []
    for ext in request.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            dns_names = [_allowed_san(name, allowed) for name in value]
        elif isinstance(value, x509.ExtendedKeyUsage):
            extra = extended_key_usages(request) - profile.extended_key_usages
            if extra:
                raise CertificateError(Check.FORBIDDEN_EKU, f"{_FIELD} extendedKeyUsage", eku_label(extra),
                                       f"is not allowed for the {expected.role.value} role",
                                       f"request only {profile.eku_names()} (or leave extendedKeyUsage out)")
        elif isinstance(value, x509.BasicConstraints) and value.ca:
            raise _forbidden_extension("basicConstraints", "CA:TRUE")
        elif isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            raise _forbidden_extension("keyUsage", "keyCertSign/cRLSign")
        elif ext.oid not in _ALLOWED_EXTENSIONS:
            raise _forbidden_extension(ext.oid.dotted_string, "present")
    return tuple(dict.fromkeys(dns_names))


def _allowed_san(name: x509.GeneralName, allowed: set[str]) -> str:
    fix = f"request only these DNS names: {', '.join(sorted(allowed))}"
    if not isinstance(name, x509.DNSName):
        raise CertificateError(Check.FORBIDDEN_SAN, f"{_FIELD} subjectAltName", f"{type(name).__name__}:{name.value}",
                               "is not a DNS name; the CA writes the role URI itself", fix)
    if name.value.lower().removesuffix(".") not in allowed:
        raise CertificateError(Check.FORBIDDEN_SAN, f"{_FIELD} subjectAltName", f"DNSName:{name.value}",
                               "is not a name this identity may use", fix)
    return name.value.lower().removesuffix(".")


def _forbidden_extension(name: str, value: str) -> CertificateError:
    return CertificateError(Check.FORBIDDEN_EXTENSION, f"{_FIELD} extension {name}", value,
                            "is not allowed in an identity request",
                            f"request only subjectAltName (DNS) and extendedKeyUsage {'/'.join(EKU_NAMES.values())}")


def sign_csr(ca: CertificateAuthority, request: ValidatedCsr, approval: Approval, now: datetime, *,
             validity: timedelta = DEFAULT_LEAF_VALIDITY) -> x509.Certificate:
    """Issue the certificate a validated request asks for, only when `approval` approves the same identity."""
    check_approval(approval, request.identity)
    return issue_certificate(ca, approval, request.public_key, now, dns_names=request.dns_names, validity=validity)
