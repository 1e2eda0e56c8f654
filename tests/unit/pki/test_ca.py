"""The management-group CA: created, renewed with the same key, imported only when valid, rolled to a new key."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from opsmgr.pki import (
    CaKeyRollover,
    CertificateAuthority,
    CertificateError,
    Check,
    KeyAlgorithm,
    RolloverPhase,
    TrustBundle,
    create_ca,
    import_ca,
    issue_with_new_key,
    renew_ca,
    start_key_rollover,
    verify_chain,
)
from opsmgr.pki.keys import generate_private_key
from opsmgr.pki.pem import certificate_pem, private_key_pem
from opsmgr.pki.verify import is_ca
from tests.unit.pki.forge import GROUP, NOW, agent, approved, forge_leaf


@pytest.mark.parametrize("algorithm", [KeyAlgorithm.ECDSA_P256, KeyAlgorithm.ECDSA_P384, KeyAlgorithm.RSA_2048])
def test_created_ca_is_a_ca_that_may_only_sign_leaves(algorithm: KeyAlgorithm) -> None:
    ca = create_ca(GROUP, NOW, algorithm=algorithm)
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = ca.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert usage.key_cert_sign and usage.crl_sign
    assert ca.certificate.not_valid_after_utc - NOW == timedelta(days=3650)


def test_renewed_ca_keeps_key_and_name_so_issued_leaves_stay_valid(ca: CertificateAuthority) -> None:
    leaf = issue_with_new_key(ca, approved(agent()), NOW).certificate
    renewed = renew_ca(ca, NOW + timedelta(days=200))
    assert renewed.key is ca.key
    assert renewed.certificate.subject == ca.certificate.subject
    assert renewed.certificate.serial_number != ca.certificate.serial_number
    # Peers that only hold the renewed CA certificate still accept the leaf the old one signed.
    assert verify_chain(leaf, [renewed.certificate], NOW + timedelta(days=300))[-1] == renewed.certificate


def test_imported_ca_is_accepted_when_valid(ca: CertificateAuthority) -> None:
    imported = import_ca(ca.certificate_pem(), ca.key_pem(), NOW)
    assert imported.certificate == ca.certificate


def test_imported_ca_with_someone_elses_key_is_rejected(ca: CertificateAuthority,
                                                       other_ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateError) as raised:
        import_ca(ca.certificate_pem(), other_ca.key_pem(), NOW)
    assert raised.value.check is Check.KEY_MISMATCH
    assert raised.value.field == "spec.certificates.ca key"
    assert raised.value.reason == "KeyMismatch"  # what the operator writes as the CertificatesReady reason


def test_imported_leaf_posing_as_ca_is_rejected(ca: CertificateAuthority) -> None:
    leaf = forge_leaf(ca, "not-a-ca.contoso.test")
    with pytest.raises(CertificateError) as raised:
        import_ca(certificate_pem(leaf.certificate), private_key_pem(leaf.key), NOW)
    assert raised.value.check is Check.NOT_A_CA


def test_imported_ca_without_key_cert_sign_is_rejected() -> None:
    key = generate_private_key()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "no signing CA")])
    no_signing = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                               data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=True,
                               encipher_only=False, decipher_only=False)
    certificate = CertificateAuthority(
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(no_signing, critical=True)
        .sign(key, hashes.SHA256()),
        key,
    )
    with pytest.raises(CertificateError) as raised:
        import_ca(certificate.certificate_pem(), certificate.key_pem(), NOW)
    assert raised.value.check is Check.CA_CANNOT_SIGN


@pytest.mark.parametrize(("when", "check"), [(NOW + timedelta(days=4000), Check.EXPIRED),
                                             (NOW - timedelta(days=1), Check.NOT_YET_VALID)])
def test_imported_ca_outside_its_validity_is_rejected(ca: CertificateAuthority, when: datetime, check: Check) -> None:
    with pytest.raises(CertificateError) as raised:
        import_ca(ca.certificate_pem(), ca.key_pem(), when)
    assert raised.value.check is check


def test_imported_ca_that_is_not_pem_is_named_unreadable(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateError) as raised:
        import_ca(b"not a certificate", ca.key_pem(), NOW)
    assert raised.value.check is Check.UNREADABLE
    assert raised.value.field == "spec.certificates.ca certificate"


def test_trust_bundle_replaces_a_same_key_renewal_instead_of_growing(ca: CertificateAuthority,
                                                                    other_ca: CertificateAuthority) -> None:
    renewed = renew_ca(ca, NOW + timedelta(days=10))
    bundle = TrustBundle.of(ca, other_ca).with_ca(renewed)
    assert bundle.certificates == (other_ca.certificate, renewed.certificate)
    assert TrustBundle.from_pem(bundle.pem()) == bundle
    assert bundle.without(other_ca).certificates == (renewed.certificate,)


def test_key_rollover_trusts_new_ca_before_signing_with_it_and_old_until_no_leaf_needs_it(
        ca: CertificateAuthority) -> None:
    rollover = start_key_rollover(ca, GROUP, NOW)
    assert rollover.new.certificate.subject != ca.certificate.subject
    assert rollover.phase is RolloverPhase.TRUST_NEW and rollover.signing_ca is ca
    assert rollover.trust_bundle.trusts(ca) and rollover.trust_bundle.trusts(rollover.new)
    assert rollover.advance(every_peer_trusts_new=False, no_leaf_from_old=True) == rollover

    old_leaf = issue_with_new_key(rollover.signing_ca, approved(agent()), NOW).certificate
    rolling = rollover.advance(every_peer_trusts_new=True, no_leaf_from_old=False)
    assert rolling.phase is RolloverPhase.ISSUE_WITH_NEW and rolling.signing_ca is rollover.new
    new_leaf = issue_with_new_key(rolling.signing_ca, approved(agent()), NOW).certificate
    # While leaves of both keys are live, one bundle verifies both.
    for leaf in (old_leaf, new_leaf):
        verify_chain(leaf, rolling.trust_bundle.certificates, NOW)
    assert rolling.advance(every_peer_trusts_new=True, no_leaf_from_old=False) == rolling

    done = rolling.advance(every_peer_trusts_new=True, no_leaf_from_old=True)
    assert done.phase is RolloverPhase.COMPLETE
    assert done.trust_bundle.certificates == (rollover.new.certificate,)
    with pytest.raises(CertificateError) as raised:
        verify_chain(old_leaf, done.trust_bundle.certificates, NOW)
    assert raised.value.check is Check.WRONG_CA
    assert isinstance(done, CaKeyRollover) and is_ca(done.new.certificate)
