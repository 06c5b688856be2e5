"""A loopback TCP proxy whose network can be dropped: the tests' cable to one cabinet.

``drop()`` is a network failure, not a closed connection: the sockets stay open and bytes simply
stop arriving either way, and new connections are accepted and then hear nothing (as a SYN that
reaches a router with no route would time out rather than be refused).  Both ends find out only
by their own timeouts (MQTT keepalive, the broker's 1.5 x keepalive rule, MQTT-3.1.2-24).
``restore()`` lets traffic through again; connections made or stalled during the drop are cut
then, as a NAT or firewall that lost their state would.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

__all__ = ["DroppableProxy"]


class DroppableProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._up = asyncio.Event()
        self._up.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stalled: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.connections = 0

    async def __aenter__(self) -> DroppableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    @property
    def dropped(self) -> bool:
        return not self._up.is_set()

    def drop(self) -> None:
        self._up.clear()

    def restore(self) -> None:
        for writer in list(self._stalled):
            writer.close()
        self._stalled.clear()
        self._up.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.dropped:  # accepted by the kernel, but nothing gets through
                self._stalled.add(writer)
                await self._up.wait()
                return
            self.connections += 1
            up_reader, up_writer = await asyncio.open_connection(*self._target)
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    data = await reader.read(65536)
                except (ConnectionError, OSError):
                    data = b""
                if self.dropped:
                    # Lost on the wire, bytes and closes alike: this connection is dead to both
                    # ends from now on, and the far end hears nothing until its own timeout.
                    self._stalled.add(writer)
                    await self._up.wait()
                    return
                if not data:
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._writers.discard(writer)
