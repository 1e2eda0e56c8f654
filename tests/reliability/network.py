"""A TCP proxy on 127.0.0.1 whose link can be cut: the network fault of the soak, without network namespaces.

It runs its own event loop in a thread, so the test's blocking calls (starting servers, writing queues) never
stall the bytes it forwards. A cut resets every open connection and refuses new ones until `restore()`, which is
what an agent sees when a firewall or a link drops: the TLS session dies mid-stream and redials fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any


class CuttableLink:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self.cuts = 0
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cuttable-link", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> CuttableLink:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, self.host, 0)).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._call(self._close_all(shut_listener=True)).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def cut(self) -> None:
        """Reset every connection through the link and refuse new ones."""
        self.cuts += 1
        self._cut = True
        self._call(self._close_all(shut_listener=False)).result(10)

    def restore(self) -> None:
        self._cut = False

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    async def _close_all(self, *, shut_listener: bool) -> None:
        if shut_listener and self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._cut:
            _reset(client_writer)
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            _reset(client_writer)
            return
        self.connections += 1
        self._writers |= {client_writer, server_writer}
        try:
            await asyncio.gather(_pump(client_reader, server_writer), _pump(server_reader, client_writer))
        finally:
            for writer in (client_writer, server_writer):
                self._writers.discard(writer)
                writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER 0: the close sends RST, as a dropped link looks to the peer, instead of an orderly FIN.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
