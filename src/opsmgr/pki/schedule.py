"""When a certificate is renewed, from its validity dates alone: no cryptography, so the long-running agent can
decide without parsing certificates (its identity helper hands it the dates)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

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


def due_at(not_before: datetime, not_after: datetime, renew_before: timedelta | None = None) -> datetime:
    """When renewal is due: `renew_before` the end when given, else at 2/3 of the lifetime."""
    if renew_before is not None:
        return max(not_before, not_after - renew_before)
    return not_before + (not_after - not_before) * RENEW_AT_FRACTION


def decision_by_validity(not_before: datetime, not_after: datetime, now: datetime, *,
                         renew_before: timedelta | None = None) -> RenewalDecision:
    """Keep, renew or re-issue (expired) a certificate valid from `not_before` to `not_after`, at `now`."""
    due = due_at(not_before, not_after, renew_before)
    if now > not_after:
        return RenewalDecision(RenewalAction.REISSUE, due, not_after, f"expired at {not_after.isoformat()}")
    if now >= due:
        return RenewalDecision(RenewalAction.RENEW, due, not_after, f"renewal was due at {due.isoformat()}")
    return RenewalDecision(RenewalAction.KEEP, due, not_after, f"renewal is due at {due.isoformat()}")
