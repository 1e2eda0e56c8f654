"""Checks on a certificate: validity, chain, EKUs, role and name, and `authorize_peer` for streams on 5723."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtensionOID, NameOID, ObjectIdentifier

from opsmgr.pki.errors import CertificateError, Check
from opsmgr.pki.names import ROLE_URI_SCHEME, Identity, Role, normalize_fqdn
from opsmgr.pki.pem import load_certificate
from opsmgr.pki.profiles import CLIENT_AUTH, EKU_NAMES, PROFILES
from opsmgr.pki.revocation import RevocationSet

_MAX_CHAIN = 4  # leaf, at most two intermediates, anchor: deeper chains are a misconfiguration, not a PKI


def check_valid_at(certificate: x509.Certificate, now: datetime, field: str = "certificate") -> None:
    """Raise when `now` lies outside the certificate's validity period."""
    if now < certificate.not_valid_before_utc:
        raise CertificateError(Check.NOT_YET_VALID, f"{field} notBefore",
                               certificate.not_valid_before_utc.isoformat(), f"is after now ({now.isoformat()})",
                               "check this computer's clock, or wait until the certificate becomes valid")
    if now > certificate.not_valid_after_utc:
        raise CertificateError(Check.EXPIRED, f"{field} notAfter", certificate.not_valid_after_utc.isoformat(),
                               f"is before now ({now.isoformat()})", "renew or re-issue the certificate")


def common_name(certificate: x509.Certificate | x509.CertificateSigningRequest) -> str | None:
    values = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if len(values) == 1 else None


def extension(certificate: x509.Certificate | x509.CertificateSigningRequest,
              oid: ObjectIdentifier) -> x509.ExtensionType | None:
    try:
        return certificate.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def is_ca(certificate: x509.Certificate) -> bool:
    constraints = extension(certificate, ExtensionOID.BASIC_CONSTRAINTS)
    return isinstance(constraints, x509.BasicConstraints) and constraints.ca


def can_sign_certificates(certificate: x509.Certificate) -> bool:
    usage = extension(certificate, ExtensionOID.KEY_USAGE)
    return not isinstance(usage, x509.KeyUsage) or usage.key_cert_sign


def subject_alt_names(certificate: x509.Certificate | x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    names = extension(certificate, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    return list(names) if isinstance(names, x509.SubjectAlternativeName) else []


def extended_key_usages(certificate: x509.Certificate | x509.CertificateSigningRequest) -> frozenset[ObjectIdentifier]:
    usages = extension(certificate, ExtensionOID.EXTENDED_KEY_USAGE)
    return frozenset(usages) if isinstance(usages, x509.ExtendedKeyUsage) else frozenset()


def eku_label(usages: frozenset[ObjectIdentifier]) -> str:
    return "+".join(sorted(EKU_NAMES.get(oid, oid.dotted_string) for oid in usages)) or "(none)"


def certificate_identity(certificate: x509.Certificate, field: str = "certificate") -> Identity | None:
    """The identity in the certificate's opsmgr role URI, or None for a certificate from another CA without one."""
    uris = [name.value for name in subject_alt_names(certificate)
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith(f"{ROLE_URI_SCHEME}:")]
    if not uris:
        return None
    if len(uris) > 1:
        raise CertificateError(Check.WRONG_ROLE, f"{field} subjectAltName URI", ", ".join(uris),
                               "holds more than one role", "issue one certificate per role")
    return Identity.from_uri(uris[0], f"{field} subjectAltName URI")


def check_extended_key_usage(certificate: x509.Certificate, role: Role, field: str = "certificate",
                             need: frozenset[ObjectIdentifier] | None = None) -> None:
    """Raise unless the certificate's EKUs include every EKU the role needs (or `need`, when given)."""
    have = extended_key_usages(certificate)
    need = PROFILES[role].extended_key_usages if need is None else need
    if not need <= have:
        raise CertificateError(Check.WRONG_EKU, f"{field} extendedKeyUsage", eku_label(have),
                               f"lacks {eku_label(need - have)}, which the {role.value} role needs here",
                               f"issue the certificate with extendedKeyUsage {eku_label(need)}")


def check_identity(certificate: x509.Certificate, role: Role, fqdn: str, group: str | None = None,
                   field: str = "certificate") -> Identity:
    """Raise unless the certificate's CN is `fqdn` and any role URI it carries names `role` (and `group`)."""
    expected = normalize_fqdn(fqdn, "expected FQDN")
    cn = common_name(certificate)
    if cn is None or cn.strip().lower().removesuffix(".") != expected:
        raise CertificateError(Check.CN_MISMATCH, f"{field} subject CN", repr(cn), f"is not {expected!r}",
                               f"use a certificate issued to CN={expected}, or configure the FQDN it names")
    identity = certificate_identity(certificate, field)
    if identity is None:
        return Identity(group or "", role, expected)
    if identity.role is not role:
        raise CertificateError(Check.WRONG_ROLE, f"{field} subjectAltName URI", identity.uri,
                               f"is {identity.role.article} certificate, not {role.article} certificate",
                               f"use a certificate issued for the {role.value} role")
    if group is not None and identity.group != group:
        raise CertificateError(Check.WRONG_GROUP, f"{field} subjectAltName URI", identity.uri,
                               f"belongs to management group {identity.group!r}, not {group!r}",
                               f"use a certificate issued by management group {group!r}")
    if identity.name != expected:
        raise CertificateError(Check.CN_MISMATCH, f"{field} subjectAltName URI", identity.uri,
                               f"names {identity.name!r}, not the CN {expected!r}",
                               "use a certificate issued by the management-group CA, whose URI and CN agree")
    return identity


def verify_chain(leaf: x509.Certificate, anchors: Sequence[x509.Certificate], now: datetime,
                 intermediates: Sequence[x509.Certificate] = (), field: str = "certificate") -> list[x509.Certificate]:
    """Return the path from `leaf` to one of `anchors`, checking each signature, CA flag and validity at `now`."""
    if is_ca(leaf):
        raise CertificateError(Check.LEAF_IS_CA, f"{field} basicConstraints", "CA:TRUE",
                               "is a CA certificate, not an identity",
                               "use the server's, gateway's or agent's own certificate")
    path = [leaf]
    while len(path) < _MAX_CHAIN:
        current = path[-1]
        anchor = _issuer_among(current, anchors)
        issuer = anchor or _issuer_among(current, intermediates)
        if issuer is None:
            raise CertificateError(Check.WRONG_CA, f"{field} issuer", current.issuer.rfc4514_string(),
                                   "is not signed by any CA in the trust bundle",
                                   "pass the CA bundle of the management group (or of the CA that issued it)")
        check_valid_at(issuer, now, f"CA {issuer.subject.rfc4514_string()}")
        if not is_ca(issuer) or not can_sign_certificates(issuer):
            raise CertificateError(Check.NOT_A_CA, f"CA {issuer.subject.rfc4514_string()}", "basicConstraints/keyUsage",
                                   "may not issue certificates", "use a CA certificate with CA:TRUE and keyCertSign")
        path.append(issuer)
        if anchor is not None:
            return path
    raise CertificateError(Check.WRONG_CA, f"{field} chain", f"more than {_MAX_CHAIN} certificates",
                           "does not reach the trust bundle", "put the issuing CA itself into the CA bundle")


def _issuer_among(certificate: x509.Certificate, candidates: Sequence[x509.Certificate]) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.subject != certificate.issuer or candidate == certificate:
            continue
        try:
            certificate.verify_directly_issued_by(candidate)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return candidate
    return None


def peer_certificate(auth_context: Mapping[str, Sequence[bytes]]) -> x509.Certificate:
    """The client certificate TLS verified, from a gRPC `context.auth_context()`."""
    pems = auth_context.get("x509_pem_cert") or []
    if not pems:
        raise CertificateError(Check.UNREADABLE, "client certificate", "(none)", "was not presented",
                               "connect with the identity's tls.crt and tls.key")
    return load_certificate(pems[0], "client certificate")


def authorize_peer(certificate: x509.Certificate, *, group: str, role: Role, revocations: RevocationSet,
                   now: datetime, name: str | None = None) -> Identity:
    """Who a TLS-verified peer is, checked before a stream on 5723 accepts any message.

    TLS already checked the chain and EKU; this adds what only opsmgr knows: the certificate is not revoked, its role
    URI names this group and the expected role, and its CN is the expected `name` when the caller knows one. A
    certificate from an imported CA carries no role URI; it may act as an agent, and as a gateway or server only when
    the caller names the identity it registered for that role.
    """
    field = "client certificate"
    revocations.check(certificate, field)
    check_valid_at(certificate, now, field)
    check_extended_key_usage(certificate, role, field, need=frozenset({CLIENT_AUTH}))  # every peer here is a client
    cn = normalize_fqdn(common_name(certificate) or "", f"{field} subject CN")
    identity = certificate_identity(certificate, field)
    if identity is None and role is not Role.AGENT and name is None:
        raise CertificateError(Check.WRONG_ROLE, f"{field} subjectAltName URI", "(none)",
                               f"does not say the certificate may act as {role.article}",
                               f"issue the {role.value} certificate from the management-group CA, or register "
                               f"its FQDN as {role.article}")
    return check_identity(certificate, role, name or (identity.name if identity else cn), group, field)
