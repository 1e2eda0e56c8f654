"""Probes against real local listeners and processes: TCP, HTTP, HTTPS, process presence."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from opsmgr.agent.counters import PROCESS_SNAPSHOT_SECONDS, open_reader
from opsmgr.agent.probes import probe_http, probe_tcp
from opsmgr.api.management_pack import PerformanceCounter


class StatusHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = int(self.path.strip("/") or 200)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


def serve(context: ssl.SSLContext | None = None) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StatusHandler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_port() -> Iterator[int]:
    yield from serve()


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for 127.0.0.1, and a client context that trusts it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
                   .not_valid_after(now + dt.timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                   .sign(key, hashes.SHA256()))
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    (tmp_path / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_tcp_probe_connects_to_a_listener_and_fails_on_a_closed_port() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        result = await probe_tcp("127.0.0.1", listener.getsockname()[1])
        assert result.connected and result.milliseconds is not None and result.milliseconds >= 0
    finally:
        listener.close()
    closed = await probe_tcp("127.0.0.1", free_port())
    assert not closed.connected and closed.error


async def test_tcp_probe_as_counters() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    target = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        available = await open_reader(PerformanceCounter(object="TCP Port", counter="Available", instance=target))
        latency = await open_reader(PerformanceCounter(object="TCP Port", counter="Connect Time (ms)",
                                                       instance=target))
        assert [(r.instance, r.value) for r in await available.read()] == [(target, 1.0)]
        assert len(await latency.read()) == 1
    finally:
        listener.close()
    assert [r.value for r in await available.read()] == [0.0]
    assert await latency.read() == []


@pytest.mark.parametrize("status", [200, 302, 404, 503])
async def test_http_probe_reports_status_and_latency(http_port: int, status: int) -> None:
    result = await probe_http(f"http://127.0.0.1:{http_port}/{status}")
    assert result.status == status and result.milliseconds is not None
    assert result.available is (status < 400)


async def test_http_probe_without_a_server_reports_status_zero() -> None:
    result = await probe_http(f"http://127.0.0.1:{free_port()}/")
    assert (result.status, result.available) == (0, False)


async def test_https_probe_verifies_the_certificate(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server, client = tls
    for port in serve(server):
        trusted = await probe_http(f"https://localhost:{port}/204", context=client)
        assert trusted.status == 204
        untrusted = await probe_http(f"https://localhost:{port}/204")
        assert untrusted.status == 0 and untrusted.error


# `opsmgr agent` imports asyncio without Python's ssl module (opsmgr.agent.without_openssl); an HTTPS probe must
# still work in such a process, so this one runs in a fresh interpreter that starts the way the command does.
AGENT_PROCESS_PROBE = r"""
import json, sys
from opsmgr.cli import main
main.get_command(None, "agent")
import asyncio, ssl
import asyncio.sslproto
from opsmgr.agent.probes import probe_http
async def probes():
    trusted = await probe_http(sys.argv[1], context=ssl.create_default_context(cafile=sys.argv[2]))
    untrusted = await probe_http(sys.argv[1])
    return trusted.status, untrusted.status, untrusted.error
trusted, untrusted, error = asyncio.run(probes())
print(json.dumps({"trusted": trusted, "untrusted": untrusted, "error": error,
                  "asyncio_has_ssl": asyncio.sslproto.ssl is not None}))
"""


async def test_an_https_probe_works_in_an_agent_whose_asyncio_has_no_ssl(
        tls: tuple[ssl.SSLContext, ssl.SSLContext], tmp_path: Path) -> None:
    server, _ = tls
    for port in serve(server):
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", AGENT_PROCESS_PROBE,
                                                       f"https://localhost:{port}/204", str(tmp_path / "tls.crt")],
                                      capture_output=True, text=True, check=True)
        result = json.loads(out.stdout)
        assert result["asyncio_has_ssl"] is False  # the process really ran without asyncio's TLS
        assert result["trusted"] == 204
        assert result["untrusted"] == 0 and "certificate verify failed" in result["error"]


async def test_an_http_probe_of_a_server_that_never_answers_gives_up_within_its_limit() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody ever answers
    try:
        result = await probe_http(f"http://127.0.0.1:{listener.getsockname()[1]}/", limit_seconds=0.5)
    finally:
        listener.close()
    assert (result.status, result.milliseconds) == (0, None)
    assert "0.5 s" in (result.error or "") or "timed out" in (result.error or "")


async def test_an_http_probe_of_a_server_that_closes_before_its_status_line_reports_status_zero() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def close_after_request() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)

    closer = threading.Thread(target=close_after_request, daemon=True)
    closer.start()
    try:
        result = await probe_http(f"http://127.0.0.1:{listener.getsockname()[1]}/")
    finally:
        closer.join(5)
        listener.close()
    assert (result.status, result.available) == (0, False)
    assert "closed the connection before its status line" in (result.error or "")


async def test_http_probe_counters(http_port: int) -> None:
    url = f"http://127.0.0.1:{http_port}/503"
    status = await open_reader(PerformanceCounter(object="HTTP", counter="Status Code", instance=url))
    available = await open_reader(PerformanceCounter(object="HTTP", counter="Available", instance=url))
    assert [r.value for r in await status.read()] == [503.0]
    assert [r.value for r in await available.read()] == [0.0]


async def test_process_presence_counts_running_instances() -> None:
    counter = PerformanceCounter(object="Process", counter="Instance Count", instance="sleep")
    reader = await open_reader(counter)
    before = (await reader.read())[0].value
    sleepers = [await asyncio.create_subprocess_exec("sleep", "30") for _ in range(2)]
    try:
        await asyncio.sleep(PROCESS_SNAPSHOT_SECONDS)  # process counters share one scan of /proc per second
        assert (await reader.read())[0].value == before + 2
    finally:
        for process in sleepers:
            process.kill()
            await process.wait()
    await asyncio.sleep(PROCESS_SNAPSHOT_SECONDS)
    assert (await reader.read())[0].value == before


async def test_per_process_cpu_and_memory_of_a_busy_process() -> None:
    busy = await asyncio.create_subprocess_exec("/bin/sh", "-c", "while :; do :; done")
    try:
        await asyncio.sleep(PROCESS_SNAPSHOT_SECONDS)  # the next scan of /proc sees it
        cpu = await open_reader(PerformanceCounter(object="Process", counter="% Processor Time", instance="sh"))
        memory = await open_reader(PerformanceCounter(object="Process", counter="Working Set", instance="sh"))
        await asyncio.sleep(PROCESS_SNAPSHOT_SECONDS + 1.0)
        assert (await cpu.read())[0].value > 30  # one spinning process: most of one core
        assert (await memory.read())[0].value > 100_000
    finally:
        busy.kill()
        await busy.wait()
