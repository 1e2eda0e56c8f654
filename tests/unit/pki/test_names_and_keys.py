"""Identities, FQDNs and key policy: what a name or key must look like before anything is signed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from opsmgr.pki import CertificateError, Check, Identity, KeyAlgorithm, Role, generate_private_key
from opsmgr.pki.keys import check_public_key, describe_key
from opsmgr.pki.names import normalize_fqdn


def test_identity_round_trips_through_its_role_uri() -> None:
    identity = Identity.of("contoso", Role.GATEWAY, "GW01.Dmz.Contoso.Test.")
    assert identity.uri == "opsmgr://contoso/gateway/gw01.dmz.contoso.test"
    assert Identity.from_uri(identity.uri) == identity


@pytest.mark.parametrize("value", ["", "web01", "web_01.contoso.test", "-web.contoso.test", "10.0.0.1",
                                   "a" * 64 + ".contoso.test", "web01..contoso.test", "*.contoso.test"])
def test_invalid_fqdn_is_rejected_naming_field_value_and_fix(value: str) -> None:
    with pytest.raises(CertificateError) as raised:
        normalize_fqdn(value, "spec.fqdn")
    assert raised.value.check is Check.INVALID_NAME
    assert str(raised.value).startswith(f"spec.fqdn = {value!r}")
    assert "Fix:" in str(raised.value)


def test_identity_name_longer_than_a_cn_allows_is_rejected() -> None:
    long_name = ".".join(["abcdefghij"] * 6) + ".test"
    with pytest.raises(CertificateError, match="longer than 64"):
        Identity.of("contoso", Role.AGENT, long_name)


@pytest.mark.parametrize("uri", ["opsmgr://contoso/admin/web01.contoso.test", "https://contoso/agent/web01.test",
                                 "opsmgr://contoso/agent", "opsmgr://Bad_Group/agent/web01.contoso.test"])
def test_malformed_role_uri_is_rejected(uri: str) -> None:
    with pytest.raises(CertificateError):
        Identity.from_uri(uri)


@given(st.text(max_size=300))
def test_any_text_as_role_uri_yields_an_identity_or_our_error(text: str) -> None:
    try:
        identity = Identity.from_uri(text)
    except CertificateError:
        return
    assert Identity.from_uri(identity.uri) == identity


@given(st.text(max_size=300))
def test_any_text_as_fqdn_yields_a_lower_case_name_or_our_error(text: str) -> None:
    try:
        name = normalize_fqdn(text, "fqdn")
    except CertificateError:
        return
    assert name == name.lower() and "." in name


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_every_offered_key_algorithm_is_accepted(algorithm: KeyAlgorithm) -> None:
    key = generate_private_key(algorithm)
    assert check_public_key(key.public_key(), "key") == key.public_key()


def test_default_key_is_ecdsa_p256() -> None:
    assert describe_key(generate_private_key().public_key()) == "ECDSA P-256"


@pytest.mark.parametrize(("make_key", "shown"), [
    (lambda: rsa.generate_private_key(65537, 1024).public_key(), "RSA 1024 bits"),
    (lambda: rsa.generate_private_key(3, 2048).public_key(), "RSA exponent 3"),
    (lambda: ec.generate_private_key(ec.SECP256K1()).public_key(), "ECDSA secp256k1"),
    (lambda: ed25519.Ed25519PrivateKey.generate().public_key(), "Ed25519PublicKey"),
    (lambda: dsa.generate_private_key(2048).public_key(), "DSAPublicKey"),
], ids=["rsa-1024", "rsa-exponent-3", "secp256k1", "ed25519", "dsa"])
def test_weak_or_unsupported_key_is_rejected(make_key: Callable[[], object], shown: str) -> None:
    with pytest.raises(CertificateError) as raised:
        check_public_key(make_key(), "CSR public key")
    assert raised.value.check is Check.WEAK_KEY
    assert shown in str(raised.value)
    assert "P-256" in raised.value.fix
