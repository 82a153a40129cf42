"""The delivery queue as the rest of the service sees it: one object that owns the pool.

Each method borrows a connection, runs the statements of :mod:`pcns.queue.store` (or
:mod:`pcns.queue.retention`) and translates driver errors once, so callers handle only
:class:`~pcns.errors.DatabaseUnavailable` (retry later) and :class:`~pcns.errors.QueueRefused`
(the database said no), both :class:`~pcns.errors.DatabaseError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from uuid import UUID

from pcns.database import Database, translated
from pcns.queue import store
from pcns.queue.records import (
    ChangeStatus,
    ClaimedDelivery,
    Committed,
    DeliveryId,
    NewChange,
    Outcome,
    TargetQueueStats,
)
from pcns.queue.retention import Pruned, prune_finished

# How long a caller waits for a pooled connection before the database counts as unavailable.
INTAKE_ACQUIRE_TIMEOUT = 5.0
ACQUIRE_TIMEOUT = 10.0


class DeliveryQueue:
    """Changes in, deliveries claimed, outcomes recorded; status and statistics for operators."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pool = db.pool

    def __repr__(self) -> str:
        return "DeliveryQueue()"

    async def insert_changes(self, changes: Sequence[NewChange]) -> list[Committed]:
        """Commit a group of changes in one statement (see :func:`store.insert_changes`)."""
        with translated():
            async with self._pool.acquire(timeout=INTAKE_ACQUIRE_TIMEOUT) as conn:
                return await store.insert_changes(conn, changes)

    async def claim(
        self, *, limit: int, lease_seconds: float, max_age_seconds: float
    ) -> tuple[list[ClaimedDelivery], dict[str, list[str]]]:
        """Lease up to ``limit`` due deliveries (see :func:`store.claim_due_deliveries`)."""
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                return await store.claim_due_deliveries(
                    conn, limit=limit, lease_seconds=lease_seconds, max_age_seconds=max_age_seconds
                )

    async def complete(self, outcomes: Sequence[Outcome]) -> dict[DeliveryId, float]:
        """Record outcomes; each still-leased row's accept-to-now age in seconds."""
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                return await store.complete_deliveries(conn, outcomes)

    async def release(self, deliveries: Sequence[ClaimedDelivery]) -> None:
        """Give unfinished deliveries back (shutdown), due now, the attempt not counted."""
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                await store.release_deliveries(conn, deliveries)

    async def reap(self, *, max_attempts: int) -> list[tuple[str, str]]:
        """Return deliveries whose worker lost its lease; (target, new state) for each."""
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                return await store.reap_expired_leases(conn, max_attempts=max_attempts)

    async def hold_target(self, target: str, seconds: float) -> int:
        """Reschedule a target's pending deliveries past ``seconds``; how many were held."""
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                return await store.defer_target(conn, target, seconds)

    async def cancel(self, change_id: UUID) -> list[str]:
        """End a change's pending deliveries as ``cancelled``; returns their targets."""
        with translated():
            async with self._pool.acquire(timeout=INTAKE_ACQUIRE_TIMEOUT) as conn:
                return await store.cancel_change(conn, change_id)

    async def status(self, change_id: UUID) -> ChangeStatus | None:
        with translated():
            async with self._pool.acquire(timeout=INTAKE_ACQUIRE_TIMEOUT) as conn:
                return await store.change_status(conn, change_id)

    async def stats(self) -> list[TargetQueueStats]:
        """Open deliveries per target."""
        with translated():
            async with self._pool.acquire(timeout=INTAKE_ACQUIRE_TIMEOUT) as conn:
                return await store.queue_stats(conn)

    async def prune(self, *, older_than: float, batch: int = 5000) -> Pruned:
        """Delete finished history (see :mod:`pcns.queue.retention`)."""
        with translated():
            return await prune_finished(self._pool, older_than=older_than, batch=batch)

    async def ping(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109 - a probe's own bound
        """One round trip; raises :class:`~pcns.errors.DatabaseError` if it fails."""
        with translated():
            async with self._pool.acquire(timeout=timeout) as conn:
                await conn.fetchval("SELECT 1", timeout=timeout)

    async def listen_for_work(self, on_wake: Callable[[], None], stop: asyncio.Event) -> None:
        """Call ``on_wake`` whenever new work is committed, until ``stop``."""
        await self._db.listen(store.WAKEUP_CHANNEL, on_wake, stop)
