"""The long-running agent's view of its identity, checked by the real identity helper process: what a connection
gets, the errors a person sees (file, problem, fix), and renewals and trust updates installed through it."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from opsmgr.agent.identity import IdentityError, IdentityFiles
from opsmgr.pki import Approval, Identity, Role, create_ca, issue_with_new_key, sign_csr, validate_csr

NOW = datetime.now(UTC)
CA = create_ca("contoso", NOW)
FQDN = "web01.contoso.test"
AGENT = Identity.of("contoso", Role.AGENT, FQDN)


def install(directory: Path, key_pem: bytes, certificate_pem: bytes, ca_pem: bytes = CA.certificate_pem()) -> None:
    (directory / "tls.key").write_bytes(key_pem)
    (directory / "tls.crt").write_bytes(certificate_pem)
    (directory / "ca.crt").write_bytes(ca_pem)


@pytest.fixture
def files(tmp_path: Path) -> IdentityFiles:
    issued = issue_with_new_key(CA, Approval(AGENT, "test", NOW), NOW)
    install(tmp_path, issued.key_pem(), issued.certificate_pem())
    return IdentityFiles(tmp_path)


def test_a_connection_gets_the_certificate_s_facts_and_the_pem_files(files: IdentityFiles) -> None:
    identity = files.load()
    assert identity.name == FQDN
    assert identity.not_before <= NOW + timedelta(minutes=5) < identity.not_after
    assert identity.chain_pem == (files.directory / "tls.crt").read_bytes()
    assert identity.trust_pem == CA.certificate_pem()


def test_replaced_files_are_used_by_the_next_connection(files: IdentityFiles) -> None:
    first = files.load()
    other = issue_with_new_key(CA, Approval(AGENT, "reissued", NOW), NOW)
    install(files.directory, other.key_pem(), other.certificate_pem())
    assert files.load().serial == format(other.certificate.serial_number, "x") != first.serial


def test_missing_files_are_named_with_their_fix(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match=r"tls\.key cannot be read .*run `opsmgr certimport` or enroll"):
        IdentityFiles(tmp_path).load()


def test_a_key_of_another_certificate_is_named_with_its_fix(files: IdentityFiles) -> None:
    other = issue_with_new_key(CA, Approval(AGENT, "other", NOW), NOW)
    (files.directory / "tls.key").write_bytes(other.key_pem())
    for _ in range(2):  # the second answer comes without asking the helper again, and says the same
        with pytest.raises(IdentityError, match=r"tls\.key does not belong to the certificate in .*tls\.crt: install"):
            files.load()


def test_an_unreadable_certificate_names_the_file(files: IdentityFiles) -> None:
    (files.directory / "tls.crt").write_bytes(b"not a certificate")
    with pytest.raises(IdentityError, match=r"tls\.crt"):
        files.load()


def test_a_renewal_requested_and_answered_replaces_the_identity_with_private_files(files: IdentityFiles) -> None:
    current = files.load()
    request = files.request_renewal(FQDN)
    renewed = sign_csr(CA, validate_csr(request.csr_pem, AGENT), Approval(AGENT, "renewal", NOW), NOW)
    files.install_renewal(current, request.key_pem, renewed.public_bytes(Encoding.PEM), b"")
    assert files.load().serial == format(renewed.serial_number, "x")
    assert (files.directory / "tls.key").read_bytes() == request.key_pem
    for name in ("tls.key", "tls.crt", "ca.crt"):
        assert stat.S_IMODE((files.directory / name).stat().st_mode) == 0o600


def test_a_renewal_for_another_key_is_refused_and_the_identity_kept(files: IdentityFiles) -> None:
    current = files.load()
    request = files.request_renewal(FQDN)
    other = issue_with_new_key(CA, Approval(AGENT, "x", NOW), NOW)
    with pytest.raises(IdentityError, match="not for the key this agent requested it with"):
        files.install_renewal(current, request.key_pem, other.certificate_pem(), b"")
    assert files.load() == current


def test_a_trust_update_is_checked_then_used(files: IdentityFiles) -> None:
    with pytest.raises(IdentityError, match=r"TrustUpdate\.trust_bundle_pem"):
        files.write_trust(b"garbage")
    assert (files.directory / "ca.crt").read_bytes() == CA.certificate_pem()
    both = CA.certificate_pem() + create_ca("contoso", NOW).certificate_pem()
    files.write_trust(both)
    assert files.load().trust_pem.count(b"BEGIN CERTIFICATE") == 2
