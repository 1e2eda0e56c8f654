"""Probes: TCP connect and HTTP(S) status and latency, as counters a rule can collect and a monitor can judge.

A probe is named like any performance counter, with its target as the instance:
- object "TCP Port", instance "host:port", counters "Available" (1 or 0) and "Connect Time (ms)";
- object "HTTP", instance the URL, counters "Available" (1 for a 2xx or 3xx answer), "Status Code" (0 when
  nothing answered) and "Response Time (ms)" (only when something answered).
Process presence is the "Process" object's "Instance Count" counter (`opsmgr.agent.counters`).
HTTP is a single GET on a blocking socket in a worker thread, so the agent needs no HTTP client library and
asyncio needs no TLS (the agent imports asyncio without Python's ssl module: `opsmgr.agent.without_openssl`); HTTPS
imports ssl on its first use and verifies the server's certificate against the system's trust store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from opsmgr.api.management_pack import PerformanceCounter

if TYPE_CHECKING:
    import ssl

PROBE_TIMEOUT_SECONDS = 5.0
MAX_STATUS_LINE = 1024
PROBE_COUNTERS = ('TCP Port: Available, Connect Time (ms) (instance "host:port"); '
                  'HTTP: Available, Status Code, Response Time (ms) (instance the URL)')
TCP_COUNTERS = ("Available", "Connect Time (ms)")
HTTP_COUNTERS = ("Available", "Status Code", "Response Time (ms)")


@dataclass(frozen=True, slots=True)
class TcpResult:
    connected: bool
    milliseconds: float | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int  # 0 when nothing answered
    milliseconds: float | None
    error: str | None = None

    @property
    def available(self) -> bool:
        return 200 <= self.status < 400


def split_host_port(target: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" to (host, port); ValueError naming the fix otherwise."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise ValueError(f"TCP probe target {target!r} is not host:port; write e.g. db.contoso.test:5432")
    return host.strip("[]"), int(port)


async def probe_tcp(host: str, port: int, limit_seconds: float = PROBE_TIMEOUT_SECONDS) -> TcpResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit_seconds):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as error:
        return TcpResult(False, None, str(error) or type(error).__name__)
    elapsed = (time.perf_counter() - started) * 1000.0
    writer.close()
    with contextlib.suppress(OSError):  # the peer may reset a connection we only opened to prove we could
        await writer.wait_closed()
    return TcpResult(True, elapsed)


async def probe_http(url: str, limit_seconds: float = PROBE_TIMEOUT_SECONDS,
                     context: ssl.SSLContext | None = None) -> HttpResult:
    """GET `url` and read the status line; the latency is until the status line arrived."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return HttpResult(0, None, f"{url!r} is not an http:// or https:// URL")
    secure = parts.scheme == "https"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    request = (f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: opsmgr-agent\r\n"
               "Accept: */*\r\nConnection: close\r\n\r\n").encode("latin-1")
    address = (parts.hostname, parts.port or (443 if secure else 80))
    return await asyncio.to_thread(_get_status, address, request, limit_seconds, context if secure else None,
                                   secure=secure)


@functools.cache
def _system_trust() -> ssl.SSLContext:
    """The context of the system's trust store, made once: making it reads and parses every CA certificate on the
    host (tens of milliseconds), which an HTTPS probe every few seconds would otherwise pay each time."""
    import ssl  # noqa: PLC0415  (only agents with an HTTPS probe pay for OpenSSL)
    return ssl.create_default_context()


def _get_status(address: tuple[str, int], request: bytes, limit_seconds: float, context: ssl.SSLContext | None, *,
                secure: bool) -> HttpResult:
    """The blocking GET of `probe_http`, within `limit_seconds` in all (each step waits only for what is left)."""
    started = time.perf_counter()
    deadline = time.monotonic() + limit_seconds

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no status line within {limit_seconds:g} s")
        return remaining

    try:
        with socket.create_connection(address, timeout=left()) as raw:
            stream = raw
            if secure:
                stream = (context or _system_trust()).wrap_socket(raw, server_hostname=address[0])
            with stream:
                stream.settimeout(left())
                stream.sendall(request)
                line = b""
                while b"\n" not in line and len(line) <= MAX_STATUS_LINE:
                    stream.settimeout(left())
                    chunk = stream.recv(MAX_STATUS_LINE + 1 - len(line))
                    if not chunk:
                        raise ConnectionError("the server closed the connection before its status line")
                    line += chunk
    except OSError as error:  # ssl.SSLError, TimeoutError and ConnectionError are all OSErrors
        return HttpResult(0, None, str(error) or type(error).__name__)
    elapsed = (time.perf_counter() - started) * 1000.0
    fields = line.split(b"\n", 1)[0][:MAX_STATUS_LINE].decode("latin-1").split()
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        return HttpResult(0, elapsed, f"not an HTTP status line: {line[:80]!r}")
    return HttpResult(int(fields[1]), elapsed)


def probe_gatherer(counter: PerformanceCounter) -> Callable[[], Awaitable[dict[str, float]]] | None:
    """An async gatherer of the probe `counter` names (instance -> value), or None when it is no probe.

    Raises ValueError naming the fix when it is a probe without a usable target.
    """
    if counter.object == "TCP Port" and counter.counter in TCP_COUNTERS:
        if counter.instance is None:
            raise ValueError('a TCP Port probe needs its target as the instance, e.g. "db.contoso.test:5432"')
        target = counter.instance
        host, port = split_host_port(target)

        async def tcp() -> dict[str, float]:
            result = await probe_tcp(host, port)
            if counter.counter == "Available":
                return {target: 1.0 if result.connected else 0.0}
            return {target: result.milliseconds} if result.milliseconds is not None else {}
        return tcp
    if counter.object == "HTTP" and counter.counter in HTTP_COUNTERS:
        if counter.instance is None:
            raise ValueError('an HTTP probe needs its URL as the instance, e.g. "https://web.contoso.test/healthz"')
        url = counter.instance

        async def http() -> dict[str, float]:
            result = await probe_http(url)
            if counter.counter == "Available":
                return {url: 1.0 if result.available else 0.0}
            if counter.counter == "Status Code":
                return {url: float(result.status)}
            return {url: result.milliseconds} if result.milliseconds is not None else {}
        return http
    return None
