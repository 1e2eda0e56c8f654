"""Role profiles: what an issued server, gateway and agent certificate carries, and when nothing is issued."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from opsmgr.pki import (
    Approval,
    CertificateAuthority,
    CertificateError,
    Check,
    Identity,
    KeyAlgorithm,
    ManagementServerNames,
    Role,
    issue_certificate,
    issue_with_new_key,
    verify_chain,
)
from opsmgr.pki.profiles import CLIENT_AUTH, SERVER_AUTH
from opsmgr.pki.verify import certificate_identity, common_name, extended_key_usages, subject_alt_names
from tests.unit.pki.forge import GROUP, NOW, agent, approved, gateway

SERVER_NAMES = ManagementServerNames(group=GROUP, namespace="monitoring", statefulset="ms", headless_service="ms-hl",
                                     shared_service="ms-agents", replica=1, external_names=("scom.contoso.test",))


def _dns(certificate: x509.Certificate) -> list[str]:
    return [n.value for n in subject_alt_names(certificate) if isinstance(n, x509.DNSName)]


def test_agent_certificate_is_client_auth_only_with_cn_fqdn_and_role_uri(ca: CertificateAuthority) -> None:
    certificate = issue_with_new_key(ca, approved(agent()), NOW).certificate
    assert common_name(certificate) == "web01.contoso.test"
    assert extended_key_usages(certificate) == {CLIENT_AUTH}
    assert _dns(certificate) == ["web01.contoso.test"]
    assert certificate_identity(certificate) == agent()
    assert certificate.not_valid_after_utc - NOW == timedelta(days=365)
    verify_chain(certificate, [ca.certificate], NOW)


def test_agent_certificate_never_carries_extra_dns_names(ca: CertificateAuthority) -> None:
    certificate = issue_with_new_key(ca, approved(agent()), NOW, dns_names=["ms-agents.monitoring.svc"]).certificate
    assert _dns(certificate) == ["web01.contoso.test"]


def test_gateway_certificate_serves_and_connects_under_its_fqdn(ca: CertificateAuthority) -> None:
    certificate = issue_with_new_key(ca, approved(gateway()), NOW, dns_names=["gw.contoso.com"]).certificate
    assert common_name(certificate) == "gw01.dmz.contoso.test"
    assert extended_key_usages(certificate) == {SERVER_AUTH, CLIENT_AUTH}
    assert _dns(certificate) == ["gw01.dmz.contoso.test", "gw.contoso.com"]
    assert certificate_identity(certificate) == gateway()


def test_management_server_certificate_names_pod_replica_shared_and_external_names(ca: CertificateAuthority) -> None:
    identity = SERVER_NAMES.identity()
    certificate = issue_with_new_key(ca, approved(identity), NOW, dns_names=SERVER_NAMES.dns_names()).certificate
    assert identity == Identity(GROUP, Role.MANAGEMENT_SERVER, "ms-1.ms-hl.monitoring.svc")
    assert extended_key_usages(certificate) == {SERVER_AUTH, CLIENT_AUTH}
    assert _dns(certificate) == [
        "ms-1.ms-hl.monitoring.svc", "ms-1.ms-hl.monitoring.svc.cluster.local",
        "ms-1.monitoring.svc.cluster.local", "ms-1.monitoring.svc",
        "ms-agents.monitoring.svc.cluster.local", "ms-agents.monitoring.svc", "scom.contoso.test",
    ]


def test_leaf_never_outlives_its_ca(ca: CertificateAuthority) -> None:
    late = ca.certificate.not_valid_after_utc - timedelta(days=10)
    certificate = issue_with_new_key(ca, approved(agent(), late), late).certificate
    assert certificate.not_valid_after_utc == ca.certificate.not_valid_after_utc


def test_expired_ca_issues_nothing(ca: CertificateAuthority) -> None:
    after = ca.certificate.not_valid_after_utc + timedelta(days=1)
    with pytest.raises(CertificateError) as raised:
        issue_with_new_key(ca, approved(agent(), after), after)
    assert raised.value.check is Check.EXPIRED and raised.value.field == "management-group CA notAfter"


def test_rsa_leaf_is_accepted_and_weak_rsa_key_is_not(ca: CertificateAuthority) -> None:
    rsa_leaf = issue_with_new_key(ca, approved(agent()), NOW, algorithm=KeyAlgorithm.RSA_2048)
    assert rsa_leaf.certificate.public_key().key_size == 2048  # type: ignore[union-attr]
    with pytest.raises(CertificateError) as raised:
        issue_certificate(ca, approved(agent()), rsa.generate_private_key(65537, 1024).public_key(), NOW)
    assert raised.value.check is Check.WEAK_KEY


def test_certificates_get_distinct_random_serials(ca: CertificateAuthority) -> None:
    serials = {issue_with_new_key(ca, approved(agent()), NOW).certificate.serial_number for _ in range(20)}
    assert len(serials) == 20 and all(s.bit_length() > 64 for s in serials)


def test_issued_key_and_certificate_export_as_pem(ca: CertificateAuthority) -> None:
    issued = issue_with_new_key(ca, Approval(agent(), "policy AutoApprove", NOW), NOW)
    assert issued.key_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert issued.certificate_pem().startswith(b"-----BEGIN CERTIFICATE-----")
