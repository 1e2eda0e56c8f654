"""The listener speaks TLS 1.2+ with ECDHE and AEAD suites only, whatever the environment asks for.

Python's ssl module plays an old or careless client, offering exactly the suites and versions each test names.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
from pathlib import Path

import pytest

from tests.integration.server.client import TARGET_NAME, Credentials
from tests.integration.server.conftest import MakeServer, Pki, ServerProcess

WEAK_SUITES = {
    "ECDHE-ECDSA-AES128-SHA256": "CBC, not AEAD",
    "ECDHE-ECDSA-AES128-SHA": "CBC with SHA-1, not AEAD",
    "AES128-GCM-SHA256": "RSA key exchange, no forward secrecy",
    "AES256-SHA256": "RSA key exchange and CBC",
}


def handshake(port: int, credentials: Credentials, *, ciphers: str | None = None,
              version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> tuple[str, str]:
    """(protocol, cipher) the server agreed to, or ssl.SSLError when it refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = context.maximum_version = version
    if ciphers:
        context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    context.set_alpn_protocols(["h2"])
    context.load_verify_locations(cadata=credentials.ca_pem.decode())
    with tempfile.TemporaryDirectory() as folder:
        cert, key = Path(folder) / "tls.crt", Path(folder) / "tls.key"
        cert.write_bytes(credentials.certificate_pem)
        key.write_bytes(credentials.key_pem)
        context.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=TARGET_NAME) as tls:
        cipher = tls.cipher()
        assert cipher is not None
        return str(tls.version()), cipher[0]


@pytest.fixture
def server_with_weak_environment(make_server: MakeServer) -> ServerProcess:
    """The environment asks gRPC for a CBC suite; the server must override it."""
    server = make_server()
    server.env["GRPC_SSL_CIPHER_SUITES"] = "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-GCM-SHA256"
    server.start()
    return server


def test_tls12_with_an_ecdhe_aead_suite_is_accepted(running_server: ServerProcess, pki: Pki) -> None:
    assert handshake(running_server.agent_port, pki.agent(), ciphers="ECDHE-ECDSA-AES128-GCM-SHA256") == (
        "TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")


def test_tls13_is_spoken_between_our_own_peers(running_server: ServerProcess, pki: Pki) -> None:
    protocol, _cipher = handshake(running_server.agent_port, pki.agent(), version=ssl.TLSVersion.TLSv1_3)
    assert protocol == "TLSv1.3"


@pytest.mark.parametrize("suite", sorted(WEAK_SUITES))
def test_a_tls12_client_offering_only_a_weak_suite_is_refused(server_with_weak_environment: ServerProcess,
                                                              pki: Pki, suite: str) -> None:
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(server_with_weak_environment.agent_port, pki.agent(), ciphers=suite)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"])
def test_tls_before_12_is_refused(running_server: ServerProcess, pki: Pki, version: ssl.TLSVersion) -> None:
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(running_server.agent_port, pki.agent(), ciphers="ALL", version=version)
