"""This worker's heartbeat, and the reaper that takes over from dead workers.

Every ``delivery.heartbeat_interval`` the worker refreshes its row in ``pcns_workers`` and reaps:
workers silent for ``delivery.worker_timeout`` are deleted and their in-flight deliveries go
back to the queue (:mod:`pcns.queue.workers`). Before reaping, a worker looks at the rows
registered from its own host: a row whose process no longer runs (that pid, started at that
time) is its own previous incarnation, or a sibling process, killed; those are taken over at
once, not after the timeout.

Fencing: a worker that cannot refresh its heartbeat for ``worker_timeout - heartbeat_interval``
(timed from the last refresh it sent, so never later than the database's own reckoning) stops
every attempt it has in flight before anyone else may take those deliveries over, and registers
again under a new id; so a worker cut off from its database never writes a password another
worker is writing too. A worker that finds its row gone (declared dead) does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Collection
from uuid import UUID, uuid4

import psutil
import structlog

from pcns import __version__
from pcns.config import DeliverySettings
from pcns.errors import DatabaseError
from pcns.queue.deliveries import DeliveryQueue
from pcns.queue.workers import WorkerRecord

log = structlog.get_logger(__name__)

PARKED_EXPIRY_INTERVAL = 15.0


def this_host() -> str:
    """Host name, boot and pid namespace: a pid means the same process only within all three
    (another container, or the host after a reboot, may run anything under that pid)."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip()[:8])
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return "/".join(parts)


def process_started(pid: int) -> float | None:
    """When process ``pid`` started, or None if it does not run (a zombie has ended)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return float("nan")  # another user's process: it runs, start time unknown


def still_running(worker: WorkerRecord) -> bool:
    """Whether ``worker``'s process runs: its pid, started at the recorded time."""
    started = process_started(worker.pid)
    if started is None:
        return False
    return started != started or abs(started - worker.process_started) < 0.5  # nan: unknown


class Heartbeat:
    """Registers this worker, keeps its heartbeat fresh, reaps dead workers, fences itself."""

    def __init__(
        self,
        queue: DeliveryQueue,
        settings: DeliverySettings,
        *,
        on_fenced: Callable[[], None],
        on_reaped: Callable[[list[tuple[str, str]]], None],
        on_expired: Callable[[list[str]], None],
        held: Callable[[], Collection[UUID]],
    ) -> None:
        self._queue = queue
        self._settings = settings
        self._on_fenced = on_fenced
        self._on_reaped = on_reaped
        self._on_expired = on_expired
        self._held = held
        self._host = this_host()
        self._pid = os.getpid()
        self._started = process_started(self._pid) or time.time()
        self.id: UUID = uuid4()
        self._previous: UUID | None = None
        self.registered = asyncio.Event()
        self._last_sent = time.monotonic()

    def apply(self, settings: DeliverySettings) -> None:
        self._settings = settings

    def _record(self) -> WorkerRecord:
        return WorkerRecord(self.id, self._host, self._pid, self._started)

    async def _register(self) -> None:
        sent = time.monotonic()
        await self._queue.register_worker(self._record(), __version__, replaces=self._previous)
        self._previous = None
        self._last_sent = sent
        self.registered.set()
        log.info("worker_registered", worker_id=str(self.id))

    async def _take_over_dead_neighbours(self) -> None:
        """Rows of this host whose process no longer runs: dead now, not in worker_timeout."""
        rows = await self._queue.workers_on_host(self._host)
        dead = [w.id for w in rows if w.id != self.id and not still_running(w)]
        if dead:
            await self._queue.retire_workers(dead)
            log.warning("dead_workers_taken_over", count=len(dead))

    def _fence(self, why: str) -> None:
        """Stop every attempt in flight and come back under a new id."""
        log.warning("worker_fenced", reason=why, worker_id=str(self.id))
        self.registered.clear()
        self._previous, self.id = self.id, uuid4()
        self._on_fenced()

    async def run(self, stop: asyncio.Event) -> None:
        """Beat and reap every ``heartbeat_interval`` until ``stop``; then retire."""
        expiry_due = 0.0
        while not stop.is_set():
            s = self._settings
            try:
                if not self.registered.is_set():
                    await self._register()
                else:
                    sent = time.monotonic()
                    alive = await self._queue.heartbeat(self.id, timeout=s.heartbeat_interval)
                    if alive:
                        self._last_sent = sent
                    else:
                        self._fence("declared dead: its heartbeat row is gone")
                        continue
                    lost = await self._queue.release_lost_claims(self.id, self._held())
                    if lost:
                        log.warning("lost_claims_released", count=len(lost))
                        self._on_reaped([(t, "pending") for t in lost])
                await self._take_over_dead_neighbours()
                reaped = await self._queue.reap(
                    max_attempts=s.max_attempts, worker_timeout=s.worker_timeout
                )
                if reaped:
                    self._on_reaped(reaped)
                if time.monotonic() >= expiry_due:
                    expiry_due = time.monotonic() + PARKED_EXPIRY_INTERVAL
                    self._on_expired(await self._queue.expire_parked(max_age_seconds=s.max_age))
            except Exception as exc:  # the database away, or a bug: either way no heartbeat
                if not isinstance(exc, DatabaseError | TimeoutError):
                    log.error("heartbeat_crashed", error=type(exc).__name__)
                silent = time.monotonic() - self._last_sent
                if self.registered.is_set() and silent > s.worker_timeout - s.heartbeat_interval:
                    self._fence(f"no heartbeat for {silent:.1f}s ({type(exc).__name__})")
            await _sleep(stop, s.heartbeat_interval)

    async def retire(self) -> None:
        """A clean stop, after in-flight work was recorded or released."""
        if not self.registered.is_set():
            return
        try:
            await self._queue.retire_worker(self.id)
        except DatabaseError:
            log.warning("worker_retire_failed_heartbeat_will_expire", worker_id=str(self.id))


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
