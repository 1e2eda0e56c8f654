"""The revocation set the servers consult: serial numbers with a reason and a time; revocation is permanent."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from cryptography import x509

from opsmgr.pki.errors import CertificateError, Check


class RevocationReason(StrEnum):
    """RFC 5280 reasons that make sense for opsmgr; there is no 'certificateHold': revocation is never undone."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    CA_COMPROMISE = "cACompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"


@dataclass(frozen=True)
class Revocation:
    serial: int
    reason: RevocationReason
    revoked_at: datetime
    name: str = ""  # the FQDN it was issued to, so a person reading the list knows what it was

    def to_record(self) -> dict[str, str]:
        return {"serial": format(self.serial, "x"), "reason": self.reason.value,
                "revokedAt": self.revoked_at.astimezone(UTC).isoformat(), "name": self.name}

    @classmethod
    def from_record(cls, record: Mapping[str, object], index: int) -> Revocation:
        where = f"revocations[{index}]"
        if not isinstance(record, Mapping):
            raise _bad(f"{where}", record, "is not an object with serial, reason and revokedAt")
        try:
            serial = int(str(record["serial"]), 16)
        except (KeyError, ValueError) as exc:
            raise _bad(f"{where}.serial", record.get("serial"), "is not a hexadecimal serial number") from exc
        try:
            reason = RevocationReason(str(record.get("reason", RevocationReason.UNSPECIFIED.value)))
        except ValueError as exc:
            raise _bad(f"{where}.reason", record.get("reason"),
                       f"is not one of {', '.join(r.value for r in RevocationReason)}") from exc
        try:
            revoked_at = datetime.fromisoformat(str(record["revokedAt"]))
        except (KeyError, ValueError) as exc:
            raise _bad(f"{where}.revokedAt", record.get("revokedAt"), "is not an ISO 8601 time") from exc
        if revoked_at.tzinfo is None:
            raise _bad(f"{where}.revokedAt", record["revokedAt"], "has no time zone")
        return cls(serial, reason, revoked_at, str(record.get("name", "")))


def _bad(field: str, value: object, problem: str) -> CertificateError:
    return CertificateError(Check.UNREADABLE, field, repr(value), problem,
                            "each entry needs serial (hexadecimal), reason and revokedAt (ISO 8601 with a time zone)")


@dataclass(frozen=True)
class RevocationSet:
    """Immutable: `revoke` returns a new set, so a server can swap it atomically and diff old against new."""

    entries: Mapping[int, Revocation] = field(default_factory=dict)

    def revoke(self, certificate: x509.Certificate | int, reason: RevocationReason, at: datetime,
               name: str = "") -> RevocationSet:
        serial = certificate if isinstance(certificate, int) else certificate.serial_number
        if serial in self.entries:
            return self  # the first revocation's reason and time stand
        return RevocationSet({**self.entries, serial: Revocation(serial, reason, at, name)})

    def get(self, certificate: x509.Certificate | int) -> Revocation | None:
        return self.entries.get(certificate if isinstance(certificate, int) else certificate.serial_number)

    def __contains__(self, certificate: object) -> bool:
        return isinstance(certificate, x509.Certificate | int) and self.get(certificate) is not None

    def __len__(self) -> int:
        return len(self.entries)

    def revoked_since(self, earlier: RevocationSet) -> frozenset[int]:
        """Serials revoked here but not in `earlier`: the live streams a server must close now."""
        return frozenset(self.entries.keys() - earlier.entries.keys())

    def check(self, certificate: x509.Certificate, field: str = "certificate") -> None:
        """Raise when `certificate` is revoked."""
        entry = self.get(certificate)
        if entry is not None:
            raise CertificateError(
                Check.REVOKED, f"{field} serial", format(entry.serial, "x"),
                f"was revoked ({entry.reason.value}) at {entry.revoked_at.isoformat()}",
                "a revoked certificate is never honoured or renewed: enroll again for a new certificate")

    def to_records(self) -> list[dict[str, str]]:
        return [self.entries[serial].to_record() for serial in sorted(self.entries)]

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, object]]) -> RevocationSet:
        if not isinstance(records, Iterable) or isinstance(records, str | bytes | Mapping):
            raise _bad("revocations", records, "is not a list")
        entries = [Revocation.from_record(record, index) for index, record in enumerate(records)]
        return cls({entry.serial: entry for entry in entries})
