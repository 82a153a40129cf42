"""The HTTP load generator, a process of its own, and :func:`run_loadgen`, which drives it.

On two cores an in-process generator would share one event loop and one GIL with the server it
measures. This module is started as ``python -m bench.harness.loadgen '<spec as JSON>'``: it
signs every request before the clock starts, warms up, prints ``ready``, waits for ``go`` on
stdin, runs, and prints one JSON line with the result and its own CPU time over the window.

Closed loop (throughput): ``senders`` raw keep-alive connections (:class:`RawConnection`). Open
loop (latency at a fixed rate): an aiohttp session, which opens as many connections as requests
in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from bench.harness.cpu import CpuWindow

if TYPE_CHECKING:
    from bench.harness.service import ServiceFiles

SENDERS = 32
# Requests sent before every timed HTTP run (connections, first-call costs). Kept under
# autovacuum's analyze threshold (50 rows): statistics taken on a near-empty table would make
# PostgreSQL check the deliveries' foreign key with a sequential scan for the rest of the run.
WARMUP = 32
# Every change a benchmark makes, over HTTP or queued directly, carries this plus a counter:
# 16 characters + a counter, a realistic sealed width.
PASSWORD = "Bench-Passw0rd!-"

Request = tuple[bytes, dict[str, str]]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _signed_requests(secret: bytes, prefix: str, count: int) -> list[Request]:
    """Bodies and Standard Webhooks headers, computed before the clock starts."""
    from pcns.receiver.signature import sign

    now = int(time.time())
    out = []
    for i in range(count):
        body = json.dumps({"user": f"{prefix}{i}", "password": f"{PASSWORD}{i}"}).encode()
        webhook_id = f"msg_{prefix}{i}"
        out.append(
            (
                body,
                {
                    "content-type": "application/json",
                    "pcns-source": "dc01",
                    "webhook-id": webhook_id,
                    "webhook-timestamp": str(now),
                    "webhook-signature": sign(secret, webhook_id, now, body),
                },
            )
        )
    return out


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    request: Request,
    statuses: Counter[str],
    latencies: list[float],
) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, data=request[0], headers=request[1]) as resp:
            await resp.read()
            statuses[str(resp.status)] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        statuses[type(exc).__name__] += 1
        return
    latencies.append(time.perf_counter() - started)


async def _closed_loop(
    session: aiohttp.ClientSession,
    url: str,
    requests: list[Request],
    senders: int,
    statuses: Counter[str],
    latencies: list[float],
) -> None:
    """``senders`` coroutines, each sending its next request as soon as the last is answered."""
    it = iter(requests)

    async def sender() -> None:
        for request in it:
            await _post(session, url, request, statuses, latencies)

    await asyncio.gather(*(sender() for _ in range(senders)))


async def _open_loop(
    session: aiohttp.ClientSession,
    url: str,
    requests: list[Request],
    rate: float,
    statuses: Counter[str],
    latencies: list[float],
) -> None:
    """Send request ``i`` at ``start + i / rate`` whether or not earlier ones were answered."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i, request in enumerate(requests):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_post(session, url, request, statuses, latencies)))
    await asyncio.gather(*tasks)


class RawConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends prepared request bytes, one at a time.

    The closed-loop generator uses this instead of an HTTP client library: on two cores every
    microsecond the generator spends is taken from the server it measures, and a client that
    only writes prepared bytes and reads a status line and a Content-Length costs a fraction
    of a general-purpose client per request. Responses must carry Content-Length (aiohttp
    sets it for every response the service and the no-op handler send).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None:
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end]).lower()
        start = head.find(b"\r\ncontent-length:")
        if start < 0:
            self._fail(RuntimeError("response without Content-Length"))
            return
        stop = head.find(b"\r\n", start + 2)
        length = int(head[start + 17 : stop if stop > 0 else len(head)])
        total = end + 4 + length
        if len(self._buffer) < total:
            return
        del self._buffer[:total]
        waiter, self._waiter = self._waiter, None
        waiter.set_result(int(head[9:12]))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError("connection closed"))

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self.transport.write(request)
        return await waiter


def _raw_requests(url: str, requests: list[Request]) -> list[bytes]:
    """Each request as the bytes an HTTP/1.1 client would put on the wire."""
    parts = urlsplit(url)
    lines = []
    for body, headers in requests:
        head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head.append(f"Content-Length: {len(body)}")
        lines.append(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return lines


async def _raw_closed_loop(
    connections: list[RawConnection],
    requests: list[bytes],
    statuses: Counter[str],
    latencies: list[float],
) -> None:
    """One sender per connection, each sending its next request as soon as the last is answered."""
    it = iter(requests)

    async def sender(conn: RawConnection) -> None:
        for request in it:
            started = time.perf_counter()
            try:
                status = await conn.send(request)
            except (OSError, RuntimeError) as exc:
                statuses[type(exc).__name__] += 1
                return
            statuses[str(status)] += 1
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(sender(c) for c in connections))


async def generate(spec: dict[str, Any]) -> None:
    """Warm up, say ``ready``, wait for ``go`` on stdin, run, print one JSON result line."""
    import resource

    from pcns.secret_files import read_webhook_secret

    secret = read_webhook_secret(Path(spec["secret_file"]))
    url = spec["url"] + "/v1/password-changes"
    warm = _signed_requests(secret, spec["prefix"] + "warm-", spec.get("warmup", WARMUP))
    timed = _signed_requests(secret, spec["prefix"], spec["count"])
    ignored: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def go() -> tuple[float, float]:
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), cpu.ru_utime + cpu.ru_stime

    if spec["mode"] == "closed":
        raw_warm, raw_timed = _raw_requests(url, warm), _raw_requests(url, timed)
        parts = urlsplit(url)
        connections = []
        for _ in range(spec["senders"]):
            _, conn = await loop.create_connection(RawConnection, parts.hostname, parts.port)
            connections.append(conn)
        await _raw_closed_loop(connections, raw_warm, ignored, [])
        started, cpu0 = await go()
        await _raw_closed_loop(connections, raw_timed, statuses, latencies)
        for conn in connections:
            assert conn.transport is not None
            conn.transport.close()
    else:
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await _closed_loop(session, url, warm, spec["senders"], ignored, [])
            started, cpu0 = await go()
            await _open_loop(session, url, timed, spec["rate"], statuses, latencies)
    elapsed = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "elapsed": elapsed,
        "statuses": dict(statuses),
        "warmup_statuses": dict(ignored),
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "cpu": (cpu1.ru_utime + cpu1.ru_stime) - cpu0,
    }
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# The driver, in the benchmark's process
# --------------------------------------------------------------------------------------------


@dataclass
class HttpRun:
    rate: float
    elapsed: float
    statuses: dict[str, int]
    p50_ms: float
    p99_ms: float
    cpu: dict[str, float | None]


def closed_loop_spec(files: ServiceFiles, port: int, count: int) -> dict[str, Any]:
    """The load generator's spec for ``count`` signed POSTs from ``SENDERS`` closed-loop senders
    (add a ``prefix``, which makes every webhook id and user name of the run unique)."""
    return {
        "url": f"http://127.0.0.1:{port}",
        "secret_file": str(files.secret_file),
        "senders": SENDERS,
        "count": count,
        "mode": "closed",
    }


async def run_loadgen(
    spec: dict[str, Any], before_go: Callable[[], Awaitable[None]] | None = None
) -> HttpRun:
    """Run the load generator subprocess; CPU is measured between its ``go`` and its result.

    ``before_go`` runs after the generator's warm-up, right before the timed requests.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.harness.loadgen",
        json.dumps(spec),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=120)
        if line.strip() != b"ready":
            raise RuntimeError(f"load generator did not start: {line!r}")
        if before_go is not None:
            await before_go()
        window = CpuWindow()
        window.begin()
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=600)
        window.end()
        result = json.loads(line)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.stdin.close()
        await proc.wait()
    window.used["client"] = result["cpu"]
    count = sum(result["statuses"].values())
    return HttpRun(
        rate=count / result["elapsed"],
        elapsed=result["elapsed"],
        statuses=result["statuses"],
        p50_ms=result["p50_ms"],
        p99_ms=result["p99_ms"],
        cpu=window.used,
    )


if __name__ == "__main__":
    asyncio.run(generate(json.loads(sys.argv[1])))
