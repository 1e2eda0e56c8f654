"""Renewal replaces key, certificate and trust together (0600), and a crash mid-renewal leaves a whole identity."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from opsmgr.agent.identity import COMMIT_MARKER, IdentityError
from opsmgr.agent.identity_store import IdentityStore
from opsmgr.pki import Approval, Identity, Role, TrustBundle, create_ca, issue_certificate, issue_with_new_key
from opsmgr.pki.keys import generate_private_key

NOW = datetime.now(UTC)
CA = create_ca("contoso", NOW)
AGENT = Identity.of("contoso", Role.AGENT, "web01.contoso.test")


@pytest.fixture
def store(tmp_path: Path) -> IdentityStore:
    issued = issue_with_new_key(CA, Approval(AGENT, "test", NOW), NOW)
    (tmp_path / "tls.key").write_bytes(issued.key_pem())
    (tmp_path / "tls.crt").write_bytes(issued.certificate_pem())
    (tmp_path / "ca.crt").write_bytes(CA.certificate_pem())
    return IdentityStore(tmp_path)


def test_a_checked_renewal_is_installed_with_private_files(store: IdentityStore) -> None:
    current = store.load()
    key = generate_private_key()
    renewed = issue_certificate(CA, Approval(AGENT, "renewal", NOW), key.public_key(), NOW)
    pem = renewed.public_bytes(Encoding.PEM)
    certificates, trust = store.check_renewal(current, key, pem, CA.certificate_pem(), NOW)
    store.write_renewal(key, certificates, trust)
    loaded = store.load()
    assert loaded.certificate.serial_number == renewed.serial_number
    for name in ("tls.key", "tls.crt", "ca.crt"):
        assert stat.S_IMODE((store.directory / name).stat().st_mode) == 0o600


def test_a_certificate_for_another_key_is_refused(store: IdentityStore) -> None:
    current = store.load()
    other = issue_with_new_key(CA, Approval(AGENT, "x", NOW), NOW)
    with pytest.raises(IdentityError, match="not for the key"):
        store.check_renewal(current, generate_private_key(), other.certificate_pem(), b"", NOW)


def test_an_uncommitted_renewal_is_discarded_and_a_committed_one_finished(store: IdentityStore) -> None:
    before = store.load().certificate.serial_number
    (store.directory / "tls.key.new").write_bytes(b"half written")
    assert store.load().certificate.serial_number == before
    assert not (store.directory / "tls.key.new").exists()
    key = generate_private_key()
    renewed = issue_certificate(CA, Approval(AGENT, "renewal", NOW), key.public_key(), NOW)
    store.write_renewal(key, [renewed], TrustBundle.of(CA))
    (store.directory / COMMIT_MARKER).write_bytes(b"")  # as if the process died after committing
    assert store.load().certificate.serial_number == renewed.serial_number

