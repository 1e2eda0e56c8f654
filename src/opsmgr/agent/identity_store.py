"""The agent's certificate, key and trust bundle on disk (tls.crt, tls.key, ca.crt, as `opsmgr certimport` writes
them and as a Kubernetes TLS Secret mounts them), and their replacement by a renewal.

A renewal changes three files that only work together, so it is journaled: the new files are written and synced
beside the old ones, then a commit marker, then the renames. Whoever opens the directory next (this process or
the agent after a crash) finishes a committed renewal or discards an uncommitted one, so the agent never starts
with a key that does not match its certificate.

This module loads cryptography: `opsmgr enroll` and the agent's short-lived identity helper use it, the
long-running agent never imports it (see `opsmgr.agent.identity`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from opsmgr.agent.identity import (
    COMMIT_MARKER,
    IDENTITY_FILES,
    PENDING_SUFFIX,
    AgentIdentity,
    IdentityError,
    read_identity_files,
)
from opsmgr.pki import CertificateError, TrustBundle, verify_chain
from opsmgr.pki.keys import PrivateKey, same_public_key
from opsmgr.pki.names import CA_FILE, CERTIFICATE_FILE, KEY_FILE
from opsmgr.pki.pem import certificate_pem, load_certificates, load_private_key, private_key_pem
from opsmgr.pki.verify import certificate_identity, common_name


@dataclass(frozen=True)
class ParsedIdentity:
    key: PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    trust: TrustBundle

    def facts(self) -> AgentIdentity:
        """What the long-running agent keeps: PEM bytes for gRPC, and the name, serial and validity."""
        return AgentIdentity(name=common_name(self.certificate) or "",
                             serial=format(self.certificate.serial_number, "x"),
                             not_before=self.certificate.not_valid_before_utc,
                             not_after=self.certificate.not_valid_after_utc, key_pem=private_key_pem(self.key),
                             chain_pem=certificate_pem([self.certificate, *self.chain]), trust_pem=self.trust.pem())


def parse_identity(key_pem: bytes, chain_pem: bytes, trust_pem: bytes, fields: tuple[str, str, str]) -> ParsedIdentity:
    """Key, certificates and trust, with the leaf found by the key; `fields` name the three sources in errors."""
    key_field, certificate_field, trust_field = fields
    try:
        key = load_private_key(key_pem, field=key_field)
        certificates = load_certificates(chain_pem, certificate_field)
        trust = TrustBundle.from_pem(trust_pem, trust_field)
    except CertificateError as exc:
        raise IdentityError(str(exc)) from exc
    leaf = next((c for c in certificates if same_public_key(c.public_key(), key.public_key())), None)
    if leaf is None:
        raise IdentityError(f"{key_field} does not belong to the certificate in {certificate_field}: "
                            "install the key generated with this certificate's request")
    return ParsedIdentity(key, leaf, tuple(c for c in certificates if c is not leaf), trust)


class IdentityStore:
    """Loads, checks and replaces the identity files; the agent reaches it through its identity helper."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def load(self) -> ParsedIdentity:
        self.recover()
        key, certificate, trust = read_identity_files(self.directory)
        return parse_identity(key, certificate, trust, (str(self.directory / KEY_FILE),
                                                        str(self.directory / CERTIFICATE_FILE),
                                                        str(self.directory / CA_FILE)))

    def recover(self) -> None:
        """Finish a committed renewal, or discard an interrupted one (the old identity is still whole)."""
        committed = (self.directory / COMMIT_MARKER).exists()
        for name in IDENTITY_FILES:
            pending = self.directory / f"{name}{PENDING_SUFFIX}"
            if pending.exists():
                if committed:
                    os.replace(pending, self.directory / name)
                else:
                    pending.unlink()
        if committed:
            _sync_directory(self.directory)
            (self.directory / COMMIT_MARKER).unlink()
            _sync_directory(self.directory)

    def check_renewal(self, current: ParsedIdentity, key: PrivateKey, certificate_pem_bytes: bytes,
                      trust_pem: bytes, now: datetime) -> tuple[list[x509.Certificate], TrustBundle]:
        """The new chain and trust, once they are proven to fit: our new key, our identity, a chain to the trust."""
        certificates = load_certificates(certificate_pem_bytes, "Renewal.certificate_pem")
        trust = TrustBundle.from_pem(trust_pem, "Renewal.trust_bundle_pem") if trust_pem else current.trust
        leaf = certificates[0]
        if not same_public_key(leaf.public_key(), key.public_key()):
            raise IdentityError("Renewal.certificate_pem is not for the key this agent requested it with: keeping "
                                "the current certificate; the next renewal check asks again")
        if certificate_identity(leaf) != certificate_identity(current.certificate):
            raise IdentityError("Renewal.certificate_pem names another identity than this agent's: keeping the "
                                "current certificate")
        verify_chain(leaf, trust.certificates, now, certificates[1:])
        return certificates, trust

    def write_renewal(self, key: PrivateKey, certificates: list[x509.Certificate], trust: TrustBundle) -> None:
        """Replace key, certificate and trust together: written, synced, committed, then renamed (0600 files)."""
        contents = {KEY_FILE: private_key_pem(key), CERTIFICATE_FILE: certificate_pem(certificates),
                    CA_FILE: trust.pem()}
        for name, data in contents.items():
            _write_private(self.directory, f"{name}{PENDING_SUFFIX}", data)
        _sync_directory(self.directory)
        _write_private(self.directory, COMMIT_MARKER, b"")
        _sync_directory(self.directory)
        self.recover()

    def write_trust(self, trust_pem: bytes) -> TrustBundle:
        """Replace ca.crt alone (a TrustUpdate): one atomic rename."""
        trust = TrustBundle.from_pem(trust_pem, "TrustUpdate.trust_bundle_pem")
        _write_private(self.directory, f"{CA_FILE}{PENDING_SUFFIX}.trust", trust.pem())  # not a journal name: alone
        os.replace(self.directory / f"{CA_FILE}{PENDING_SUFFIX}.trust", self.directory / CA_FILE)
        _sync_directory(self.directory)
        return trust


def _write_private(directory: Path, name: str, data: bytes) -> None:
    # Created 0600 from the first byte: the key is never readable by others, not even for an instant.
    path = directory / name
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_directory(directory: Path) -> None:
    # A rename is durable only once the directory entry itself is synced.
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
