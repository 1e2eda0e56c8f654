"""Moved to `opsmgr.protocol.tls`, which the gateway shares; kept so existing imports still work."""

from opsmgr.protocol.tls import AEAD_ECDHE_SUITES, CIPHER_ENV, restrict_cipher_suites

__all__ = ["AEAD_ECDHE_SUITES", "CIPHER_ENV", "restrict_cipher_suites"]
