"""The test suite's fault proxy (tests/faultproxy.py) against a tiny real asyncio echo server:
each mode does to real TCP connections what its docstring says."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy, Upstream


@dataclass
class Echo:
    """Echoes every chunk; a chunk ending in ``!`` is echoed and then the connection closed.
    Records what it received and whether a client's connection ended in a reset."""

    received: bytearray = field(default_factory=bytearray)
    connections: int = 0
    resets: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
                if data.endswith(b"!"):
                    break
        except ConnectionResetError:
            self.resets += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def echo_server(unix_path: Path | None = None) -> AsyncIterator[tuple[Echo, Upstream]]:
    echo = Echo()
    if unix_path is not None:
        server = await asyncio.start_unix_server(echo.handle, str(unix_path))
        upstream: Upstream = str(unix_path)
    else:
        server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
        upstream = ("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        yield echo, upstream
    finally:
        server.close()
        for writer in echo.writers:
            writer.transport.abort()
        await server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[tuple[Echo, FaultProxy]]:
    async with echo_server() as (server, upstream), FaultProxy(upstream) as proxy:
        yield server, proxy


@contextlib.asynccontextmanager
async def connected(
    proxy: FaultProxy,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(*proxy.address)
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


async def silent(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether nothing at all (no byte, no end, no reset) arrives within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await reader.read(1)
    except TimeoutError:
        return True
    except OSError:
        return False
    return False


async def test_pass_forwards_both_ways(echo: tuple[Echo, FaultProxy]) -> None:
    """In pass mode a request reaches the server whole and its answer comes back whole."""
    server, proxy = echo
    async with connected(proxy) as (reader, writer):
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
    assert bytes(server.received) == b"hello"
    assert (proxy.counters.connections, proxy.counters.upstream_connections) == (1, 1)
    assert (proxy.counters.bytes_up, proxy.counters.bytes_down) == (5, 5)


async def test_unix_socket_upstream(tmp_path: Path) -> None:
    """An upstream given as a unix socket path is reached through the proxy's TCP port."""
    async with (
        echo_server(tmp_path / "echo.sock") as (server, upstream),
        FaultProxy(upstream) as proxy,
        connected(proxy) as (reader, writer),
    ):
        writer.write(b"over unix!")
        assert await reader.read() == b"over unix!"  # then the server's close comes through
    assert bytes(server.received) == b"over unix!"


async def test_latency_holds_each_direction(echo: tuple[Echo, FaultProxy]) -> None:
    """With latency(0.3) an echo takes at least 0.3 s each way, then arrives intact."""
    server, proxy = echo
    proxy.latency(0.3)
    async with connected(proxy) as (reader, writer):
        writer.write(b"slow")
        await asyncio.sleep(0.2)
        assert server.received == b""  # still on its way up
        assert proxy.in_transit == 1
        assert await silent(reader, 0.3)  # arrived upstream, the answer still on its way back
        assert await reader.readexactly(4) == b"slow"
        assert proxy.in_transit == 0
        proxy.passthrough()
        writer.write(b"fast")
        assert await reader.readexactly(4) == b"fast"
    assert proxy.counters.delayed == 2  # one chunk each way while the latency was on


async def test_reset_on_next_request_and_at_accept(echo: tuple[Echo, FaultProxy]) -> None:
    """reset leaves an idle connection alone until its client sends, then resets both sides
    (nothing reaches the server); a new connection is reset at once."""
    server, proxy = echo
    async with connected(proxy) as (reader, writer):
        writer.write(b"one")
        assert await reader.readexactly(3) == b"one"
        proxy.reset()
        writer.write(b"two")
        with pytest.raises(ConnectionResetError):
            await reader.read(1)
        async with connected(proxy) as (fresh, _):
            with pytest.raises(ConnectionResetError):
                await fresh.read(1)
    await asyncio.sleep(0.1)
    assert bytes(server.received) == b"one"
    assert server.resets == 1  # the server side was reset too, not closed politely
    assert proxy.counters.resets == 2
    assert proxy.counters.connections == 2
    assert proxy.counters.upstream_connections == 1


async def test_reset_mid_request_lets_a_prefix_through(echo: tuple[Echo, FaultProxy]) -> None:
    """reset_mid_request(5) forwards the first 5 bytes of a 20-byte request, then resets both
    sides: the server saw a torn request, the client no answer."""
    server, proxy = echo
    proxy.reset_mid_request(5)
    async with connected(proxy) as (reader, writer):
        writer.write(b"0123456789abcdefghij")
        with pytest.raises(ConnectionResetError):
            await reader.read(1)
    await asyncio.sleep(0.1)
    assert bytes(server.received) == b"01234"
    assert server.resets == 1
    assert proxy.counters.bytes_up == 5
    assert proxy.counters.resets == 1


async def test_reset_mid_request_drops_the_answer_to_a_short_request(
    echo: tuple[Echo, FaultProxy],
) -> None:
    """A request shorter than the limit reaches the server whole; its answer is dropped and
    both sides are reset (done upstream, never acknowledged)."""
    server, proxy = echo
    proxy.reset_mid_request(1000)
    async with connected(proxy) as (reader, writer):
        writer.write(b"short")
        with pytest.raises(ConnectionResetError):
            await reader.read(1)
    await asyncio.sleep(0.1)
    assert bytes(server.received) == b"short"
    assert proxy.counters.bytes_down == 0
    assert proxy.counters.discarded == 5  # the echo that never came back


async def test_blackhole_swallows_without_closing(echo: tuple[Echo, FaultProxy]) -> None:
    """In a blackhole an open connection and a new one are read but never answered nor closed,
    and stay silent after the blackhole ends; a connection opened afterwards works."""
    server, proxy = echo
    async with connected(proxy) as (reader, writer):
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"
        proxy.blackhole()
        writer.write(b"lost")
        async with connected(proxy) as (fresh, fresh_writer):
            fresh_writer.write(b"lost too!")
            assert await silent(fresh, 0.4)
            assert await silent(reader, 0.1)
            proxy.passthrough()
            writer.write(b"still lost")
            assert await silent(reader, 0.2)
            assert await silent(fresh, 0.1)
        async with connected(proxy) as (later, later_writer):
            later_writer.write(b"after")
            assert await later.readexactly(5) == b"after"
    assert bytes(server.received) == b"beforeafter"
    assert proxy.counters.blackholed == 2
    assert proxy.counters.discarded == len(b"lost" + b"lost too!" + b"still lost")


async def test_slow_close_drips_and_holds_the_close(echo: tuple[Echo, FaultProxy]) -> None:
    """slow_close hands the answer over a byte at a time and keeps the connection open for
    ``hold`` seconds after the server closed it, then closes it."""
    server, proxy = echo
    proxy.slow_close(byte_interval=0.02, hold=0.5)
    async with connected(proxy) as (reader, writer):
        writer.write(b"drip!")
        pieces = [await reader.readexactly(1) for _ in range(5)]
        assert await silent(reader, 0.3)  # the server has closed; the client does not know
        assert await reader.read() == b""
    assert pieces == [b"d", b"r", b"i", b"p", b"!"]
    assert bytes(server.received) == b"drip!"
    assert proxy.counters.dripped == 5
    assert proxy.counters.held_closes == 1


async def test_abort_all_resets_idle_connections(echo: tuple[Echo, FaultProxy]) -> None:
    """abort_all resets every open connection at once, idle ones included."""
    _, proxy = echo
    async with connected(proxy) as (reader, writer):
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        proxy.abort_all()
        with pytest.raises(ConnectionResetError):
            await reader.read(1)
    assert proxy.counters.resets == 1
