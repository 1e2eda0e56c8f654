"""Key algorithms opsmgr issues and accepts: ECDSA P-256 by default; P-384 and RSA 2048 to 4096 accepted."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeAlias

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from opsmgr.pki.errors import CertificateError, Check

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

RSA_SIZES = (2048, 3072, 4096)
EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}
_RSA_EXPONENT = 65537


class KeyAlgorithm(StrEnum):
    ECDSA_P256 = "ECDSA-P256"
    ECDSA_P384 = "ECDSA-P384"
    RSA_2048 = "RSA-2048"
    RSA_3072 = "RSA-3072"
    RSA_4096 = "RSA-4096"


DEFAULT_KEY_ALGORITHM = KeyAlgorithm.ECDSA_P256


def generate_private_key(algorithm: KeyAlgorithm = DEFAULT_KEY_ALGORITHM) -> PrivateKey:
    if algorithm is KeyAlgorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm is KeyAlgorithm.ECDSA_P384:
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=_RSA_EXPONENT, key_size=int(algorithm.value.split("-")[1]))


def check_public_key(key: object, field: str) -> PublicKey:
    """Return `key` when opsmgr accepts its type and size, else raise naming what is wrong."""
    fix = f"use an ECDSA P-256 key (or P-384, or RSA {'/'.join(map(str, RSA_SIZES))} with exponent 65537)"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in EC_CURVES:
            raise CertificateError(Check.WEAK_KEY, field, f"ECDSA {key.curve.name}", "uses an unsupported curve", fix)
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size not in RSA_SIZES:
            raise CertificateError(Check.WEAK_KEY, field, f"RSA {key.key_size} bits",
                                   "is not an accepted RSA key size", fix)
        if key.public_numbers().e < _RSA_EXPONENT:
            raise CertificateError(Check.WEAK_KEY, field, f"RSA exponent {key.public_numbers().e}",
                                   "uses a small public exponent", fix)
        return key
    raise CertificateError(Check.WEAK_KEY, field, type(key).__name__.removeprefix("_"),
                           "is not an ECDSA or RSA key", fix)


def check_private_key(key: object, field: str) -> PrivateKey:
    """Return `key` when its public half passes `check_public_key`."""
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        check_public_key(key.public_key(), field)
        return key
    public = getattr(key, "public_key", None)
    check_public_key(public() if callable(public) else key, field)
    raise AssertionError("check_public_key accepts only ECDSA and RSA keys")


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """The hash a CA key signs with: matched to the curve's strength, SHA-256 for RSA."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return hashes.SHA384()
    return hashes.SHA256()


def describe_key(key: PublicKey) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {EC_CURVES.get(key.curve.name, key.curve.name)}"
    return f"RSA {key.key_size}"


def same_public_key(left: CertificatePublicKeyTypes, right: CertificatePublicKeyTypes) -> bool:
    encoding, format_ = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return left.public_bytes(encoding, format_) == right.public_bytes(encoding, format_)
