"""When to renew (by default at 2/3 of the lifetime), and the approval a renewal gets: never for a revoked one."""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509

from opsmgr.pki.csr import ValidatedCsr
from opsmgr.pki.errors import CertificateError, Check
from opsmgr.pki.issue import Approval
from opsmgr.pki.revocation import RevocationSet
from opsmgr.pki.schedule import RenewalAction, RenewalDecision, decision_by_validity, due_at
from opsmgr.pki.verify import certificate_identity, check_valid_at


def renew_at(certificate: x509.Certificate, renew_before: timedelta | None = None) -> datetime:
    """When renewal is due: `renew_before` the end when given, else at 2/3 of the lifetime."""
    return due_at(certificate.not_valid_before_utc, certificate.not_valid_after_utc, renew_before)


def renewal_decision(certificate: x509.Certificate, now: datetime, revocations: RevocationSet | None = None, *,
                     renew_before: timedelta | None = None) -> RenewalDecision:
    """Keep, renew, re-issue (expired) or refuse (revoked) one certificate at `now`; works for CAs and leaves."""
    revoked = revocations.get(certificate) if revocations is not None else None
    if revoked is not None:
        return RenewalDecision(RenewalAction.REFUSE, renew_at(certificate, renew_before),
                               certificate.not_valid_after_utc,
                               f"serial {revoked.serial:x} was revoked ({revoked.reason.value}); it is never renewed")
    return decision_by_validity(certificate.not_valid_before_utc, certificate.not_valid_after_utc, now,
                                renew_before=renew_before)


def approve_renewal(current: x509.Certificate, request: ValidatedCsr, revocations: RevocationSet,
                    now: datetime) -> Approval:
    """Approve a renewal sent over the authenticated stream by the holder of `current` (the TLS-verified peer)."""
    field = "current certificate"
    revocations.check(current, field)
    check_valid_at(current, now, field)
    identity = certificate_identity(current, field)
    if identity is None:
        raise CertificateError(Check.WRONG_CA, f"{field} subjectAltName URI", "(none)",
                               "was not issued by the management-group CA, so opsmgr cannot renew it",
                               "renew it at the CA that issued it and run `opsmgr certimport` again")
    if identity != request.identity:
        raise CertificateError(Check.NOT_APPROVED, "CSR identity", request.identity.uri,
                               f"differs from the renewing certificate's {identity.uri}",
                               "renew only the identity the connection authenticated as")
    return Approval(identity, f"renewal of serial {current.serial_number:x}", now)
