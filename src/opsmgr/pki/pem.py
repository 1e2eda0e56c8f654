"""Reading and writing certificates, keys, CSRs and PKCS#12: any malformed input becomes a CertificateError."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.utils import CryptographyDeprecationWarning

from opsmgr.pki.errors import CertificateError, Check
from opsmgr.pki.keys import PrivateKey, check_private_key

_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
# Parsing is lazy in places (extensions, names): these are every exception a malformed input can raise.
_PARSE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, IndexError, UnicodeError, OverflowError,
                 x509.InvalidVersion, CryptographyDeprecationWarning)
_T = TypeVar("_T")


def _parsed(field: str, what: str, fix: str, parse: Callable[[], _T]) -> _T:
    try:
        with warnings.catch_warnings():
            # What cryptography still parses with a deprecation warning (e.g. a negative serial) it will refuse later.
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            return parse()
    except CertificateError:
        raise
    except _PARSE_ERRORS as exc:
        raise CertificateError(Check.UNREADABLE, field, _describe(exc), f"is not a readable {what}", fix) from exc


def _describe(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _touched(certificate: x509.Certificate) -> x509.Certificate:
    # Force every lazily parsed part now, so a malformed certificate fails here and not deep inside a check.
    _ = (certificate.subject.rfc4514_string(), certificate.issuer.rfc4514_string(), list(certificate.extensions),
         certificate.not_valid_before_utc, certificate.not_valid_after_utc, certificate.serial_number,
         certificate.signature_hash_algorithm, certificate.public_key())
    return certificate


def load_certificate(data: bytes, field: str = "certificate") -> x509.Certificate:
    """Parse one certificate from PEM or DER."""
    certificates = load_certificates(data, field)
    if len(certificates) != 1:
        raise CertificateError(Check.UNREADABLE, field, f"{len(certificates)} certificates",
                               "must hold exactly one certificate", "pass a file with the one certificate")
    return certificates[0]


def load_certificates(data: bytes, field: str = "CA bundle") -> list[x509.Certificate]:
    """Parse a PEM bundle (one or more certificates) or a single DER certificate."""
    fix = "pass PEM ('-----BEGIN CERTIFICATE-----') or DER X.509 certificates"

    def parse() -> list[x509.Certificate]:
        if _PEM_CERTIFICATE in data:
            return [_touched(c) for c in x509.load_pem_x509_certificates(data)]
        return [_touched(x509.load_der_x509_certificate(data))]

    return _parsed(field, "X.509 certificate", fix, parse)


def load_private_key(data: bytes, password: bytes | None = None, field: str = "private key") -> PrivateKey:
    """Parse a PEM or DER private key (PKCS#8, SEC1 or PKCS#1), encrypted when `password` is given."""
    fix = "pass the unencrypted PEM key, or the right password for an encrypted one"

    def parse() -> PrivateKey:
        loader = serialization.load_pem_private_key if b"-----BEGIN" in data else serialization.load_der_private_key
        key = loader(data, password=password or None)
        return check_private_key(key, field)

    return _parsed(field, "private key", fix, parse)


def load_csr(data: bytes, field: str = "certificate signing request") -> x509.CertificateSigningRequest:
    """Parse a PEM or DER PKCS#10 request, touching every lazily parsed part."""
    fix = "send a PKCS#10 request ('-----BEGIN CERTIFICATE REQUEST-----') made by the agent for its own key"

    def parse() -> x509.CertificateSigningRequest:
        pem = b"-----BEGIN" in data
        csr = x509.load_pem_x509_csr(data) if pem else x509.load_der_x509_csr(data)
        _ = (csr.subject.rfc4514_string(), list(csr.extensions), csr.public_key(), csr.signature_hash_algorithm,
             csr.is_signature_valid)
        return csr

    return _parsed(field, "certificate signing request", fix, parse)


@dataclass(frozen=True)
class KeyAndCertificates:
    """What an identity file holds: a private key, its certificate and any chain that came with it."""

    key: PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]


def load_pkcs12(data: bytes, password: bytes | None, field: str = "PKCS#12 file") -> KeyAndCertificates:
    """Parse a PKCS#12 (.pfx/.p12) file; a wrong or missing password is named as such."""
    try:
        with warnings.catch_warnings():
            # Windows exports BER rather than DER; cryptography reads it and warns, which is noise to our user.
            warnings.filterwarnings("ignore", "PKCS#12 bundle could not be parsed as DER")
            bundle = pkcs12.load_pkcs12(data, password or None)
    except _PARSE_ERRORS as exc:
        problem = "cannot be opened: wrong or missing password, or not PKCS#12"
        raise CertificateError(Check.UNREADABLE, field, _describe(exc), problem,
                               "pass the export password with --password-file or OPSMGR_CERTIMPORT_PASSWORD, "
                               "and a .pfx/.p12 file that holds the private key") from exc
    if bundle.key is None or bundle.cert is None:
        missing = "private key" if bundle.key is None else "certificate"
        raise CertificateError(Check.UNREADABLE, field, f"no {missing}", f"holds no {missing}",
                               "export the certificate together with its private key")

    def parse() -> KeyAndCertificates:
        assert bundle.cert is not None
        return KeyAndCertificates(check_private_key(bundle.key, field), _touched(bundle.cert.certificate),
                                  tuple(_touched(c.certificate) for c in bundle.additional_certs))

    return _parsed(field, "PKCS#12 file", "re-export the PKCS#12 file", parse)


def is_pem(data: bytes) -> bool:
    return b"-----BEGIN" in data


def certificate_pem(certificates: x509.Certificate | Sequence[x509.Certificate]) -> bytes:
    items = [certificates] if isinstance(certificates, x509.Certificate) else certificates
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in items)


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)
