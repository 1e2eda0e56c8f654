"""Moved to `opsmgr.pki.revocation_watch`, which the gateway shares; kept so existing imports still work."""

from opsmgr.pki.revocation_watch import RevocationWatch, read_revocations

__all__ = ["RevocationWatch", "read_revocations"]
