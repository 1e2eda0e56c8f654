"""Prometheus metrics of one management server, and the small HTTP endpoint serving /metrics and /healthz."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

_WRITE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_HEARTBEAT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass
class ServerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.connected_agents = Gauge("opsmgr_connected_agents", "Agent streams past Hello, now open.", registry=r)
        self.items = Counter("opsmgr_items_written", "Items committed, by kind and database.",
                             ["kind", "database"], registry=r)
        self.items_dropped = Counter("opsmgr_items_dropped", "Items counted and dropped (late beyond retention).",
                                     ["kind", "database", "reason"], registry=r)
        self.write_seconds = Histogram("opsmgr_write_seconds", "Time of one writer transaction, by database.",
                                       ["database"], buckets=_WRITE_BUCKETS, registry=r)
        self.batches_per_transaction = Histogram("opsmgr_batches_per_transaction",
                                                 "Batches group-committed in one transaction.", ["database"],
                                                 buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        # On one host this is the server's heartbeat handling latency; across hosts it includes their clock skew.
        self.heartbeat_delay = Histogram("opsmgr_heartbeat_delay_seconds",
                                         "From a heartbeat's sent_at (agent clock) to the server recording it.",
                                         buckets=_HEARTBEAT_BUCKETS, registry=r)
        self.acks = Counter("opsmgr_acks", "Acks sent, by database and outcome.", ["database", "outcome"],
                            registry=r)
        self.refusals = Counter("opsmgr_refusals", "Streams or messages refused, by reason.", ["reason"],
                                registry=r)
        self.queued_items = Gauge("opsmgr_ingest_queued_items", "Items waiting for or in a writer, by database.",
                                  ["database"], registry=r)
        self.parked_batch_bytes = Gauge("opsmgr_parked_batch_bytes",
                                        "Wire bytes of batches read and waiting for room in a writer pipeline.",
                                        registry=r)
        self.write_failures = Counter("opsmgr_write_failures", "Writer transactions that failed, by database.",
                                      ["database"], registry=r)


class HealthEndpoint:
    """`/metrics` and `/healthz` over plain HTTP on their own port (a scrape never competes with agents on 5723)."""

    def __init__(self, metrics: ServerMetrics, health: Callable[[], tuple[bool, dict[str, object]]]) -> None:
        self.metrics = metrics
        self.health = health
        self._server: asyncio.Server | None = None

    async def start(self, address: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, address, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1].split(b"?")[0] if request.count(b" ") >= 2 else b""
            if path == b"/metrics":
                status, kind, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
            elif path == b"/healthz":
                healthy, details = self.health()
                status = "200 OK" if healthy else "503 Service Unavailable"
                kind, body = "application/json", json.dumps(details).encode()
            else:
                status, kind, body = "404 Not Found", "text/plain", b"try /metrics or /healthz\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, IndexError):
            pass  # a half-open or garbled scrape is the scraper's problem
        finally:
            writer.close()
