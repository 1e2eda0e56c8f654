"""What a server checks when a stream opens (`authorize_peer`) and when a chain is verified (`verify_chain`)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography import x509

from opsmgr.pki import (
    CertificateAuthority,
    CertificateError,
    Check,
    Identity,
    RevocationReason,
    RevocationSet,
    Role,
    authorize_peer,
    create_ca,
    issue_with_new_key,
    peer_certificate,
    verify_chain,
)
from opsmgr.pki.pem import certificate_pem
from opsmgr.pki.profiles import CLIENT_AUTH, SERVER_AUTH
from tests.unit.pki.forge import AGENT_FQDN, GATEWAY_FQDN, GROUP, NOW, agent, approved, forge_leaf, gateway

NO_REVOCATIONS = RevocationSet()


def _agent_certificate(ca: CertificateAuthority) -> x509.Certificate:
    return issue_with_new_key(ca, approved(agent()), NOW).certificate


def _refused(certificate: x509.Certificate, check: Check, *, role: Role = Role.AGENT,
             revocations: RevocationSet = NO_REVOCATIONS, name: str | None = None, group: str = GROUP,
             when: datetime = NOW) -> CertificateError:
    with pytest.raises(CertificateError) as raised:
        authorize_peer(certificate, group=group, role=role, revocations=revocations, now=when, name=name)
    assert raised.value.check is check, str(raised.value)
    return raised.value


def test_agent_certificate_is_authorized_as_that_agent(ca: CertificateAuthority) -> None:
    identity = authorize_peer(_agent_certificate(ca), group=GROUP, role=Role.AGENT, revocations=NO_REVOCATIONS,
                              now=NOW)
    assert identity == agent()


def test_agent_certificate_cannot_act_as_gateway(ca: CertificateAuthority) -> None:
    error = _refused(_agent_certificate(ca), Check.WRONG_ROLE, role=Role.GATEWAY)
    assert "is an agent certificate, not a gateway certificate" in str(error)


def test_agent_certificate_cannot_act_as_management_server(ca: CertificateAuthority) -> None:
    _refused(_agent_certificate(ca), Check.WRONG_ROLE, role=Role.MANAGEMENT_SERVER)


def test_gateway_certificate_cannot_act_as_agent(ca: CertificateAuthority) -> None:
    gateway_certificate = issue_with_new_key(ca, approved(gateway()), NOW).certificate
    _refused(gateway_certificate, Check.WRONG_ROLE)
    assert authorize_peer(gateway_certificate, group=GROUP, role=Role.GATEWAY, revocations=NO_REVOCATIONS,
                          now=NOW) == gateway()


def test_revoked_agent_is_refused_at_stream_open(ca: CertificateAuthority) -> None:
    certificate = _agent_certificate(ca)
    revocations = NO_REVOCATIONS.revoke(certificate, RevocationReason.KEY_COMPROMISE, NOW)
    error = _refused(certificate, Check.REVOKED, revocations=revocations)
    assert format(certificate.serial_number, "x") in str(error)


def test_agent_connecting_under_another_name_is_refused(ca: CertificateAuthority) -> None:
    _refused(_agent_certificate(ca), Check.CN_MISMATCH, name="db01.contoso.test")


def test_certificate_of_another_management_group_is_refused(ca: CertificateAuthority) -> None:
    _refused(_agent_certificate(ca), Check.WRONG_GROUP, group="fabrikam")


def test_certificate_whose_cn_and_role_uri_disagree_is_refused(ca: CertificateAuthority) -> None:
    forged = forge_leaf(ca, AGENT_FQDN, uris=[Identity.of(GROUP, Role.AGENT, "db01.contoso.test").uri])
    _refused(forged.certificate, Check.CN_MISMATCH)


def test_certificate_with_two_roles_is_refused(ca: CertificateAuthority) -> None:
    forged = forge_leaf(ca, AGENT_FQDN, uris=[agent().uri, Identity.of(GROUP, Role.GATEWAY, AGENT_FQDN).uri])
    _refused(forged.certificate, Check.WRONG_ROLE)


def test_certificate_without_client_auth_is_refused(ca: CertificateAuthority) -> None:
    forged = forge_leaf(ca, AGENT_FQDN, ekus=[SERVER_AUTH], uris=[agent().uri])
    error = _refused(forged.certificate, Check.WRONG_EKU)
    assert error.value == "serverAuth"


@pytest.mark.parametrize(("offset", "check"), [(timedelta(days=400), Check.EXPIRED),
                                               (-timedelta(days=1), Check.NOT_YET_VALID)])
def test_certificate_outside_its_validity_is_refused(ca: CertificateAuthority, offset: timedelta,
                                                     check: Check) -> None:
    _refused(_agent_certificate(ca), check, when=NOW + offset)


def test_imported_certificate_without_role_uri_may_act_only_as_agent_unless_registered(
        ca: CertificateAuthority) -> None:
    imported = forge_leaf(ca, GATEWAY_FQDN, ekus=[SERVER_AUTH, CLIENT_AUTH]).certificate
    assert authorize_peer(imported, group=GROUP, role=Role.AGENT, revocations=NO_REVOCATIONS,
                          now=NOW) == agent(GATEWAY_FQDN)
    _refused(imported, Check.WRONG_ROLE, role=Role.GATEWAY)
    registered = authorize_peer(imported, group=GROUP, role=Role.GATEWAY, revocations=NO_REVOCATIONS, now=NOW,
                                name=GATEWAY_FQDN)
    assert registered == gateway()


def test_peer_certificate_is_read_from_the_grpc_auth_context(ca: CertificateAuthority) -> None:
    certificate = _agent_certificate(ca)
    assert peer_certificate({"x509_pem_cert": [certificate_pem(certificate)]}) == certificate
    with pytest.raises(CertificateError) as raised:
        peer_certificate({"transport_security_type": [b"ssl"]})
    assert raised.value.field == "client certificate"


def test_chain_through_an_intermediate_verifies(ca: CertificateAuthority) -> None:
    intermediate_key = forge_leaf(ca, "unused.contoso.test").key
    intermediate = forge_leaf(ca, "Issuing CA 1", ekus=[], key=intermediate_key, ca=True).certificate
    issuing = CertificateAuthority(intermediate, intermediate_key)
    leaf = forge_leaf(issuing, AGENT_FQDN).certificate
    assert verify_chain(leaf, [ca.certificate], NOW, [intermediate]) == [leaf, intermediate, ca.certificate]


def test_certificate_from_another_ca_does_not_verify(ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateError) as raised:
        verify_chain(_agent_certificate(other_ca), [ca.certificate], NOW)
    assert raised.value.check is Check.WRONG_CA
    assert raised.value.field == "certificate issuer"


def test_certificate_signed_by_an_impostor_with_the_same_ca_name_does_not_verify(ca: CertificateAuthority) -> None:
    impostor = CertificateAuthority(ca.certificate, create_ca(GROUP, NOW).key)
    forged = forge_leaf(impostor, AGENT_FQDN).certificate
    with pytest.raises(CertificateError) as raised:
        verify_chain(forged, [ca.certificate], NOW)
    assert raised.value.check is Check.WRONG_CA


def test_leaf_issued_by_a_leaf_does_not_verify(ca: CertificateAuthority) -> None:
    parent = forge_leaf(ca, "parent.contoso.test")
    child = forge_leaf(CertificateAuthority(parent.certificate, parent.key), AGENT_FQDN).certificate
    with pytest.raises(CertificateError) as raised:
        verify_chain(child, [ca.certificate], NOW, [parent.certificate])
    assert raised.value.check is Check.NOT_A_CA


def test_ca_certificate_is_not_accepted_as_an_identity(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateError) as raised:
        verify_chain(ca.certificate, [ca.certificate], NOW)
    assert raised.value.check is Check.LEAF_IS_CA
