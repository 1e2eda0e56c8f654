"""The one error type of opsmgr.pki: which check failed, on which field, with which value, and how to fix it."""

from __future__ import annotations

from enum import StrEnum


class Check(StrEnum):
    """What was checked; the value doubles as a condition reason (one CamelCase word) for the operator."""

    UNREADABLE = "Unreadable"
    WEAK_KEY = "WeakKey"
    KEY_MISMATCH = "KeyMismatch"
    NOT_A_CA = "NotACA"
    CA_CANNOT_SIGN = "CACannotSign"
    WRONG_CA = "WrongCA"
    EXPIRED = "Expired"
    NOT_YET_VALID = "NotYetValid"
    WRONG_EKU = "WrongEKU"
    WRONG_ROLE = "WrongRole"
    WRONG_GROUP = "WrongGroup"
    CN_MISMATCH = "CNMismatch"
    INVALID_NAME = "InvalidName"
    REVOKED = "Revoked"
    FORBIDDEN_SAN = "ForbiddenSAN"
    FORBIDDEN_EKU = "ForbiddenEKU"
    FORBIDDEN_EXTENSION = "ForbiddenExtension"
    BAD_SIGNATURE = "BadSignature"
    NOT_APPROVED = "NotApproved"
    LEAF_IS_CA = "LeafIsCA"


class CertificateError(ValueError):
    """A certificate, key, CSR or bundle a person supplied (or a peer presented) fails one named check."""

    def __init__(self, check: Check, field: str, value: object, problem: str, fix: str) -> None:
        self.check = check
        self.field = field
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field} = {value!s}: {problem}. Fix: {fix}")

    @property
    def reason(self) -> str:
        """One CamelCase word for a status condition's `reason`."""
        return self.check.value
