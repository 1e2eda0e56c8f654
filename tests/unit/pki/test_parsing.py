"""Whatever bytes arrive as a certificate, key, CSR, PKCS#12 or bundle, the answer is a value or a CertificateError."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsmgr.pki import CertificateAuthority, CertificateError, Check, Role
from opsmgr.pki.certimport import ImportSource, check_import, read_key_and_certificates
from opsmgr.pki.pem import certificate_pem, load_certificate, load_certificates, load_csr, load_pkcs12, load_private_key
from tests.unit.pki.forge import AGENT_FQDN, NOW, forge_leaf

_settings = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _pem(label: str, body: bytes) -> bytes:
    return f"-----BEGIN {label}-----\n".encode() + base64.encodebytes(body) + f"-----END {label}-----\n".encode()


_labels = st.sampled_from(["CERTIFICATE", "PRIVATE KEY", "EC PRIVATE KEY", "CERTIFICATE REQUEST", "RSA PRIVATE KEY"])
_garbage = st.binary(max_size=2048) | st.builds(_pem, _labels, st.binary(max_size=1024))


@_settings
@given(_garbage)
def test_garbage_never_escapes_as_anything_but_our_error(data: bytes) -> None:
    for parse in (load_certificate, load_certificates, load_private_key, load_csr,
                  lambda d: load_pkcs12(d, b"secret")):
        try:
            parse(data)
        except CertificateError as error:
            assert error.check in {Check.UNREADABLE, Check.WEAK_KEY}
            assert "Fix:" in str(error)


@pytest.fixture(scope="module")
def leaf_der(ca: CertificateAuthority) -> bytes:
    # Made once: hypothesis replays draws, so the bytes it corrupts must not change between examples.
    return forge_leaf(ca, AGENT_FQDN).certificate.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def pkcs12_blob(ca: CertificateAuthority) -> bytes:
    leaf = forge_leaf(ca, AGENT_FQDN)
    return pkcs12.serialize_key_and_certificates(b"web01", leaf.key, leaf.certificate, None,
                                                 serialization.BestAvailableEncryption(b"secret"))


@_settings
@given(st.data())
def test_corrupted_certificate_der_is_parsed_or_refused_cleanly(leaf_der: bytes, data: st.DataObject) -> None:
    der = bytearray(leaf_der)
    for _ in range(data.draw(st.integers(1, 4))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(der)))
    for candidate in (bytes(der), bytes(der[:cut]), _pem("CERTIFICATE", bytes(der))):
        try:
            load_certificate(candidate)
        except CertificateError as error:
            assert error.check is Check.UNREADABLE


@_settings
@given(st.data())
def test_corrupted_pkcs12_is_refused_cleanly(pkcs12_blob: bytes, data: st.DataObject) -> None:
    blob = bytearray(pkcs12_blob)
    blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    password = data.draw(st.sampled_from([b"secret", b"wrong", None]))
    try:
        load_pkcs12(bytes(blob), password)
    except CertificateError as error:
        assert error.check in {Check.UNREADABLE, Check.WEAK_KEY}


@_settings
@given(cert=_garbage, key=st.none() | _garbage, bundle=_garbage, password=st.none() | st.binary(max_size=16),
       fqdn=st.text(max_size=80))
def test_certimport_checks_report_garbage_as_failures_never_exceptions(cert: bytes, key: bytes | None, bundle: bytes,
                                                                      password: bytes | None, fqdn: str) -> None:
    outcome = check_import(ImportSource(cert, bundle, key, password), Role.AGENT, fqdn, NOW)
    assert outcome.imported is None and outcome.failures


def test_empty_bundle_is_named_unreadable() -> None:
    with pytest.raises(CertificateError) as raised:
        load_certificates(b"", "--ca-bundle")
    assert raised.value.field == "--ca-bundle"


def test_file_with_two_certificates_where_one_is_expected_is_named(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateError, match="2 certificates"):
        load_certificate(certificate_pem([ca.certificate, ca.certificate]))


def test_pem_holding_certificates_but_no_key_is_named(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateError) as raised:
        read_key_and_certificates(ImportSource(ca.certificate_pem(), ca.certificate_pem()))
    assert raised.value.field == "--cert" and "no private key" in str(raised.value)
