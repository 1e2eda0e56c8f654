"""`opsmgr certimport`'s logic: check an imported identity (every check, each named) and write it with 0600 files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from opsmgr.pki.ca import TrustBundle
from opsmgr.pki.errors import CertificateError, Check
from opsmgr.pki.keys import PrivateKey, same_public_key
from opsmgr.pki.names import CA_FILE, CERTIFICATE_FILE, KEY_FILE, Identity, Role, normalize_fqdn
from opsmgr.pki.pem import (
    KeyAndCertificates,
    certificate_pem,
    is_pem,
    load_certificates,
    load_pkcs12,
    load_private_key,
    private_key_pem,
)
from opsmgr.pki.verify import check_extended_key_usage, check_identity, check_valid_at, verify_chain


@dataclass(frozen=True)
class ImportSource:
    """The bytes a person hands to certimport: PEM (certificate, maybe chain and key) or PKCS#12, and a CA bundle."""

    certificate: bytes
    ca_bundle: bytes
    key: bytes | None = None
    password: bytes | None = None


@dataclass(frozen=True)
class ImportedIdentity:
    identity: Identity
    key: PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    trust: TrustBundle


@dataclass(frozen=True)
class ImportOutcome:
    """Either an identity that passed every check, or every check that failed."""

    imported: ImportedIdentity | None
    failures: tuple[CertificateError, ...]


def read_key_and_certificates(source: ImportSource) -> KeyAndCertificates:
    """Find the key, the leaf (the certificate that matches the key) and its chain in PEM or PKCS#12 input."""
    if not is_pem(source.certificate) and source.key is None:
        return load_pkcs12(source.certificate, source.password, "--cert (PKCS#12)")
    key_bytes, key_field = (source.key, "--key") if source.key is not None else (source.certificate, "--cert")
    if b"PRIVATE KEY-----" not in key_bytes and is_pem(key_bytes):
        raise CertificateError(Check.UNREADABLE, key_field, "(no private key found)", "holds no private key",
                               "pass the PEM private key with --key, or a PKCS#12 file with --cert")
    key = load_private_key(key_bytes, source.password, key_field)
    certificates = load_certificates(source.certificate, "--cert")
    leaf = next((c for c in certificates if same_public_key(c.public_key(), key.public_key())), certificates[0])
    return KeyAndCertificates(key, leaf, tuple(c for c in certificates if c is not leaf))


def check_import(source: ImportSource, role: Role, fqdn: str, now: datetime, group: str | None = None) -> ImportOutcome:
    """Run every check certimport promises; an unreadable input stops early, everything else is reported together."""
    try:
        expected = normalize_fqdn(fqdn, "--fqdn")
        material = read_key_and_certificates(source)
        anchors = load_certificates(source.ca_bundle, "--ca-bundle")
    except CertificateError as error:
        return ImportOutcome(None, (error,))
    leaf = material.certificate
    checks: list[Callable[[], object]] = [
        lambda: _check_key_matches(material),
        lambda: check_valid_at(leaf, now),
        lambda: verify_chain(leaf, anchors, now, material.chain),
        lambda: check_extended_key_usage(leaf, role),
        lambda: check_identity(leaf, role, expected, group),
    ]
    failures = tuple(failure for check in checks if (failure := _failure(check)) is not None)
    if failures:
        return ImportOutcome(None, failures)
    identity = check_identity(leaf, role, expected, group)
    return ImportOutcome(ImportedIdentity(identity, material.key, leaf, material.chain, TrustBundle.of(*anchors)), ())


def _failure(check: Callable[[], object]) -> CertificateError | None:
    try:
        check()
    except CertificateError as error:
        return error
    return None


def _check_key_matches(material: KeyAndCertificates) -> None:
    if not same_public_key(material.certificate.public_key(), material.key.public_key()):
        raise CertificateError(Check.KEY_MISMATCH, "--key", "a different key pair",
                               f"does not belong to {material.certificate.subject.rfc4514_string()}'s certificate",
                               "pass the private key generated together with this certificate's request")


def write_identity(directory: Path, imported: ImportedIdentity) -> list[Path]:
    """Write tls.crt, tls.key and ca.crt as 0600 files in a 0700 directory; each file is replaced atomically."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    contents = {
        CA_FILE: imported.trust.pem(),
        KEY_FILE: private_key_pem(imported.key),
        CERTIFICATE_FILE: certificate_pem([imported.certificate, *imported.chain]),
    }
    written = []
    for name, data in contents.items():
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        try:
            os.fchmod(handle, 0o600)
            os.write(handle, data)
            os.fsync(handle)
        finally:
            os.close(handle)
        os.replace(temporary, directory / name)
        written.append(directory / name)
    return written
