"""The operator's certificate decisions: create, keep or renew the CA; issue a leaf only when it must."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from opsmgr.api import ManagementGroup
from opsmgr.operator.certificates import generated_ca, imported_ca, issue_leaf, leaf_need
from opsmgr.pki import CertificateError, Identity, RevocationReason, RevocationSet, Role, create_ca

NOW = datetime(2026, 3, 1, tzinfo=UTC)
YEAR = timedelta(days=365)


def group() -> ManagementGroup:
    return ManagementGroup.from_body({"apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementGroup",
                                      "metadata": {"name": "prod", "namespace": "ops"}, "spec": {}})


def test_a_missing_ca_is_created_and_a_current_one_kept() -> None:
    created = generated_ca(group(), {}, NOW)
    assert created.write and created.reason == "Created"
    stored = {"tls.crt": created.ca.certificate_pem(), "tls.key": created.ca.key_pem()}
    kept = generated_ca(group(), stored, NOW + timedelta(days=1))
    assert not kept.write and kept.ca.certificate.serial_number == created.ca.certificate.serial_number


def test_a_ca_near_its_end_is_renewed_with_the_same_key() -> None:
    created = generated_ca(group(), {}, NOW).ca
    stored = {"tls.crt": created.certificate_pem(), "tls.key": created.key_pem()}
    late = created.certificate.not_valid_after_utc - timedelta(days=10)
    renewed = generated_ca(group(), stored, late)
    assert renewed.write and renewed.reason == "Renewed"
    assert renewed.ca.key_pem() == created.key_pem()


def test_a_damaged_ca_secret_is_an_error_never_a_new_root() -> None:
    with pytest.raises(CertificateError):
        generated_ca(group(), {"tls.crt": b"garbage"}, NOW)


def test_an_imported_ca_that_is_missing_or_not_a_ca_is_refused_with_a_reason() -> None:
    with pytest.raises(CertificateError) as missing:
        imported_ca(None, "my-ca", NOW)
    assert "does not exist" in str(missing.value)
    ca = create_ca("prod", NOW)
    leaf = issue_leaf(ca, Identity.of("prod", Role.AGENT, "a.example.com"), NOW, YEAR)
    with pytest.raises(CertificateError) as not_ca:
        imported_ca({"tls.crt": leaf.certificate_pem(), "tls.key": leaf.key_pem()}, "my-ca", NOW)
    assert not_ca.value.reason == "NotACA"


def test_a_leaf_is_issued_when_missing_from_another_ca_renamed_due_or_revoked() -> None:
    ca = create_ca("prod", NOW)
    identity = Identity.of("prod", Role.AGENT, "a.example.com")
    leaf = issue_leaf(ca, identity, NOW, YEAR)
    pem = leaf.certificate_pem()
    renew_before = timedelta(days=120)
    assert leaf_need(None, ca, ["a.example.com"], NOW, renew_before=renew_before).reason == "Missing"
    assert not leaf_need(pem, ca, ["a.example.com"], NOW, renew_before=renew_before).issue
    assert leaf_need(pem, create_ca("prod", NOW), ["a.example.com"], NOW,
                     renew_before=renew_before).reason == "WrongCA"
    assert leaf_need(pem, ca, ["b.example.com"], NOW, renew_before=renew_before).reason == "NamesChanged"
    assert leaf_need(pem, ca, ["a.example.com"], NOW + YEAR - timedelta(days=100),
                     renew_before=renew_before).reason == "Renew"
    revoked = RevocationSet().revoke(leaf.certificate, RevocationReason.KEY_COMPROMISE, NOW)
    assert leaf_need(pem, ca, ["a.example.com"], NOW, renew_before=renew_before,
                     revocations=revoked).reason == "Refuse"
