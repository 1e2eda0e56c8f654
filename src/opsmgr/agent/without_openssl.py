"""`opsmgr agent` imports asyncio and hashlib as if Python had been built without OpenSSL.

The agent speaks TLS to its servers through grpc, which brings its own BoringSSL. asyncio imports Python's ssl module
only to offer TLS streams the agent does not use, and hashlib (imported by pydantic through secrets and hmac) loads
OpenSSL's libcrypto for digests that Python also has built in: together about 4.4 MB of the agent's 50 MB (issue 9).
Both modules take a missing OpenSSL as a normal case and fall back: asyncio offers no TLS, hashlib uses its builtin
sha256, sha1, md5 and blake2. The places that do speak TLS from Python, an HTTPS probe and a node agent's pod listing,
import ssl when they run and use blocking sockets in a worker thread, which need nothing of asyncio's. An asyncio TLS
stream opened in this process fails loudly ("stdlib ssl module not available"), never silently.
"""

from __future__ import annotations

import importlib
import sys

OPENSSL_MODULES = ("ssl", "_hashlib")
# The standard modules that decide at import time whether OpenSSL is there, and keep that answer.
DECIDING_MODULES = ("asyncio", "hashlib", "hmac")


def import_without_openssl() -> None:
    """Import asyncio, hashlib and hmac with OpenSSL absent; a later `import ssl` works as usual."""
    if any(name in sys.modules for name in (*OPENSSL_MODULES, *DECIDING_MODULES)):
        return  # a test or a tool imported them first: there is nothing left to save
    # The import system raises ImportError for a name mapped to None, which these modules expect without OpenSSL.
    for name in OPENSSL_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        for name in DECIDING_MODULES:
            importlib.import_module(name)
    finally:
        for name in OPENSSL_MODULES:
            del sys.modules[name]
