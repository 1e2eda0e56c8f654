"""Certificate decisions of the operator: which CA the group uses, and whether a leaf it holds must be (re)issued.

No Kubernetes I/O: handlers pass the decoded Secret data in and write what comes out. Keys are generated here
(that is CPU work, not I/O), so handlers run these in a thread when many are due at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from opsmgr.api import ManagementGroup
from opsmgr.api.common import parse_duration
from opsmgr.pki import (
    Approval,
    CertificateAuthority,
    CertificateError,
    Check,
    Identity,
    IssuedIdentity,
    RenewalAction,
    RevocationSet,
    create_ca,
    import_ca,
    issue_with_new_key,
    renew_ca,
    renewal_decision,
    verify_chain,
)
from opsmgr.pki.pem import load_certificate
from opsmgr.pki.verify import subject_alt_names

CA_RENEW_BEFORE = timedelta(days=90)
OPERATOR = "opsmgr-operator"


@dataclass(frozen=True)
class CaOutcome:
    """The group's CA and whether the operator must (re)write the CA Secret."""

    ca: CertificateAuthority
    write: bool
    reason: str


def generated_ca(group: ManagementGroup, secret: Mapping[str, bytes], now: datetime) -> CaOutcome:
    """The generated CA from its Secret, created when absent and renewed with the same key when due.

    A Secret that exists but no longer holds a usable CA is an error, never a reason to mint a new root silently:
    every agent trusts the old one.
    """
    name = group.metadata.name or ""
    authority = group.spec.certificates.authority.generated
    validity = parse_duration(authority.validity) if authority is not None else timedelta(days=3650)
    if not secret:
        return CaOutcome(create_ca(name, now, validity=validity), True, "Created")
    if "tls.crt" not in secret or "tls.key" not in secret:
        raise CertificateError(Check.UNREADABLE, "CA Secret", "keys " + ", ".join(sorted(secret)),
                               "lacks tls.crt or tls.key",
                               "restore the CA Secret from backup; deleting it mints a new CA that no agent trusts")
    current = _renewable_ca(secret["tls.crt"], secret["tls.key"], now)
    decision = renewal_decision(current.certificate, now, renew_before=min(CA_RENEW_BEFORE, validity / 3))
    if decision.action in (RenewalAction.RENEW, RenewalAction.REISSUE):
        return CaOutcome(renew_ca(current, now, validity=validity), True, "Renewed")
    return CaOutcome(current, False, "Current")


def _renewable_ca(certificate_pem: bytes, key_pem: bytes, now: datetime) -> CertificateAuthority:
    try:
        return import_ca(certificate_pem, key_pem, now, field="CA Secret")
    except CertificateError as error:
        if error.check is not Check.EXPIRED:
            raise
    # An expired generated CA is renewed with its own key, which keeps every leaf it issued valid again.
    certificate = load_certificate(certificate_pem, "CA Secret certificate")
    later = certificate.not_valid_after_utc - timedelta(seconds=1)
    return import_ca(certificate_pem, key_pem, later, field="CA Secret")


def imported_ca(secret: Mapping[str, bytes] | None, secret_name: str, now: datetime) -> CertificateAuthority:
    """A CA the user supplies, validated; every problem is a CertificateError for CertificatesReady."""
    field = f"spec.certificates.authority.imported.secret ({secret_name})"
    if secret is None:
        raise CertificateError(Check.UNREADABLE, field, "(missing)", "does not exist",
                               "create a kubernetes.io/tls Secret with the CA's tls.crt and tls.key")
    if "tls.crt" not in secret or "tls.key" not in secret:
        raise CertificateError(Check.UNREADABLE, field, "keys " + ", ".join(sorted(secret)) or "(none)",
                               "lacks tls.crt or tls.key", "store the CA certificate in tls.crt and its key in tls.key")
    return import_ca(secret["tls.crt"], secret["tls.key"], now, field=field)


@dataclass(frozen=True)
class LeafNeed:
    issue: bool
    reason: str


def leaf_need(certificate_pem: bytes | None, ca: CertificateAuthority, expected_dns: Sequence[str], now: datetime, *,
              renew_before: timedelta, revocations: RevocationSet | None = None) -> LeafNeed:
    """Whether a leaf the operator holds must be issued anew: missing, from another CA, other names, due, revoked."""
    if not certificate_pem:
        return LeafNeed(True, "Missing")
    try:
        certificate = load_certificate(certificate_pem)
        verify_chain(certificate, [ca.certificate], now)
    except CertificateError as error:
        return LeafNeed(True, error.reason)
    if sorted(dns_names(certificate)) != sorted(expected_dns):
        return LeafNeed(True, "NamesChanged")
    action = renewal_decision(certificate, now, revocations, renew_before=renew_before).action
    if action is RenewalAction.KEEP:
        return LeafNeed(False, "Current")
    return LeafNeed(True, action.value)


def dns_names(certificate: x509.Certificate) -> list[str]:
    return [str(name.value) for name in subject_alt_names(certificate) if isinstance(name, x509.DNSName)]


def issue_leaf(ca: CertificateAuthority, identity: Identity, now: datetime, validity: timedelta, *,
               dns: Sequence[str] = (), approved_by: str = OPERATOR) -> IssuedIdentity:
    """A key and certificate for an identity the operator approved (a server, gateway or approved agent)."""
    return issue_with_new_key(ca, Approval(identity, approved_by, now), now, dns_names=dns, validity=validity)


def leaf_lifetimes(group: ManagementGroup) -> tuple[timedelta, timedelta]:
    """(validity, renew_before) of issued certificates from the group spec."""
    certificates = group.spec.certificates
    return parse_duration(certificates.validity), parse_duration(certificates.renew_before)
