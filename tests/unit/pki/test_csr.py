"""CSR validation for enrollment and renewal, and signing only through an approval of the same identity."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from opsmgr.pki import CertificateAuthority, CertificateError, Check, build_csr, sign_csr, validate_csr
from opsmgr.pki.keys import PrivateKey, generate_private_key
from opsmgr.pki.pem import csr_pem
from opsmgr.pki.profiles import CLIENT_AUTH, SERVER_AUTH
from opsmgr.pki.verify import certificate_identity, extended_key_usages
from tests.unit.pki.forge import AGENT_FQDN, NOW, agent, approved, gateway


def _csr(cn: str = AGENT_FQDN, key: PrivateKey | None = None,
         extend: Callable[[x509.CertificateSigningRequestBuilder], x509.CertificateSigningRequestBuilder] = lambda b: b,
         ) -> x509.CertificateSigningRequest:
    key = key or generate_private_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    return extend(builder).sign(key, hashes.SHA256())


def _rejected(csr: x509.CertificateSigningRequest | bytes, check: Check, **kwargs: object) -> CertificateError:
    with pytest.raises(CertificateError) as raised:
        validate_csr(csr, kwargs.pop("expected", agent()), **kwargs)  # type: ignore[arg-type]
    assert raised.value.check is check, str(raised.value)
    assert "Fix:" in str(raised.value)
    return raised.value


def test_agent_csr_is_validated_and_signed_with_the_agent_profile(ca: CertificateAuthority) -> None:
    request = validate_csr(csr_pem(build_csr(generate_private_key(), "WEB01.contoso.test")), agent())
    certificate = sign_csr(ca, request, approved(agent()), NOW)
    assert certificate_identity(certificate) == agent()
    assert extended_key_usages(certificate) == {CLIENT_AUTH}


def test_gateway_csr_may_ask_for_its_configured_extra_names(ca: CertificateAuthority) -> None:
    csr = build_csr(generate_private_key(), "gw01.dmz.contoso.test", ["gw.contoso.com"])
    request = validate_csr(csr, gateway(), allowed_dns_names=["gw.contoso.com"])
    assert request.dns_names == ("gw01.dmz.contoso.test", "gw.contoso.com")
    assert extended_key_usages(sign_csr(ca, request, approved(gateway()), NOW)) == {SERVER_AUTH, CLIENT_AUTH}


def test_csr_is_not_signed_without_an_approval_of_the_same_identity(ca: CertificateAuthority) -> None:
    request = validate_csr(build_csr(generate_private_key(), AGENT_FQDN), agent())
    with pytest.raises(CertificateError) as raised:
        sign_csr(ca, request, approved(agent("db01.contoso.test")), NOW)
    assert raised.value.check is Check.NOT_APPROVED
    assert "opsmgr://contoso/agent/db01.contoso.test" in str(raised.value)


def test_csr_for_another_computer_is_rejected() -> None:
    error = _rejected(_csr("db01.contoso.test"), Check.CN_MISMATCH)
    assert error.field == "CSR subject CN" and "db01.contoso.test" in str(error)


@pytest.mark.parametrize("cn", ["web01", "web 01.contoso.test", "1.2.3.4"])
def test_csr_whose_cn_is_not_an_fqdn_is_rejected(cn: str) -> None:
    _rejected(_csr(cn), Check.INVALID_NAME)


def test_csr_without_cn_is_rejected() -> None:
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "contoso")])).sign(generate_private_key(),
                                                                                     hashes.SHA256())
    _rejected(csr, Check.INVALID_NAME)


@pytest.mark.parametrize("san", [
    x509.UniformResourceIdentifier("opsmgr://contoso/gateway/web01.contoso.test"),
    x509.DNSName("ms-agents.monitoring.svc"),
    x509.DNSName("*.contoso.test"),
    x509.IPAddress(ipaddress.ip_address("10.0.0.5")),
    x509.RFC822Name("admin@contoso.test"),
], ids=["role-uri", "server-name", "wildcard", "ip", "email"])
def test_csr_with_a_forbidden_san_is_rejected(san: x509.GeneralName) -> None:
    _rejected(_csr(extend=lambda b: b.add_extension(x509.SubjectAlternativeName([san]), critical=False)),
              Check.FORBIDDEN_SAN)


def test_gateway_csr_with_an_unconfigured_extra_name_is_rejected() -> None:
    csr = build_csr(generate_private_key(), "gw01.dmz.contoso.test", ["evil.contoso.test"])
    _rejected(csr, Check.FORBIDDEN_SAN, expected=gateway(), allowed_dns_names=["gw.contoso.com"])


@pytest.mark.parametrize("eku", [SERVER_AUTH, ExtendedKeyUsageOID.CODE_SIGNING,
                                 ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])
def test_agent_csr_with_a_forbidden_eku_is_rejected(eku: x509.ObjectIdentifier) -> None:
    error = _rejected(_csr(extend=lambda b: b.add_extension(x509.ExtendedKeyUsage([CLIENT_AUTH, eku]),
                                                            critical=False)), Check.FORBIDDEN_EKU)
    assert error.fix.startswith("request only clientAuth")


def test_agent_csr_asking_only_for_client_auth_is_accepted() -> None:
    csr = _csr(extend=lambda b: b.add_extension(x509.ExtendedKeyUsage([CLIENT_AUTH]), critical=False))
    assert validate_csr(csr, agent()).identity == agent()


def test_csr_asking_to_be_a_ca_is_rejected() -> None:
    _rejected(_csr(extend=lambda b: b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)),
              Check.FORBIDDEN_EXTENSION)


def test_csr_asking_for_certificate_signing_key_usage_is_rejected() -> None:
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    _rejected(_csr(extend=lambda b: b.add_extension(usage, critical=True)), Check.FORBIDDEN_EXTENSION)


def test_csr_with_an_unknown_extension_is_rejected() -> None:
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    error = _rejected(_csr(extend=lambda b: b.add_extension(ext, critical=False)), Check.FORBIDDEN_EXTENSION)
    assert "1.3.6.1.4.1.99999.1" in error.field


def test_csr_with_a_weak_key_is_rejected() -> None:
    error = _rejected(_csr(key=rsa.generate_private_key(65537, 1024)), Check.WEAK_KEY)
    assert error.value == "RSA 1024 bits"


def test_csr_whose_signature_does_not_match_its_key_is_rejected() -> None:
    der = bytearray(_csr().public_bytes(serialization.Encoding.DER))
    # The CN's last letter sits inside the signed part: changing it breaks the signature, not the encoding.
    position = bytes(der).index(AGENT_FQDN.encode()) + len(AGENT_FQDN) - 1
    der[position] = ord("x")
    _rejected(bytes(der), Check.BAD_SIGNATURE, expected=agent("web01.contoso.tesx"))


def test_garbage_csr_is_named_unreadable() -> None:
    error = _rejected(b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n",
                      Check.UNREADABLE)
    assert error.field == "CSR"
