"""A fault-injecting TCP proxy for loopback: it sits in front of REST and the live channel.

Engines are given the proxy's URL as their server URL; the proxy forwards every connection to
the upstream port (the reference server). Faults, each switched on and off by the test:

- :meth:`FaultProxy.cut`: close every open connection, both ways, at once.
- :meth:`FaultProxy.blackhole`: stop forwarding while keeping the sockets open (a half-open
  link: nothing arrives, nothing fails); bytes wait and flow again when healed, as TCP would.
- ``delay_s``: latency added to every chunk, each way.
- ``truncate_after``: a connection is cut after that many bytes from the server.
- :meth:`FaultProxy.refuse`: new connections are reset at once.
- :meth:`FaultProxy.switch`: forward new connections to another port (a server restarted
  elsewhere).

Only 127.0.0.1, port 0. Every pump is bounded by the connection's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter

__all__ = ["FaultProxy"]

_CHUNK = 65536


class _Link:
    """One proxied connection: the client side and the upstream side."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.down_bytes = 0  # server -> client
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            transport = writer.transport
            if not transport.is_closing():
                # SO_LINGER 0: the peer sees a reset, as after a real network cut.
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
            transport.abort()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 (a free port) to ``127.0.0.1:upstream_port``.

    Use ``async with FaultProxy(port) as proxy:``; ``proxy.url`` is the HTTP base URL.
    ``proxy.faults`` counts the faults injected (by kind).
    """

    def __init__(self, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = 0
        self.delay_s = 0.0
        self.truncate_after: int | None = None
        self.faults: Counter[str] = Counter()
        self.connections = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._cut_all()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def open_links(self) -> int:
        return len(self._links)

    # --- faults ---------------------------------------------------------------------------

    def cut(self) -> int:
        """Close every open connection both ways; returns how many."""
        self.faults["cut"] += 1
        return self._cut_all()

    def blackhole(self, on: bool = True) -> None:
        """Stop (or resume) forwarding on every connection, keeping the sockets open."""
        if on and self._flowing.is_set():
            self.faults["blackhole"] += 1
            self._flowing.clear()
        elif not on:
            self._flowing.set()

    def refuse(self, on: bool = True, *, cut: bool = False) -> None:
        """Reset (or accept again) new connections; with ``cut``, close the open ones too
        (the server is gone: a full outage)."""
        if on and not self._refusing:
            self.faults["refuse"] += 1
        self._refusing = on
        if on and cut:
            self._cut_all()

    def set_delay(self, seconds: float) -> None:
        if seconds and not self.delay_s:
            self.faults["delay"] += 1
        self.delay_s = seconds

    def set_truncate(self, after_bytes: int | None) -> None:
        if after_bytes is not None and self.truncate_after is None:
            self.faults["truncate"] += 1
        self.truncate_after = after_bytes

    def switch(self, upstream_port: int, *, cut: bool = True) -> None:
        """Forward new connections to ``upstream_port`` (and cut the old ones)."""
        self.upstream_port = upstream_port
        self.faults["switch"] += 1
        if cut:
            self._cut_all()

    def heal(self) -> None:
        """Switch every fault off (open connections are kept)."""
        self._flowing.set()
        self._refusing = False
        self.delay_s = 0.0
        self.truncate_after = None

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    def _cut_all(self) -> int:
        links = list(self._links)
        for link in links:
            link.abort()
        return len(links)

    # --- forwarding -----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._refusing:
            _Link(writer, writer).abort()
            return
        try:
            async with asyncio.timeout(5):
                up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except (OSError, TimeoutError):
            _Link(writer, writer).abort()  # upstream down: the client sees a reset
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        up = asyncio.create_task(self._pump(link, reader, up_writer, downstream=False))
        down = asyncio.create_task(self._pump(link, up_reader, writer, downstream=True))
        link.tasks = [up, down]
        try:
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
            # One side closed: give the other a moment to drain its half, then close all.
            await asyncio.wait(link.tasks, timeout=1.0)
        finally:
            for task in link.tasks:
                task.cancel()
            link.abort()
            self._links.discard(link)

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        downstream: bool,
    ) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    with contextlib.suppress(OSError, RuntimeError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                await self._flowing.wait()  # a blackhole holds what was read
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if downstream and self.truncate_after is not None:
                    room = self.truncate_after - link.down_bytes
                    if room < len(data):
                        if room > 0:
                            writer.write(data[:room])
                            with contextlib.suppress(OSError, ConnectionError):
                                await writer.drain()
                        link.abort()
                        return
                    link.down_bytes += len(data)
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            return
