"""When to renew (by default at 2/3 of the lifetime), and the approval a renewal gets: never for a revoked one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509

from opsmgr.pki.csr import ValidatedCsr
from opsmgr.pki.errors import CertificateError, Check
from opsmgr.pki.issue import Approval
from opsmgr.pki.revocation import RevocationSet
from opsmgr.pki.verify import certificate_identity, check_valid_at

RENEW_AT_FRACTION = 2 / 3  # cert-manager's default: a third of the lifetime is left to retry a failed renewal


class RenewalAction(StrEnum):
    KEEP = "Keep"
    RENEW = "Renew"
    REISSUE = "Reissue"  # expired: the authenticated stream can no longer carry a renewal; enroll afresh
    REFUSE = "Refuse"  # revoked: never renewed


@dataclass(frozen=True)
class RenewalDecision:
    action: RenewalAction
    renew_at: datetime
    not_after: datetime
    reason: str


def renew_at(certificate: x509.Certificate, renew_before: timedelta | None = None) -> datetime:
    """When renewal is due: `renew_before` the end when given, else at 2/3 of the lifetime."""
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if renew_before is not None:
        return max(start, end - renew_before)
    return start + (end - start) * RENEW_AT_FRACTION


def renewal_decision(certificate: x509.Certificate, now: datetime, revocations: RevocationSet | None = None, *,
                     renew_before: timedelta | None = None) -> RenewalDecision:
    """Keep, renew, re-issue (expired) or refuse (revoked) one certificate at `now`; works for CAs and leaves."""
    due, end = renew_at(certificate, renew_before), certificate.not_valid_after_utc
    revoked = revocations.get(certificate) if revocations is not None else None
    if revoked is not None:
        return RenewalDecision(RenewalAction.REFUSE, due, end,
                               f"serial {revoked.serial:x} was revoked ({revoked.reason.value}); it is never renewed")
    if now > end:
        return RenewalDecision(RenewalAction.REISSUE, due, end, f"expired at {end.isoformat()}")
    if now >= due:
        return RenewalDecision(RenewalAction.RENEW, due, end, f"renewal was due at {due.isoformat()}")
    return RenewalDecision(RenewalAction.KEEP, due, end, f"renewal is due at {due.isoformat()}")


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
