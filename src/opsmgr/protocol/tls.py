"""TLS policy of the agent channel (management server and gateway alike): TLS 1.2+ with ECDHE and AEAD ciphers only.

gRPC Python cannot set cipher suites per server; its core reads GRPC_SSL_CIPHER_SUITES once, before the first
secure channel or port. `restrict_cipher_suites` must therefore run before grpc is first used in the process
(`opsmgr server` and `opsmgr gateway` call it before importing anything that imports grpc, so this module imports
none). TLS 1.3 suites are all AEAD with ECDHE, and gRPC's minimum protocol version is TLS 1.2 already.
"""

from __future__ import annotations

import os

# TLS 1.2 suites only; BoringSSL/OpenSSL pick the TLS 1.3 ones themselves (all AEAD).
AEAD_ECDHE_SUITES = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
))
CIPHER_ENV = "GRPC_SSL_CIPHER_SUITES"


def restrict_cipher_suites() -> None:
    """Force the AEAD/ECDHE list, overriding whatever the environment set (a weaker list is never honoured)."""
    os.environ[CIPHER_ENV] = AEAD_ECDHE_SUITES
