"""Core benchmarks of pcns, each reported as a ratio to a baseline measured in the same run.

    .venv/bin/python bench/bench_core.py [--quick] [--parts abcd] [--max-background CORES]

(a) accepted changes/s through the signed HTTP API (role ``receiver``), 32 concurrent senders,
    against two ceilings: the same load on a no-op aiohttp handler answering 202, and raw asyncpg
    single-row-commit INSERTs (32 tasks over a pool the size of the service's).
(b) deliveries/s draining a backlog to the ``noop`` target (role ``worker``), against pgqueuer
    draining as many no-op jobs on the same server, with the same batch size and concurrency.
(c) p50/p99 accept-to-delivered latency at a fixed offered rate (role ``all``), taken from the
    database: ``pcns_deliveries.finished_at - created_at``.
(d) RSS of a ``pcns serve`` subprocess with an empty queue vs. a queue of 100,000 deliveries.

The service under test runs in this process through the composition root (``running_service``),
logging JSON lines at info level to a file as ``pcns serve`` does to a non-terminal. The HTTP load
generator always runs in a subprocess (this file with ``_loadgen``), so that on a small machine it
does not share an event loop or a GIL with the server it measures. Every timed run gets a fresh
database (created for it, checkpointed, dropped after it), rounds of the measurement and its
baselines are interleaved, and ratios are taken per round. CPU time of the server, the load
generator and PostgreSQL is reported per item, with what other processes used meanwhile.
Nothing here asserts a timing. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from aiohttp import web

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SENDERS = 32
POOL_SIZE = 10  # the service's default database.pool_size; the raw ceiling uses the same
# Requests sent before every timed HTTP run (connections, first-call costs). Kept under
# autovacuum's analyze threshold (50 rows): statistics taken on a near-empty table would make
# PostgreSQL check the deliveries' foreign key with a sequential scan for the rest of the run.
WARMUP = 32
PASSWORD = "Bench-Passw0rd!-"  # 16 characters + a counter: a realistic sealed width
CLK_TCK = os.sysconf("SC_CLK_TCK")
SCRIPT = Path(__file__).resolve()


# --------------------------------------------------------------------------------------------
# Load generator (runs in its own process)
# --------------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _signed_requests(secret: bytes, prefix: str, count: int) -> list[tuple[bytes, dict[str, str]]]:
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
    request: tuple[bytes, dict[str, str]],
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
    requests: list[tuple[bytes, dict[str, str]]],
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
    requests: list[tuple[bytes, dict[str, str]]],
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


class _RawConnection(asyncio.Protocol):
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


def _raw_requests(url: str, requests: list[tuple[bytes, dict[str, str]]]) -> list[bytes]:
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
    connections: list[_RawConnection],
    requests: list[bytes],
    statuses: Counter[str],
    latencies: list[float],
) -> None:
    """One sender per connection, each sending its next request as soon as the last is answered."""
    it = iter(requests)

    async def sender(conn: _RawConnection) -> None:
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


async def _loadgen(spec: dict[str, Any]) -> None:
    """Warm up, say ``ready``, wait for ``go`` on stdin, run, print one JSON result line.

    Closed loop (throughput): ``senders`` raw keep-alive connections (:class:`_RawConnection`).
    Open loop (latency at a fixed rate): an aiohttp session, which opens as many connections as
    requests in flight.
    """
    import resource

    from pcns.secret_files import read_webhook_secret

    secret = read_webhook_secret(Path(spec["secret_file"]))
    url = spec["url"] + "/v1/password-changes"
    warm = _signed_requests(secret, spec["prefix"] + "warm-", WARMUP)
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
            _, conn = await loop.create_connection(_RawConnection, parts.hostname, parts.port)
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
# Measurement helpers
# --------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` from the state on (field 3), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _proc_cpu(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone)."""
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields else 0.0


# The postmaster of the server under test, found once from a backend's parent; other PostgreSQL
# servers on the machine (embedded ones that test suites start) are not counted.
POSTMASTER: list[int] = []


async def find_postmaster(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        backend: int = await conn.fetchval("SELECT pg_backend_pid()")
        fields = _proc_stat(backend)
    finally:
        await conn.close()
    if fields is not None:  # None: the server is not on this machine
        POSTMASTER[:] = [int(fields[1])]


def _postgres_cpu() -> float | None:
    """CPU seconds of the server under test: its postmaster and every child of it, including
    children that have exited (backends of closed connections, autovacuum workers), which the
    postmaster has reaped into its cutime and cstime."""
    if not POSTMASTER:
        return None
    postmaster = POSTMASTER[0]
    fields = _proc_stat(postmaster)
    if fields is None:
        return None
    total = sum(int(v) for v in fields[11:15]) / CLK_TCK  # utime, stime, cutime, cstime
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def _system_busy() -> float:
    """Non-idle CPU seconds of the whole machine, all cores (``/proc/stat``)."""
    with open("/proc/stat", encoding="ascii") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks[:8]) - idle - iowait) / CLK_TCK


@dataclass
class CpuWindow:
    """CPU seconds spent by this process, by PostgreSQL and by the whole machine over a window.

    ``background`` (cores) is what every other process on the machine used meanwhile: on a
    shared 2-core box it says how far a number can be trusted.
    """

    start: dict[str, float | None] = field(default_factory=dict)
    used: dict[str, float | None] = field(default_factory=dict)

    @staticmethod
    def _sample() -> dict[str, float | None]:
        return {
            "server": _proc_cpu(os.getpid()),
            "postgres": _postgres_cpu(),
            "system": _system_busy(),
            "wall": time.perf_counter(),
        }

    def begin(self) -> None:
        self.start = self._sample()

    def end(self) -> None:
        now = self._sample()
        for key, before in self.start.items():
            after = now[key]
            self.used[key] = after - before if after is not None and before is not None else None


def background_cores(cpu: dict[str, float | None]) -> float | None:
    system, wall = cpu.get("system"), cpu.get("wall")
    if system is None or not wall:
        return None
    # Every process the benchmark measured (server, client, postgres, or others a caller adds).
    ours = sum(v for k, v in cpu.items() if k not in ("system", "wall") and v is not None)
    return max(0.0, system - ours) / wall


@dataclass
class HttpRun:
    rate: float
    elapsed: float
    statuses: dict[str, int]
    p50_ms: float
    p99_ms: float
    cpu: dict[str, float | None]


async def run_loadgen(
    spec: dict[str, Any], before_go: Callable[[], Awaitable[None]] | None = None
) -> HttpRun:
    """Run the load generator subprocess; CPU is measured between its ``go`` and its result.

    ``before_go`` runs after the generator's warm-up, right before the timed requests.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "_loadgen",
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def with_database(server_url: str, name: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path="/" + name))


@dataclass
class Databases:
    """Scratch databases on one server: a fresh one per measurement, all dropped at the end."""

    server_url: str
    max_background: float | None = None  # cores used by other processes; None: do not wait
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    names: list[str] = field(default_factory=list)

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create(self, label: str, *, template: str | None = None) -> str:
        """A fresh database; ``template``: a copy of that one (by URL), e.g. a prepared backlog."""
        name = f"pcns_bench_{self.token}_{len(self.names)}_{label}"
        copy = f' TEMPLATE "{urlsplit(template).path.lstrip("/")}"' if template else ""
        await self._admin(f'CREATE DATABASE "{name}"{copy}')
        self.names.append(name)
        return with_database(self.server_url, name)

    async def drop(self, url: str) -> None:
        """Drop as soon as a measurement is done, so autovacuum never works on it later."""
        name = urlsplit(url).path.lstrip("/")
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def drop_all(self) -> None:
        for name in self.names:
            await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def quiesce(self, url: str, *, analyze: bool) -> None:
        """Same starting line for every timed run: checkpointed, no autovacuum worker left to
        compete for the two cores and, with ``analyze``, vacuumed and analyzed.

        Only analyze a database whose tables already hold what the run works on (a queued
        backlog): statistics of a nearly empty table would mislead the planner for the whole run.
        """
        conn = await asyncpg.connect(url)
        try:
            if analyze:
                await conn.execute("VACUUM ANALYZE")
            await conn.execute("CHECKPOINT")

            async def no_autovacuum() -> bool:
                busy: int = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                )
                return busy == 0

            with contextlib.suppress(TimeoutError):
                await _wait_until(no_autovacuum, timeout=30, interval=0.1)
        finally:
            await conn.close()
        if self.max_background is not None:
            await _wait_for_quiet_machine(self.max_background, timeout=60)


async def _wait_for_quiet_machine(max_cores: float, *, timeout: float) -> None:  # noqa: ASYNC109
    """Wait until the machine, with our processes idle, uses less than ``max_cores``."""
    deadline = time.monotonic() + timeout
    while True:
        before = _system_busy()
        await asyncio.sleep(0.5)
        busy = (_system_busy() - before) / 0.5
        if busy < max_cores:
            return
        if time.monotonic() > deadline:
            _progress(f"  machine still busy ({busy:.2f} cores used by others); measuring anyway")
            return


# --------------------------------------------------------------------------------------------
# The service under test: files and settings
# --------------------------------------------------------------------------------------------


@dataclass
class ServiceFiles:
    """Keyring, source secret and admin token for every service instance of the run."""

    root: Path

    def __post_init__(self) -> None:
        from pcns.secret_files import new_admin_token, new_webhook_secret, write_private_file
        from vault import create_keyring_file

        self.keyring = self.root / "keyring.json"
        create_keyring_file(self.keyring)
        self.secret_file = self.root / "dc01.whsec"
        write_private_file(self.secret_file, new_webhook_secret())
        self.token_file = self.root / "admin.token"
        write_private_file(self.token_file, new_admin_token())

    def document(
        self,
        db_url: str,
        port: int,
        *,
        delivery: dict[str, Any] | None = None,
        targets: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        return {
            "server": {"listen": f"127.0.0.1:{port}"},
            "database": {"url": db_url, "pool_size": POOL_SIZE},
            "vault": {"keyring": str(self.keyring)},
            "admin": {"token_file": str(self.token_file)},
            "delivery": delivery or {},
            "sources": [{"id": "dc01", "secret_file": str(self.secret_file)}],
            "targets": targets or [{"name": "noop", "type": "noop"}],
        }


def settings_of(doc: dict[str, Any]) -> Any:
    from pcns.config import Settings

    return Settings(**doc)


def to_toml(doc: dict[str, Any]) -> str:
    """Enough TOML for a pcns config: tables of scalars and arrays of tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(str(v))

    out: list[str] = []
    for key, section in doc.items():
        tables = section if isinstance(section, list) else [section]
        for table in tables:
            out.append(f"[[{key}]]" if isinstance(section, list) else f"[{key}]")
            out += [f"{k} = {value(v)}" for k, v in table.items()]
            out.append("")
    return "\n".join(out)


@contextlib.asynccontextmanager
async def in_process_service(settings: Any, role: str) -> AsyncIterator[Any]:
    from pcns.app import running_service

    async with running_service(settings, role=role) as service:  # type: ignore[arg-type]
        yield service


# --------------------------------------------------------------------------------------------
# (a) intake throughput
# --------------------------------------------------------------------------------------------


async def noop_http_server(port: int) -> web.AppRunner:
    """The HTTP ceiling: aiohttp reading the body and answering 202, nothing else."""

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202, text='{"id":"x"}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/password-changes", accept)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    return runner


_RAW_TABLE = """
CREATE TABLE bench_raw (
    id uuid PRIMARY KEY, change_id uuid NOT NULL, target text NOT NULL, account text NOT NULL,
    state text NOT NULL, key_id text, nonce bytea, ciphertext bytea,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
_RAW_INSERT = (
    "INSERT INTO bench_raw (id, change_id, target, account, state, key_id, nonce, ciphertext)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)


async def raw_insert_ceiling(
    dbs: Databases, url: str, count: int
) -> tuple[float, dict[str, float | None]]:
    """``SENDERS`` tasks over a pool of ``POOL_SIZE``, one row per implicit transaction.

    The pool comes from the service's own factory, so both sides release connections the same
    way (without asyncpg's default reset round trip).
    """
    from pcns.database import create_pool

    async with create_pool(url, size=POOL_SIZE) as pool:
        await pool.execute(_RAW_TABLE)

        async def insert(n: int) -> None:
            for _ in range(n):
                async with pool.acquire() as conn:
                    await conn.execute(
                        _RAW_INSERT,
                        uuid.uuid4(),
                        uuid.uuid4(),
                        "noop",
                        f"user-{uuid.uuid4().hex[:8]}",
                        "pending",
                        "k20250101-abcdef01",
                        os.urandom(12),
                        os.urandom(len(PASSWORD) + 4 + 16),
                    )

        await asyncio.gather(*(insert(WARMUP // SENDERS) for _ in range(SENDERS)))
        await dbs.quiesce(url, analyze=False)
        window = CpuWindow()
        window.begin()
        started = time.perf_counter()
        per_task, extra = divmod(count, SENDERS)
        await asyncio.gather(*(insert(per_task + (i < extra)) for i in range(SENDERS)))
        elapsed = time.perf_counter() - started
        window.end()
    return count / elapsed, window.used


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


@dataclass
class IntakeResult:
    service: list[HttpRun] = field(default_factory=list)
    noop: list[HttpRun] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    raw_cpu: list[dict[str, float | None]] = field(default_factory=list)


async def bench_intake(
    dbs: Databases, files: ServiceFiles, *, count: int, rounds: int
) -> IntakeResult:
    out = IntakeResult()
    for r in range(rounds):
        url = await dbs.create("intake")
        port = free_port()
        settings = settings_of(files.document(url, port))
        spec = closed_loop_spec(files, port, count)
        async with in_process_service(settings, "receiver"):

            async def quiesce(url: str = url) -> None:
                await dbs.quiesce(url, analyze=False)

            out.service.append(await run_loadgen({**spec, "prefix": f"a{r}-"}, quiesce))
        stored = await _count(url, "SELECT count(*) FROM pcns_changes")
        if stored != count + WARMUP:
            print(f"  (a) WARNING: {stored} changes stored, not {count + WARMUP}", file=sys.stderr)
        await dbs.drop(url)

        port = free_port()
        runner = await noop_http_server(port)
        try:
            noop_spec = {**spec, "url": f"http://127.0.0.1:{port}", "prefix": f"n{r}-"}
            out.noop.append(await run_loadgen(noop_spec))
        finally:
            await runner.cleanup()

        url = await dbs.create("raw")
        rate, cpu = await raw_insert_ceiling(dbs, url, count)
        await dbs.drop(url)
        out.raw.append(rate)
        out.raw_cpu.append(cpu)
        print(
            f"  (a) round {r + 1}/{rounds}: pcns {out.service[-1].rate:.0f}/s, "
            f"no-op HTTP {out.noop[-1].rate:.0f}/s, raw INSERT {rate:.0f}/s",
            file=sys.stderr,
            flush=True,
        )
    return out


async def _count(url: str, query: str, *args: Any) -> int:
    conn = await asyncpg.connect(url)
    try:
        value: int = await conn.fetchval(query, *args)
        return value
    finally:
        await conn.close()


# --------------------------------------------------------------------------------------------
# (b) delivery throughput vs pgqueuer
# --------------------------------------------------------------------------------------------


async def service_keyring(url: str, kek_file: Path) -> Any:
    """The data keys the service will use (the first one created if needed), unwrapped."""
    from pcns.keys.admin import ensure_primary, load_keyring
    from pcns.queue.migrate import migrate
    from vault import FileKek

    kek = FileKek(kek_file)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            await ensure_primary(conn, kek, actor="bench")
        return await load_keyring(pool, kek)
    finally:
        await pool.close()


async def prefill_through_intake(url: str, settings: Any, n: int, prefix: str) -> None:
    """Queue ``n`` changes with the service's own intake (route, seal) and group-commit insert."""
    from pydantic import SecretStr

    from pcns.queue.migrate import migrate
    from pcns.queue.store import insert_changes
    from pcns.receiver.intake import build_change
    from pcns.receiver.models import PasswordChangeIn
    from pcns.routing import Router

    router = Router(settings.targets)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        keys = await service_keyring(url, settings.vault.keyring)
        for lo in range(0, n, 256):
            changes = [
                build_change(
                    PasswordChangeIn(user=f"{prefix}{i}", password=SecretStr(f"{PASSWORD}{i}")),
                    f"{PASSWORD}{i}",
                    source="dc01",
                    webhook_id=f"msg_{prefix}{i}",
                    router=router,
                    keys=keys,
                )
                for i in range(lo, min(n, lo + 256))
            ]
            await insert_changes(conn, changes)
    finally:
        await conn.close()


async def _wait_until(
    probe: Callable[[], Awaitable[bool] | bool],
    *,
    timeout: float,  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
    interval: float,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@dataclass
class Drain:
    rate: float
    cpu: dict[str, float | None]


def delivered_count(service: Any, target: str) -> float:
    """The service's own count of deliveries to ``target`` recorded as delivered."""
    value = service.metrics.registry.get_sample_value(
        "pcns_deliveries_delivered_total", {"target": target}
    )
    return value or 0.0


async def pcns_drain(
    dbs: Databases, url: str, settings: Any, n: int, *, target: str = "noop", part: str = "(b)"
) -> Drain:
    """Start a ``worker`` and time it until ``n`` deliveries to ``target`` are delivered."""

    await dbs.quiesce(url, analyze=True)
    window = CpuWindow()
    window.begin()
    started = time.perf_counter()
    async with in_process_service(settings, "worker") as service:
        await _wait_until(
            lambda: delivered_count(service, target) >= n, timeout=300, interval=0.002
        )
        elapsed = time.perf_counter() - started
        window.end()
    left = await _count(
        url, "SELECT count(*) FROM pcns_deliveries WHERE state IN ('pending', 'in_flight')"
    )
    if left:
        print(f"  {part} WARNING: {left} deliveries still open after the drain", file=sys.stderr)
    return Drain(n / elapsed, window.used)


async def pgqueuer_drain(
    dbs: Databases, url: str, n: int, *, batch: int, concurrency: int
) -> Drain:
    """Time pgqueuer's QueueManager (drain mode, until ``run`` returns) over ``n`` no-op jobs."""
    from pgqueuer import Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(url)
    try:
        queries = Queries.from_asyncpg_connection(conn)
        await queries.install()
        payload = os.urandom(12 + len(PASSWORD) + 4 + 16)  # as wide as a nonce + ciphertext
        await queries.enqueue(["noop"] * n, [payload] * n, [0] * n)
    finally:
        await conn.close()
    await dbs.quiesce(url, analyze=True)
    window = CpuWindow()
    window.begin()
    started = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        qm = QueueManager(Queries.from_asyncpg_connection(conn))

        @qm.entrypoint("noop")
        async def noop(job: Any) -> None:
            return None

        await qm.run(
            batch_size=batch,
            max_concurrent_tasks=concurrency,
            mode=QueueExecutionMode.drain,
        )
        elapsed = time.perf_counter() - started
        window.end()
    finally:
        await conn.close()
    left = await _count(url, "SELECT count(*) FROM pgqueuer")
    if left:
        print(f"  (b) WARNING: {left} pgqueuer jobs left after the drain", file=sys.stderr)
    return Drain(n / elapsed, window.used)


@dataclass
class DeliveryResult:
    pcns: list[Drain] = field(default_factory=list)
    pcns_default: list[Drain] = field(default_factory=list)
    pgqueuer: list[Drain] = field(default_factory=list)


async def bench_delivery(
    dbs: Databases,
    files: ServiceFiles,
    *,
    count: int,
    rounds: int,
    workers: int,
    batch: int,
) -> DeliveryResult:
    from targets.base import load_target_types

    # Import every adapter module once, as a long-running worker already has: the first timed
    # start-up would otherwise pay ~0.4 s of one-off imports.
    load_target_types()
    comparable = {"workers": workers, "claim_batch": batch}
    out = DeliveryResult()
    for r in range(rounds):
        for label, delivery, drains in (
            ("comparable", comparable, out.pcns),
            ("defaults", {}, out.pcns_default),
        ):
            url = await dbs.create("delivery")
            settings = settings_of(files.document(url, free_port(), delivery=delivery))
            await prefill_through_intake(url, settings, count, f"b{r}{label[0]}-")
            drains.append(await pcns_drain(dbs, url, settings, count))
            await dbs.drop(url)
        url = await dbs.create("pgqueuer")
        out.pgqueuer.append(await pgqueuer_drain(dbs, url, count, batch=batch, concurrency=workers))
        await dbs.drop(url)
        print(
            f"  (b) round {r + 1}/{rounds}: pcns {out.pcns[-1].rate:.0f}/s "
            f"(defaults {out.pcns_default[-1].rate:.0f}/s), "
            f"pgqueuer {out.pgqueuer[-1].rate:.0f}/s",
            file=sys.stderr,
            flush=True,
        )
    return out


# --------------------------------------------------------------------------------------------
# (c) accept-to-delivered latency
# --------------------------------------------------------------------------------------------

_LATENCY = """
SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM d.finished_at - d.created_at)) AS p,
       max(extract(epoch FROM d.finished_at - d.created_at)) AS worst,
       count(*) FILTER (WHERE d.state = 'delivered') AS delivered,
       count(*) AS total
FROM pcns_deliveries d JOIN pcns_changes c ON c.id = d.change_id
WHERE c.user_name LIKE 'lat-%' AND c.user_name NOT LIKE 'lat-warm-%'
"""


@dataclass
class LatencyResult:
    offered: float
    achieved: float
    p50: float
    p99: float
    worst: float
    delivered: int
    total: int
    http: HttpRun


async def bench_latency(
    dbs: Databases, files: ServiceFiles, *, rate: float, duration: float
) -> LatencyResult:
    url = await dbs.create("latency")
    port = free_port()
    settings = settings_of(files.document(url, port))
    count = round(rate * duration)
    spec = {
        "url": f"http://127.0.0.1:{port}",
        "secret_file": str(files.secret_file),
        "senders": SENDERS,
        "count": count,
        "mode": "open",
        "rate": rate,
        "prefix": "lat-",
    }
    open_rows = "SELECT count(*) FROM pcns_deliveries WHERE state IN ('pending', 'in_flight')"
    async with in_process_service(settings, "all"):
        http = await run_loadgen(spec, lambda: dbs.quiesce(url, analyze=False))

        async def drained() -> bool:
            return await _count(url, open_rows) == 0

        await _wait_until(drained, timeout=120, interval=0.1)
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(_LATENCY)
    finally:
        await conn.close()
    await dbs.drop(url)
    assert row is not None
    return LatencyResult(
        offered=rate,
        achieved=count / http.elapsed,
        p50=row["p"][0],
        p99=row["p"][1],
        worst=row["worst"],
        delivered=row["delivered"],
        total=row["total"],
        http=http,
    )


# --------------------------------------------------------------------------------------------
# (d) memory with a deep queue
# --------------------------------------------------------------------------------------------


async def queue_backlog(url: str, files: ServiceFiles, n: int, *, target: str, due: str) -> None:
    """COPY ``n`` changes with one real sealed delivery each; ``due`` is 'now' or 'later'."""
    from pcns.ids import uuid7
    from vault import AssociatedData, seal

    keys = await service_keyring(url, files.keyring)
    now = datetime.now(UTC)
    due_at = now - timedelta(seconds=1) if due == "now" else now + timedelta(days=1)
    changes, deliveries = [], []
    for i in range(n):
        change_id, delivery_id, account = uuid7(), uuid7(), f"mem-{i}"
        response = json.dumps(
            {"id": str(change_id), "deliveries": [{"target": target, "state": "pending"}]}
        )
        changes.append((change_id, "dc01", f"msg_mem-{i}", account, response))
        sealed = seal(
            keys,
            f"{PASSWORD}{i}",
            AssociatedData(str(delivery_id), str(change_id), target, account),
        )
        deliveries.append(
            (
                delivery_id,
                change_id,
                target,
                account,
                now,
                due_at,
                sealed.key_id,
                sealed.nonce,
                sealed.ciphertext,
            )
        )
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "pcns_changes",
            records=changes,
            columns=["id", "source", "webhook_id", "user_name", "response"],
        )
        await conn.copy_records_to_table(
            "pcns_deliveries",
            records=deliveries,
            columns=[
                "id",
                "change_id",
                "target",
                "account",
                "order_at",
                "due_at",
                "key_id",
                "nonce",
                "ciphertext",
            ],
        )
    finally:
        await conn.close()


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@dataclass
class MemorySample:
    label: str
    rss_kb: int
    hwm_kb: int
    open_rows: int


async def serve_and_measure(
    label: str, config: Path, port: int, url: str, settle: float, log: Path
) -> MemorySample:
    """Run ``pcns serve`` (role all), let it work for ``settle`` s, read its VmRSS and VmHWM."""
    with log.open("ab") as log_fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pcns",
            "serve",
            "--config",
            str(config),
            "--role",
            "all",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_fh,
        )
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await _wait_until(ready, timeout=60, interval=0.1)
        await asyncio.sleep(settle)
        rss = _status_kb(proc.pid, "VmRSS")
        hwm = _status_kb(proc.pid, "VmHWM")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    open_rows = await _count(
        url, "SELECT count(*) FROM pcns_deliveries WHERE state IN ('pending', 'in_flight')"
    )
    return MemorySample(label, rss, hwm, open_rows)


async def bench_memory(
    dbs: Databases, files: ServiceFiles, *, backlog: int, settle: float
) -> list[MemorySample]:
    from pcns.queue.migrate import migrate

    targets: list[dict[str, Any]] = [
        {"name": "noop", "type": "noop"},
        # A target that never answers within the sample window: due rows stay queued behind it.
        {"name": "slow", "type": "noop", "delay": 3600.0},
    ]
    delivery = {"shutdown_grace": "1s"}
    samples: list[MemorySample] = []
    for label, due, target in (
        ("empty queue", None, None),
        (f"{backlog:,} queued, not due (retry in 1 day)", "later", "noop"),
        (f"{backlog:,} queued, due, behind a stalled target", "now", "slow"),
    ):
        url = await dbs.create(f"mem{len(samples)}")
        port = free_port()
        doc = files.document(url, port, delivery=delivery, targets=targets)
        config = files.root / f"memory-{len(samples)}.toml"
        config.write_text(to_toml(doc), encoding="utf-8")
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        if due is not None:
            assert target is not None
            await queue_backlog(url, files, backlog, target=target, due=due)
        await dbs.quiesce(url, analyze=True)
        sample = await serve_and_measure(label, config, port, url, settle, files.root / "serve.log")
        await dbs.drop(url)
        samples.append(sample)
        print(
            f"  (d) {label}: VmRSS {sample.rss_kb / 1024:.1f} MiB "
            f"(VmHWM {sample.hwm_kb / 1024:.1f} MiB, {sample.open_rows} open rows)",
            file=sys.stderr,
            flush=True,
        )
    return samples


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

Row = tuple[str, str, str]


def _rate(values: list[float]) -> str:
    spread = f"  [{min(values):.0f}..{max(values):.0f}]" if len(values) > 1 else ""
    return f"{statistics.median(values):8.0f} /s{spread}"


def _ratio(values: list[float], target: str) -> str:
    spread = f"  [{min(values):.2f}..{max(values):.2f}]" if len(values) > 1 else ""
    return f"{statistics.median(values):8.2f} x{spread}   (target {target})"


def _cpu_line(
    label: str,
    cpus: list[dict[str, float | None]],
    n: int,
    kinds: tuple[str, ...] = ("server", "client", "postgres"),
) -> str:
    """Median CPU milliseconds per 1000 items, per process kind."""
    parts = []
    for key in kinds:
        values = [v for c in cpus if (v := c.get(key)) is not None]
        if values:
            parts.append(f"{key} {statistics.median(values) * 1e6 / n:4.0f}")
    return f"      {label:<11}: " + ", ".join(parts)


def _background(cpus: list[dict[str, float | None]]) -> str:
    values = [v for c in cpus if (v := background_cores(c)) is not None]
    return f"{statistics.median(values):.2f}" if values else "n/a"


def intake_rows(a: IntakeResult, n: int) -> tuple[list[Row], list[str]]:
    paired = [s.rate / min(h.rate, r) for s, h, r in zip(a.service, a.noop, a.raw, strict=True)]
    rows = [
        (
            "(a)",
            f"pcns accepted/s, role receiver, {n} signed POSTs",
            _rate([r.rate for r in a.service]),
        ),
        ("(a)", "ceiling: no-op aiohttp 202, same client", _rate([r.rate for r in a.noop])),
        (
            "(a)",
            f"ceiling: asyncpg 1-row commits, {SENDERS} tasks / pool {POOL_SIZE}",
            _rate(a.raw),
        ),
        ("(a)", "accept rate / min(ceilings), per round", _ratio(paired, ">= 0.8x")),
        (
            "(a)",
            "pcns HTTP 202 latency p50 / p99 (client side)",
            f"{statistics.median(r.p50_ms for r in a.service):8.1f} / "
            f"{statistics.median(r.p99_ms for r in a.service):.1f} ms",
        ),
    ]
    every = [r.cpu for r in a.service] + [r.cpu for r in a.noop] + a.raw_cpu
    notes = [
        "(a) CPU ms per 1000 requests (server process, load generator, postgres):",
        _cpu_line("pcns", [r.cpu for r in a.service], n),
        _cpu_line("no-op HTTP", [r.cpu for r in a.noop], n),
        _cpu_line("raw INSERT", a.raw_cpu, n) + "  (server = the asyncpg client)",
        f"    other processes on the machine meanwhile: {_background(every)} cores (median)",
    ]
    notes += answers_warning("(a)", a.service, " from pcns")
    return rows, notes


def answers_warning(part: str, runs: list[HttpRun], whose: str = "") -> list[str]:
    """A report note for every answer other than 202 over ``runs``, if there was any."""
    bad: Counter[str] = Counter()
    for r in runs:
        bad.update({k: v for k, v in r.statuses.items() if k != "202"})
    return [f"{part} WARNING: answers other than 202{whose}: {dict(bad)}"] if bad else []


def delivery_rows(b: DeliveryResult, args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    n = args.deliveries
    paired = [p.rate / q.rate for p, q in zip(b.pcns, b.pgqueuer, strict=True)]
    rows = [
        (
            "(b)",
            f"pcns deliveries/s, noop, workers {args.workers}, claim_batch {args.batch}",
            _rate([d.rate for d in b.pcns]),
        ),
        (
            "(b)",
            "pcns deliveries/s, noop, delivery defaults (workers 8, claim_batch 64)",
            _rate([d.rate for d in b.pcns_default]),
        ),
        (
            "(b)",
            f"pgqueuer {_pgqueuer_version()} jobs/s, batch_size {args.batch}, "
            f"max_concurrent_tasks {args.workers}",
            _rate([d.rate for d in b.pgqueuer]),
        ),
        ("(b)", "pcns / pgqueuer (same settings), per round", _ratio(paired, ">= 1.0x")),
    ]
    every = [d.cpu for d in b.pcns + b.pcns_default + b.pgqueuer]
    notes = [
        "(b) CPU ms per 1000 deliveries or jobs (worker process, postgres):",
        _cpu_line("pcns", [d.cpu for d in b.pcns], n),
        _cpu_line("pcns dflt", [d.cpu for d in b.pcns_default], n),
        _cpu_line("pgqueuer", [d.cpu for d in b.pgqueuer], n),
        f"    other processes on the machine meanwhile: {_background(every)} cores (median)",
    ]
    return rows, notes


def latency_rows(c: LatencyResult) -> tuple[list[Row], list[str]]:
    rows = [
        (
            "(c)",
            f"offered / achieved rate, role all, {c.total} changes",
            f"{c.offered:8.0f} / {c.achieved:.0f} /s ({c.delivered} delivered)",
        ),
        (
            "(c)",
            "accept-to-delivered p50 / p99 / max (finished_at - created_at)",
            f"{c.p50 * 1000:8.1f} / {c.p99 * 1000:.1f} / {c.worst * 1000:.1f} ms",
        ),
        (
            "(c)",
            "HTTP 202 latency p50 / p99 (client side)",
            f"{c.http.p50_ms:8.1f} / {c.http.p99_ms:.1f} ms",
        ),
    ]
    notes = [f"(c) other processes on the machine meanwhile: {_background([c.http.cpu])} cores"]
    return rows, notes


def memory_rows(mem: list[MemorySample]) -> tuple[list[Row], list[str]]:
    base = mem[0].rss_kb
    rows = [
        (
            "(d)",
            f"pcns serve VmRSS, {s.label}",
            f"{s.rss_kb / 1024:8.1f} MiB  ({s.rss_kb / base:.2f}x; VmHWM {s.hwm_kb / 1024:.1f})",
        )
        for s in mem
    ]
    worst = max(s.rss_kb for s in mem[1:]) if len(mem) > 1 else base
    rows.append(
        ("(d)", "worst backlog RSS / empty-queue RSS", f"{worst / base:8.2f} x   (target <= 1.2x)")
    )
    return rows, []


def print_table(rows: list[Row], notes: list[str]) -> None:
    width = max(len(r[1]) for r in rows)
    print()
    print(f"{'part':<5} {'measurement':<{width}}  value")
    print(f"{'-' * 5} {'-' * width}  {'-' * 36}")
    for part, name, value in rows:
        print(f"{part:<5} {name:<{width}}  {value}")
    print()
    for note in notes:
        print(note)


@contextlib.asynccontextmanager
async def bench_environment(
    args: argparse.Namespace,
) -> AsyncIterator[tuple[Databases, ServiceFiles, str]]:
    """What every benchmark script runs in: scratch databases on ``args.database_url`` (all
    dropped on exit), the service's files in a temporary directory, the service's JSON log lines
    going to a file there, and the PostgreSQL server found for CPU accounting. Yields the
    databases, the files and one line of machine facts for the report."""
    from pcns.logging import configure_logging

    dbs = Databases(args.database_url, max_background=args.max_background)
    with tempfile.TemporaryDirectory(prefix="pcns-bench-") as tmp:
        files = ServiceFiles(Path(tmp))
        with (Path(tmp) / "service.log").open("w", encoding="utf-8") as log_fh:
            # As `pcns serve` logs to a non-terminal: one JSON line per request and attempt.
            configure_logging(level="info", stream=log_fh)
            conn = await asyncpg.connect(args.database_url)
            try:
                pg_version = await conn.fetchval("SHOW server_version")
            finally:
                await conn.close()
            await find_postmaster(args.database_url)
            facts = (
                f"PostgreSQL {pg_version}, {os.cpu_count()} CPUs, Python "
                f"{sys.version.split()[0]}, load average at start {os.getloadavg()[0]:.2f}"
            )
            try:
                yield dbs, files, facts
            finally:
                await dbs.drop_all()


Part = tuple[str, str, Callable[[Databases, ServiceFiles], Awaitable[tuple[list[Row], list[str]]]]]


async def run_parts(args: argparse.Namespace, parts: list[Part], how: str) -> None:
    """Run each ``(key, title, part)`` whose key is in ``args.parts`` inside one
    :func:`bench_environment`, then print every part's rows and notes as one table, headed by
    the machine facts and ``how`` (how the values were aggregated)."""
    rows: list[Row] = []
    notes: list[str] = []
    async with bench_environment(args) as (dbs, files, facts):
        notes.append(f"{facts}; {how}")
        for key, title, part in parts:
            if key in args.parts:
                _progress(title)
                _extend(rows, notes, await part(dbs, files))
    print_table(rows, notes)


async def main(args: argparse.Namespace) -> None:
    async def intake(dbs: Databases, files: ServiceFiles) -> tuple[list[Row], list[str]]:
        a = await bench_intake(dbs, files, count=args.changes, rounds=args.rounds)
        return intake_rows(a, args.changes)

    async def delivery(dbs: Databases, files: ServiceFiles) -> tuple[list[Row], list[str]]:
        b = await bench_delivery(
            dbs,
            files,
            count=args.deliveries,
            rounds=args.rounds,
            workers=args.workers,
            batch=args.batch,
        )
        return delivery_rows(b, args)

    async def latency(dbs: Databases, files: ServiceFiles) -> tuple[list[Row], list[str]]:
        return latency_rows(await bench_latency(dbs, files, rate=args.rate, duration=args.duration))

    async def memory(dbs: Databases, files: ServiceFiles) -> tuple[list[Row], list[str]]:
        return memory_rows(await bench_memory(dbs, files, backlog=args.backlog, settle=args.settle))

    await run_parts(
        args,
        [
            ("a", "(a) intake throughput", intake),
            ("b", "(b) delivery throughput", delivery),
            ("c", "(c) accept-to-delivered latency", latency),
            ("d", "(d) memory", memory),
        ],
        f"medians of {args.rounds} interleaved round(s) [min..max].",
    )


def _progress(message: str) -> None:
    print(message + " ...", file=sys.stderr, flush=True)


def _extend(rows: list[Row], notes: list[str], part: tuple[list[Row], list[str]]) -> None:
    rows += part[0]
    notes += part[1]


def _pgqueuer_version() -> str:
    try:
        from importlib.metadata import version

        return version("pgqueuer")
    except Exception:  # only a label in the table
        return "?"


def benchmark_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark script takes: ``--database-url`` and
    ``--max-background``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--database-url",
        default=os.environ.get("PCNS_BENCH_DATABASE_URL", DEFAULT_URL),
        help="a server where scratch databases may be created (default: $PCNS_BENCH_DATABASE_URL "
        f"or {DEFAULT_URL})",
    )
    p.add_argument(
        "--max-background",
        type=float,
        metavar="CORES",
        help="before each timed window, wait (up to 60 s) until other processes use less than "
        "CORES of CPU; for shared machines (default: do not wait)",
    )
    return p


def with_defaults(args: argparse.Namespace, defaults: dict[str, Any]) -> argparse.Namespace:
    """Fill in every option left unset (None) from ``defaults``, which may depend on --quick."""
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = benchmark_parser(__doc__)
    p.add_argument("--parts", default="abcd", help="which parts to run (default: abcd)")
    p.add_argument("--quick", action="store_true", help="a short smoke run of every part")
    p.add_argument("--rounds", type=int, help="rounds of (a) and (b), median reported (3)")
    p.add_argument("--changes", type=int, help="(a) signed POSTs per timed run (5000)")
    p.add_argument("--deliveries", type=int, help="(b) deliveries drained per run (5000)")
    p.add_argument("--workers", type=int, default=32, help="(b) concurrency of both queues (32)")
    p.add_argument("--batch", type=int, default=16, help="(b) claim/dequeue batch of both (16)")
    p.add_argument("--rate", type=float, default=200.0, help="(c) offered changes/s (200)")
    p.add_argument("--duration", type=float, help="(c) seconds of offered load (10)")
    p.add_argument("--backlog", type=int, help="(d) queued deliveries (100000)")
    p.add_argument("--settle", type=float, help="(d) seconds served before reading RSS (8)")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "rounds": 1 if quick else 3,
        "changes": 1000 if quick else 5000,
        "deliveries": 1000 if quick else 5000,
        "duration": 3.0 if quick else 10.0,
        "backlog": 20_000 if quick else 100_000,
        "settle": 6.0 if quick else 8.0,
    }
    return with_defaults(args, defaults)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_loadgen":
        asyncio.run(_loadgen(json.loads(sys.argv[2])))
    else:
        asyncio.run(main(parse_args(sys.argv[1:])))
