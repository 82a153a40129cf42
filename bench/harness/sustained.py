"""A closed-loop load that runs while the benchmark measures something else beside it: the load
generator of :mod:`bench.harness.loadgen`, told to go and stopped when the body is done.

The windows are measured by the service's own counters (:func:`accepted`), sampled in this
process, not by the generator's result: a window begins and ends with an event of the
benchmark (a statement starting, an answer arriving), not with the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg

from bench.harness.cpu import CpuWindow, proc_cpu

if TYPE_CHECKING:
    from pcns.app import RunningService


def accepted(service: RunningService, source: str = "dc01") -> float:
    """The service's own count of changes it committed and answered 202 for."""
    value = service.metrics.registry.get_sample_value(
        "pcns_changes_accepted_total", {"source": source}
    )
    return value or 0.0


@dataclass
class Window:
    """Accepted changes, wall time and CPU over one window of a sustained load."""

    changes: float = 0.0
    seconds: float = 0.0
    cpu: dict[str, float | None] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.changes / self.seconds if self.seconds else 0.0


@dataclass
class SustainedLoad:
    proc: asyncio.subprocess.Process

    @property
    def running(self) -> bool:
        """False once the generator has sent all its requests: a window that ended later was
        not under load for all of its length."""
        return self.proc.returncode is None

    @contextlib.asynccontextmanager
    async def window(self, service: RunningService) -> AsyncIterator[Window]:
        """Measure the body: accepted changes, seconds, and CPU of this process, PostgreSQL
        and the generator ("client")."""
        out = Window()
        cpu = CpuWindow()
        client0 = proc_cpu(self.proc.pid)
        before, started = accepted(service), time.perf_counter()
        cpu.begin()
        try:
            yield out
        finally:
            cpu.end()
            out.seconds = time.perf_counter() - started
            out.changes = accepted(service) - before
            out.cpu = {**cpu.used, "client": proc_cpu(self.proc.pid) - client0}


@contextlib.asynccontextmanager
async def sustained_load(
    spec: dict[str, Any], before_go: Callable[[], Awaitable[None]] | None = None
) -> AsyncIterator[SustainedLoad]:
    """Start the generator with ``spec`` (a closed-loop spec whose ``count`` outlasts the body),
    let it warm up, run ``before_go``, and go; stop it on exit, whatever it had left to send."""
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
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=300)
        if line.strip() != b"ready":
            raise RuntimeError(f"load generator did not start: {line!r}")
        if before_go is not None:
            await before_go()
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        yield SustainedLoad(proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@dataclass
class Watch:
    """What the database's client backends waited on, sampled every 0.1 s, the WAL written,
    and the longest stretch in which the service accepted no change (sampled every 20 ms)."""

    waits: Counter[str] = field(default_factory=Counter)
    wal_bytes: int = 0
    longest_stall: float = 0.0


@contextlib.asynccontextmanager
async def watching(url: str, service: RunningService) -> AsyncIterator[Watch]:
    """Watch the database at ``url`` and the service's intake over the body (:class:`Watch`)."""
    out = Watch()
    conn = await asyncpg.connect(url)
    start_lsn = await conn.fetchval("SELECT pg_current_wal_lsn()")

    async def waits() -> None:
        while True:
            for r in await conn.fetch(
                "SELECT wait_event_type || ':' || wait_event AS w FROM pg_stat_activity"
                " WHERE datname = current_database() AND backend_type = 'client backend'"
                " AND pid <> pg_backend_pid() AND state = 'active' AND wait_event IS NOT NULL"
            ):
                out.waits[r["w"]] += 1
            await asyncio.sleep(0.1)

    async def stalls() -> None:
        last, since = accepted(service), time.perf_counter()
        while True:
            await asyncio.sleep(0.02)
            now, count = time.perf_counter(), accepted(service)
            if count != last:
                last, since = count, now
            out.longest_stall = max(out.longest_stall, now - since)

    tasks = [asyncio.create_task(waits()), asyncio.create_task(stalls())]
    try:
        yield out
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        out.wal_bytes = await conn.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)::bigint", start_lsn
        )
        await conn.close()
