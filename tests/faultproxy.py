"""A TCP proxy for tests that puts network faults between pcns and what it talks to.

``async with FaultProxy(("127.0.0.1", 389)) as proxy`` listens on a free loopback port
(``proxy.port``) and forwards every connection to the upstream, a ``(host, port)`` or the path
of a unix socket. A test switches the mode at any time; each chunk is judged by the mode in
force when the proxy reads it:

- :meth:`~FaultProxy.passthrough` (``pass``): forward as is.
- :meth:`~FaultProxy.latency`: hold every chunk, each direction, ``seconds`` before passing it
  on (order kept, delays do not add up: a delayed network, not a slow one).
- :meth:`~FaultProxy.reset`: the next bytes a client sends end its connection with a TCP RST
  on both sides, and a new connection is reset as soon as it is accepted.
- :meth:`~FaultProxy.reset_mid_request`: the next request on each connection reaches the
  upstream only up to ``after_bytes``, then both sides are reset; if the upstream answers a
  shorter request, the answer is dropped and both sides are reset (the request was carried
  out, the client never hears so).
- :meth:`~FaultProxy.blackhole`: a connection is accepted and read, and nothing is ever
  forwarded, answered or closed; a connection once swallowed stays silent until the client
  gives up, even after the mode changes (as after a firewall dropped its state).
- :meth:`~FaultProxy.slow_close`: the upstream's answer is dripped to the client a byte at a
  time, and when the upstream closes, the client's side stays open for ``hold`` seconds more.

:meth:`~FaultProxy.abort_all` resets every open connection at once (a cut). The
:class:`ProxyCounters` in ``proxy.counters`` let a test assert that the fault really happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal, Self

Upstream = tuple[str, int] | str
Mode = Literal["pass", "latency", "reset", "reset_mid_request", "blackhole", "slow_close"]
_READ = 65536
_CONNECT_TIMEOUT = 5.0
# After forwarding the part of a request that reset_mid_request lets through, wait this long
# before the RST, so the upstream has read those bytes (an RST discards unsent data).
_SETTLE = 0.05


@dataclass
class ProxyCounters:
    """What went through the proxy, and what it did to it, since it started."""

    connections: int = 0  # accepted from clients
    upstream_connections: int = 0  # opened to the upstream
    bytes_up: int = 0  # forwarded client -> upstream
    bytes_down: int = 0  # forwarded upstream -> client
    discarded: int = 0  # read and dropped (reset, reset_mid_request, blackhole)
    resets: int = 0  # connections the proxy ended with an RST because of a fault
    blackholed: int = 0  # connections swallowed by a blackhole
    delayed: int = 0  # chunks held back by latency
    dripped: int = 0  # bytes dripped one at a time by slow_close
    held_closes: int = 0  # upstream closes held back by slow_close


@dataclass
class _Chunk:
    """One item on its way in one direction: data, the end of the stream, or a reset."""

    due: float
    kind: Literal["data", "eof", "reset"] = "data"
    data: bytes = b""
    drip: float | None = None  # seconds between bytes (slow_close); None: all at once
    hold: float = 0.0  # seconds to wait before passing an eof on (slow_close)
    fault: bool = False  # a reset the proxy causes (counted), not one it passes on


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close ``writer``'s socket with an RST: SO_LINGER 0, then abort."""
    if writer is None or writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One client connection and (unless swallowed at once) its upstream connection."""

    client_reader: asyncio.StreamReader
    client: asyncio.StreamWriter
    upstream_reader: asyncio.StreamReader | None = None
    upstream: asyncio.StreamWriter | None = None
    blackholed: bool = False
    budget: int | None = None  # bytes of the current request reset_mid_request still lets by
    ended: set[str] = field(default_factory=set)  # directions whose eof went out
    in_transit: int = 0  # chunks read and not yet passed on (held by latency, dripping)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def rst(self) -> None:
        _rst(self.client)
        _rst(self.upstream)
        self.done.set()

    async def close(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None and not writer.transport.is_closing():
                writer.close()
        for writer in (self.client, self.upstream):
            if writer is not None:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        self.done.set()


class FaultProxy:
    """A loopback TCP proxy to ``upstream`` whose mode a test switches (see the module doc)."""

    def __init__(self, upstream: Upstream, *, host: str = "127.0.0.1") -> None:
        self._upstream = upstream
        self.host = host
        self.port = 0  # known once started
        self.counters = ProxyCounters()
        self._mode: Mode = "pass"
        self._latency = 0.0
        self._after_bytes = 0
        self._drip = 0.0
        self._hold = 0.0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"FaultProxy({self.host}:{self.port} -> {self._upstream!r}, mode={self._mode})"

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def open_connections(self) -> int:
        return len(self._links)

    @property
    def in_transit(self) -> int:
        """Chunks the proxy has read and not yet passed on (0: nothing is held back)."""
        return sum(link.in_transit for link in self._links)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        self.abort_all(fault=False)
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # --- modes ---------------------------------------------------------------------------

    def passthrough(self) -> None:
        """Forward everything as is (connections a blackhole swallowed stay silent)."""
        self._set("pass")

    def latency(self, seconds: float) -> None:
        """Delay every chunk in each direction by ``seconds``."""
        self._set("latency")
        self._latency = seconds

    def reset(self) -> None:
        """RST a connection at its client's next bytes; RST new connections at once."""
        self._set("reset")

    def reset_mid_request(self, after_bytes: int) -> None:
        """Let the next request on each connection through up to ``after_bytes``, then RST."""
        if after_bytes < 0:
            raise ValueError("after_bytes must not be negative")
        self._set("reset_mid_request")
        self._after_bytes = after_bytes

    def blackhole(self) -> None:
        """Accept and read, but never forward, answer or close."""
        self._set("blackhole")

    def slow_close(self, *, byte_interval: float = 0.0, hold: float = 1.0) -> None:
        """Drip answers a byte per write, ``byte_interval`` s apart (0: one byte per turn of the
        event loop); hold the client open ``hold`` s after the upstream closed."""
        self._set("slow_close")
        self._drip = byte_interval
        self._hold = hold

    def abort_all(self, *, fault: bool = True) -> None:
        """End every open connection now with an RST on both sides."""
        for link in list(self._links):
            if fault and not link.done.is_set():
                self.counters.resets += 1
            link.rst()

    def _set(self, mode: Mode) -> None:
        self._mode = mode
        for link in self._links:
            link.budget = None  # the next request counts from its first byte

    # --- connections ---------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(_Link(reader, writer)))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(self, link: _Link) -> None:
        self.counters.connections += 1
        self._links.add(link)
        try:
            if self._mode == "reset":
                self.counters.resets += 1
                link.rst()
                return
            if self._mode == "blackhole":
                link.blackholed = True
                self.counters.blackholed += 1
                await self._swallow(link)
                return
            try:
                link.upstream_reader, link.upstream = await self._connect()
            except (OSError, TimeoutError):
                link.rst()  # as a refused connection looks to a client that got this far
                return
            self.counters.upstream_connections += 1
            await self._relay(link)
        finally:
            self._links.discard(link)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(_CONNECT_TIMEOUT):
            if isinstance(self._upstream, str):
                return await asyncio.open_unix_connection(self._upstream)
            return await asyncio.open_connection(*self._upstream)

    async def _swallow(self, link: _Link) -> None:
        """Read and drop what the client sends, until it goes away; answer nothing."""
        with contextlib.suppress(OSError):
            while data := await link.client_reader.read(_READ):
                self.counters.discarded += len(data)
        await link.done.wait()  # even after the client left: ended only by abort_all or exit

    async def _relay(self, link: _Link) -> None:
        assert link.upstream is not None
        assert link.upstream_reader is not None
        up: asyncio.Queue[_Chunk] = asyncio.Queue()
        down: asyncio.Queue[_Chunk] = asyncio.Queue()
        tasks = [
            asyncio.create_task(self._read(link, link.client_reader, up, towards_upstream=True)),
            asyncio.create_task(
                self._read(link, link.upstream_reader, down, towards_upstream=False)
            ),
            asyncio.create_task(self._write(link, up, link.upstream, "up")),
            asyncio.create_task(self._write(link, down, link.client, "down")),
        ]
        try:
            await link.done.wait()  # set by an RST or once both directions closed
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            link.in_transit = 0  # what was still queued is gone with the connection

    async def _read(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[_Chunk],
        *,
        towards_upstream: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(_READ):
                self._judge(link, data, queue, towards_upstream=towards_upstream)
        except OSError:  # the peer reset: pass the reset on, in order
            if not link.blackholed:
                self._queue(link, queue, _Chunk(loop.time() + self._delay(), "reset"))
            return
        if link.blackholed:
            return  # "never close": the other side hears nothing of it
        hold = self._hold if self._mode == "slow_close" and not towards_upstream else 0.0
        if hold:
            self.counters.held_closes += 1
        self._queue(link, queue, _Chunk(loop.time() + self._delay(), "eof", hold=hold))

    @staticmethod
    def _queue(link: _Link, queue: asyncio.Queue[_Chunk], chunk: _Chunk) -> None:
        link.in_transit += 1
        queue.put_nowait(chunk)

    def _delay(self) -> float:
        return self._latency if self._mode == "latency" else 0.0

    def _judge(
        self, link: _Link, data: bytes, queue: asyncio.Queue[_Chunk], *, towards_upstream: bool
    ) -> None:
        """What the mode in force does to one chunk just read."""
        now = asyncio.get_running_loop().time()
        mode = self._mode
        if link.blackholed or mode == "blackhole":
            if not link.blackholed:
                link.blackholed = True
                self.counters.blackholed += 1
            self.counters.discarded += len(data)
            return
        if mode == "reset" and towards_upstream:
            self.counters.discarded += len(data)
            self.counters.resets += 1
            link.rst()
            return
        if mode == "reset_mid_request":
            if not towards_upstream and link.budget is not None:
                # The upstream answers a request that was let through: the answer is lost.
                self.counters.discarded += len(data)
                self.counters.resets += 1
                link.rst()
                return
            if towards_upstream:
                budget = self._after_bytes if link.budget is None else link.budget
                part = data[:budget]
                link.budget = budget - len(part)
                self.counters.discarded += len(data) - len(part)
                if part:
                    self._queue(link, queue, _Chunk(now, data=part))
                if link.budget == 0:
                    self._queue(link, queue, _Chunk(now + _SETTLE, "reset", fault=True))
                return
        if mode == "latency":
            self.counters.delayed += 1
        drip = self._drip if mode == "slow_close" and not towards_upstream else None
        self._queue(link, queue, _Chunk(now + self._delay(), data=data, drip=drip))

    async def _write(
        self,
        link: _Link,
        queue: asyncio.Queue[_Chunk],
        writer: asyncio.StreamWriter,
        direction: Literal["up", "down"],
    ) -> None:
        try:
            while True:
                chunk = await queue.get()
                try:
                    if not await self._pass_on(link, chunk, writer, direction):
                        return
                finally:
                    link.in_transit -= 1
        except OSError:  # this side went away: so does the other
            link.rst()

    async def _pass_on(
        self, link: _Link, chunk: _Chunk, writer: asyncio.StreamWriter, direction: str
    ) -> bool:
        """Write one chunk when it is due; False once the connection is over."""
        wait = chunk.due - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        if chunk.kind == "reset":
            if chunk.fault:
                self.counters.resets += 1
            link.rst()
            return False
        if chunk.kind == "eof":
            await asyncio.sleep(chunk.hold)
            await self._end(link, writer, direction)
            return True
        if chunk.drip is not None:
            for i in range(len(chunk.data)):
                writer.write(chunk.data[i : i + 1])
                await writer.drain()
                self.counters.dripped += 1
                await asyncio.sleep(chunk.drip)
        else:
            writer.write(chunk.data)
            await writer.drain()
        if direction == "up":
            self.counters.bytes_up += len(chunk.data)
        else:
            self.counters.bytes_down += len(chunk.data)
        return True

    async def _end(self, link: _Link, writer: asyncio.StreamWriter, direction: str) -> None:
        """Pass an eof on; once both directions ended, close the connection."""
        if writer.can_write_eof() and not writer.transport.is_closing():
            writer.write_eof()
        link.ended.add(direction)
        if link.ended == {"up", "down"} or not writer.can_write_eof():
            await link.close()
