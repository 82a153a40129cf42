"""CPU accounting for a timed window: this process, the PostgreSQL server under test (its
postmaster and every child, live or exited), and what every other process on the machine used
meanwhile. On a shared 2-core box the last one says how far a number can be trusted."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field

import asyncpg

CLK_TCK = os.sysconf("SC_CLK_TCK")

# The postmaster of the server under test, found once from a backend's parent; other PostgreSQL
# servers on the machine (embedded ones that test suites start) are not counted.
POSTMASTER: list[int] = []


def proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` from the state on (field 3), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def proc_cpu(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone)."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields else 0.0


async def find_postmaster(url: str) -> None:
    """Remember the postmaster of the server at ``url`` for :func:`postgres_cpu`."""
    conn = await asyncpg.connect(url)
    try:
        backend: int = await conn.fetchval("SELECT pg_backend_pid()")
        fields = proc_stat(backend)
    finally:
        await conn.close()
    if fields is not None:  # None: the server is not on this machine
        POSTMASTER[:] = [int(fields[1])]


def postgres_cpu() -> float | None:
    """CPU seconds of the server under test: its postmaster and every child of it, including
    children that have exited (backends of closed connections, autovacuum workers), which the
    postmaster has reaped into its cutime and cstime."""
    if not POSTMASTER:
        return None
    postmaster = POSTMASTER[0]
    fields = proc_stat(postmaster)
    if fields is None:
        return None
    total = sum(int(v) for v in fields[11:15]) / CLK_TCK  # utime, stime, cutime, cstime
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields is not None and int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def system_busy() -> float:
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
            "server": proc_cpu(os.getpid()),
            "postgres": postgres_cpu(),
            "system": system_busy(),
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
    """Cores that processes the window did not measure used over it (None: unknown)."""
    system, wall = cpu.get("system"), cpu.get("wall")
    if system is None or not wall:
        return None
    # Every process the benchmark measured (server, client, postgres, or others a caller adds).
    ours = sum(v for k, v in cpu.items() if k not in ("system", "wall") and v is not None)
    return max(0.0, system - ours) / wall


async def wait_for_quiet_machine(max_cores: float, *, timeout: float) -> None:  # noqa: ASYNC109
    """Wait until the machine, with our processes idle, uses less than ``max_cores``."""
    deadline = time.monotonic() + timeout
    while True:
        before = system_busy()
        await asyncio.sleep(0.5)
        busy = (system_busy() - before) / 0.5
        if busy < max_cores:
            return
        if time.monotonic() > deadline:
            print(
                f"  machine still busy ({busy:.2f} cores used by others); measuring anyway ...",
                file=sys.stderr,
                flush=True,
            )
            return
