"""Receivers and workers as ``pcns serve`` processes on one queue, each with its own config
(its own listen port) and log; any one of them can be SIGKILLed and started again.

A killed worker's deliveries stay in flight until the queue hands them to another worker; how
long that takes is measured per kill: from the kill until every delivery that was in flight at
that moment has left ``in_flight`` and ``pending`` (:func:`recovered_after`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from bench.harness.databases import wait_until
from bench.harness.service import free_port, start_pcns, stop_pcns, write_config

if TYPE_CHECKING:
    from pcns.config import Role

ROOT = Path(__file__).resolve().parents[2]  # the checkout bench belongs to: its pcns is run
OPEN = "state IN ('pending', 'in_flight')"
IN_FLIGHT_WAIT = 1.0


@dataclass
class Member:
    """One ``pcns serve --role ROLE`` process, started again after every kill."""

    name: str
    role: Role
    config: Path
    port: int
    log: Path
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0

    async def start(self) -> float:
        """Start the process; the seconds it took to answer ``/readyz``."""
        started = time.monotonic()
        self.proc = await start_pcns(self.config, self.port, self.log, role=self.role, cwd=ROOT)
        self.starts += 1
        return time.monotonic() - started

    async def kill(self) -> None:
        """SIGKILL, as the OOM killer or a power cut would, and reap the process."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.proc = None

    async def stop(self) -> None:
        """SIGTERM: the service's own graceful shutdown."""
        if self.proc is not None:
            await stop_pcns(self.proc)
            self.proc = None


@dataclass(frozen=True)
class Kill:
    """One SIGKILL: whom, when (s since the load began), how long the process took to be ready
    again, and how many deliveries were in flight in the queue right after it."""

    member: str
    role: str
    at: float
    restart_s: float
    in_flight: int


@dataclass
class Fleet:
    """``receivers`` receiver and ``workers`` worker processes sharing ``document``'s queue."""

    root: Path
    document: dict[str, Any]
    receivers: int
    workers: int
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        receivers: list[Role] = ["receiver"] * self.receivers
        workers: list[Role] = ["worker"] * self.workers
        roles = receivers + workers
        for n, role in enumerate(roles):
            name = f"{role}-{n if role == 'receiver' else n - self.receivers}"
            port = free_port()
            doc = {**self.document, "server": {**self.document["server"]}}
            doc["server"]["listen"] = f"127.0.0.1:{port}"
            config = write_config(self.root / f"{name}.toml", doc)
            self.members.append(
                Member(name, role, config, port, self.root / "logs" / f"{name}.log")
            )

    @property
    def receiver_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{m.port}" for m in self.members if m.role == "receiver"]

    async def start(self) -> None:
        await asyncio.gather(*(m.start() for m in self.members))

    async def stop(self) -> None:
        await asyncio.gather(*(m.stop() for m in self.members))

    def logs(self) -> list[Path]:
        return [m.log for m in self.members]


async def open_delivery_ids(conn: asyncpg.Connection, state: str = "in_flight") -> list[Any]:
    """The ids of the queue's deliveries in ``state`` right now."""
    rows = await conn.fetch("SELECT id FROM pcns_deliveries WHERE state = $1", state)
    return [r["id"] for r in rows]


async def recovered_after(
    url: str,
    ids: list[Any],
    killed_at: float,
    *,
    timeout: float,  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
) -> float | None:
    """Seconds from ``killed_at`` (monotonic) until none of ``ids`` is pending or in flight;
    None if that did not happen within ``timeout`` s."""
    conn = await asyncpg.connect(url)
    try:

        async def settled() -> bool:
            left: int = await conn.fetchval(
                f"SELECT count(*) FROM pcns_deliveries WHERE id = ANY($1::uuid[]) AND {OPEN}", ids
            )
            return left == 0

        try:
            await wait_until(settled, timeout=timeout, interval=0.1)
        except TimeoutError:
            return None
        return time.monotonic() - killed_at
    finally:
        await conn.close()


async def wait_drained(
    url: str,
    *,
    timeout: float,  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
) -> int:
    """Wait until no delivery is pending or in flight (or ``timeout`` s); how many still are."""
    conn = await asyncpg.connect(url)
    try:

        async def count() -> int:
            n: int = await conn.fetchval(f"SELECT count(*) FROM pcns_deliveries WHERE {OPEN}")
            return n

        async def drained() -> bool:
            return await count() == 0

        with contextlib.suppress(TimeoutError):
            await wait_until(drained, timeout=timeout, interval=0.2)
        return await count()
    finally:
        await conn.close()


async def kill_and_restart(
    fleet: Fleet,
    url: str,
    *,
    kills: int,
    interval: float,
    rng: random.Random,
    began: float,
    recovery_timeout: float,
) -> tuple[list[Kill], list[float | None]]:
    """``kills`` times: about ``interval`` s after the last kill (0.5 to 1.5 times, at random),
    SIGKILL a member picked at random and start it again. A worker is killed when the queue
    has a delivery in flight (waiting up to ``IN_FLIGHT_WAIT`` s for one): a worker holding
    nothing would prove little. Returns the kills and, for each worker
    killed while deliveries were in flight, the seconds until all of those had settled (None:
    not within ``recovery_timeout``)."""
    done: list[Kill] = []
    watchers: list[asyncio.Task[float | None]] = []
    conn = await asyncpg.connect(url)
    try:
        last = time.monotonic()
        for _ in range(kills):
            await asyncio.sleep(
                max(0.0, last + rng.uniform(0.5, 1.5) * interval - time.monotonic())
            )
            member = rng.choice(fleet.members)
            if member.role == "worker":
                await _some_in_flight(conn, wait=IN_FLIGHT_WAIT)
            await member.kill()
            last = time.monotonic()
            held = await open_delivery_ids(conn)
            if member.role == "worker" and held:
                watch = recovered_after(url, held, last, timeout=recovery_timeout)
                watchers.append(asyncio.create_task(watch))
            restart = await member.start()
            done.append(Kill(member.name, member.role, last - began, restart, len(held)))
            print(
                f"  kill {len(done)}/{kills}: {member.name} at {last - began:.1f}s, "
                f"{len(held)} in flight, ready again after {restart:.1f}s",
                file=sys.stderr,
                flush=True,
            )
        return done, list(await asyncio.gather(*watchers))
    finally:
        for task in watchers:
            task.cancel()
        await conn.close()


async def _some_in_flight(conn: asyncpg.Connection, *, wait: float) -> None:
    """Return once a delivery is in flight, or after ``wait`` s."""

    async def any_in_flight() -> bool:
        found: bool = await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pcns_deliveries WHERE state = 'in_flight')"
        )
        return found

    with contextlib.suppress(TimeoutError):
        await wait_until(any_in_flight, timeout=wait, interval=0.01)
