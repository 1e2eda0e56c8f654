"""Renewal at 2/3 of the lifetime, CA renewal decisions, and a revocation set under which nothing revoked is renewed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsmgr.pki import (
    CertificateAuthority,
    CertificateError,
    Check,
    RenewalAction,
    RevocationReason,
    RevocationSet,
    approve_renewal,
    build_csr,
    issue_with_new_key,
    renewal_decision,
    sign_csr,
    validate_csr,
)
from opsmgr.pki.keys import generate_private_key
from opsmgr.pki.renewal import renew_at
from tests.unit.pki.forge import AGENT_FQDN, NOW, agent, approved, forge_leaf


def test_renewal_is_due_at_two_thirds_of_the_lifetime(ca: CertificateAuthority) -> None:
    certificate = issue_with_new_key(ca, approved(agent()), NOW, validity=timedelta(days=90)).certificate
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    due = certificate.not_valid_before_utc + lifetime * 2 / 3
    assert renew_at(certificate) == due
    assert renewal_decision(certificate, due - timedelta(seconds=1)).action is RenewalAction.KEEP
    assert renewal_decision(certificate, due).action is RenewalAction.RENEW


def test_renew_before_overrides_the_two_thirds_default(ca: CertificateAuthority) -> None:
    certificate = issue_with_new_key(ca, approved(agent()), NOW, validity=timedelta(days=90)).certificate
    # Day 80 is past 2/3 of 90 days, but a week before the end is later still.
    decision = renewal_decision(certificate, NOW + timedelta(days=80), renew_before=timedelta(days=7))
    assert decision.action is RenewalAction.KEEP
    assert decision.renew_at == certificate.not_valid_after_utc - timedelta(days=7)
    assert renewal_decision(certificate, NOW + timedelta(days=84), renew_before=timedelta(days=7)).action \
        is RenewalAction.RENEW


def test_expired_certificate_must_be_reissued(ca: CertificateAuthority) -> None:
    certificate = issue_with_new_key(ca, approved(agent()), NOW, validity=timedelta(days=1)).certificate
    assert renewal_decision(certificate, NOW + timedelta(days=2)).action is RenewalAction.REISSUE


def test_ca_renewal_is_decided_by_the_same_rule(ca: CertificateAuthority) -> None:
    assert renewal_decision(ca.certificate, NOW + timedelta(days=2500)).action is RenewalAction.RENEW
    assert renewal_decision(ca.certificate, NOW + timedelta(days=2000)).action is RenewalAction.KEEP


def test_revoked_certificate_is_never_renewed(ca: CertificateAuthority) -> None:
    certificate = issue_with_new_key(ca, approved(agent()), NOW, validity=timedelta(days=90)).certificate
    revocations = RevocationSet().revoke(certificate, RevocationReason.KEY_COMPROMISE, NOW)
    decision = renewal_decision(certificate, NOW + timedelta(days=80), revocations)
    assert decision.action is RenewalAction.REFUSE and "keyCompromise" in decision.reason
    request = validate_csr(build_csr(generate_private_key(), AGENT_FQDN), agent())
    with pytest.raises(CertificateError) as raised:
        approve_renewal(certificate, request, revocations, NOW + timedelta(days=80))
    assert raised.value.check is Check.REVOKED
    assert raised.value.field == "current certificate serial"


def test_renewal_over_the_stream_issues_a_new_certificate_for_the_same_identity(ca: CertificateAuthority) -> None:
    current = issue_with_new_key(ca, approved(agent()), NOW, validity=timedelta(days=90)).certificate
    later = NOW + timedelta(days=61)
    request = validate_csr(build_csr(generate_private_key(), AGENT_FQDN), agent())
    approval = approve_renewal(current, request, RevocationSet(), later)
    renewed = sign_csr(ca, request, approval, later)
    assert renewed.subject == current.subject and renewed.serial_number != current.serial_number
    assert approval.approved_by == f"renewal of serial {current.serial_number:x}"


def test_renewal_for_another_identity_is_not_approved(ca: CertificateAuthority) -> None:
    current = issue_with_new_key(ca, approved(agent()), NOW).certificate
    request = validate_csr(build_csr(generate_private_key(), "db01.contoso.test"), agent("db01.contoso.test"))
    with pytest.raises(CertificateError) as raised:
        approve_renewal(current, request, RevocationSet(), NOW)
    assert raised.value.check is Check.NOT_APPROVED


def test_expired_certificate_cannot_approve_its_own_renewal(ca: CertificateAuthority) -> None:
    current = issue_with_new_key(ca, approved(agent()), NOW, validity=timedelta(days=1)).certificate
    request = validate_csr(build_csr(generate_private_key(), AGENT_FQDN), agent())
    with pytest.raises(CertificateError) as raised:
        approve_renewal(current, request, RevocationSet(), NOW + timedelta(days=2))
    assert raised.value.check is Check.EXPIRED


def test_certificate_from_another_ca_is_not_renewed_by_opsmgr(ca: CertificateAuthority) -> None:
    imported = forge_leaf(ca, AGENT_FQDN).certificate
    request = validate_csr(build_csr(generate_private_key(), AGENT_FQDN), agent())
    with pytest.raises(CertificateError) as raised:
        approve_renewal(imported, request, RevocationSet(), NOW)
    assert raised.value.check is Check.WRONG_CA and "certimport" in raised.value.fix


def test_revocation_is_permanent_and_the_first_reason_stands(ca: CertificateAuthority) -> None:
    certificate = issue_with_new_key(ca, approved(agent()), NOW).certificate
    empty = RevocationSet()
    revoked = empty.revoke(certificate, RevocationReason.KEY_COMPROMISE, NOW, AGENT_FQDN)
    again = revoked.revoke(certificate.serial_number, RevocationReason.SUPERSEDED, NOW + timedelta(hours=1))
    assert certificate not in empty and certificate in revoked and certificate.serial_number in revoked
    assert again is revoked and len(again) == 1
    entry = again.get(certificate)
    assert entry is not None and entry.reason is RevocationReason.KEY_COMPROMISE and entry.revoked_at == NOW
    assert revoked.revoked_since(empty) == {certificate.serial_number}


def test_revocation_set_round_trips_through_records() -> None:
    revocations = (RevocationSet().revoke(0xABC, RevocationReason.CESSATION_OF_OPERATION, NOW, "web01.contoso.test")
                   .revoke(7, RevocationReason.UNSPECIFIED, NOW + timedelta(minutes=1)))
    records = revocations.to_records()
    assert records[0] == {"serial": "7", "reason": "unspecified", "revokedAt": "2026-06-01T12:01:00+00:00",
                          "name": ""}
    assert RevocationSet.from_records(records) == revocations


@pytest.mark.parametrize(("records", "field"), [
    ([{"serial": "xyz", "reason": "keyCompromise", "revokedAt": "2026-06-01T12:00:00+00:00"}], "revocations[0].serial"),
    ([{"serial": "1", "reason": "certificateHold", "revokedAt": "2026-06-01T12:00:00+00:00"}], "revocations[0].reason"),
    ([{"serial": "1", "revokedAt": "yesterday"}], "revocations[0].revokedAt"),
    ([{"serial": "1", "revokedAt": "2026-06-01T12:00:00"}], "revocations[0].revokedAt"),
    (["abc"], "revocations[0]"),
    ("abc", "revocations"),
])
def test_malformed_revocation_records_name_the_entry(records: object, field: str) -> None:
    with pytest.raises(CertificateError) as raised:
        RevocationSet.from_records(records)  # type: ignore[arg-type]
    assert raised.value.field == field


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                                 max_size=4), max_leaves=10)
_record = st.fixed_dictionaries({}, optional={"serial": _json | st.text("0123456789abcdef", max_size=40),
                                              "reason": _json | st.sampled_from([r.value for r in RevocationReason]),
                                              "revokedAt": _json | st.datetimes(timezones=st.just(UTC)).map(
                                                  datetime.isoformat),
                                              "name": _json})


@given(st.lists(_record | _json, max_size=4) | _json)
def test_any_revocation_records_yield_a_set_or_our_error(records: object) -> None:
    try:
        revocations = RevocationSet.from_records(records)  # type: ignore[arg-type]
    except CertificateError:
        return
    assert RevocationSet.from_records(revocations.to_records()) == revocations
