"""The delivery queue as the rest of the service sees it: one object that owns the pool.

Each method borrows a connection, runs the statements of :mod:`pcns.queue.store` (or
:mod:`pcns.queue.retention`) and translates driver errors once, so callers handle only
:class:`~pcns.errors.DatabaseUnavailable` (retry later) and :class:`~pcns.errors.QueueRefused`
(the database said no), both :class:`~pcns.errors.DatabaseError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from pcns.database import Database, translated
from pcns.queue import operations as ops
from pcns.queue import store, workers
from pcns.queue.operations import DeliveryFilter, OperatorAction
from pcns.queue.records import (
    ChangeStatus,
    ClaimedDelivery,
    Committed,
    DeliveryId,
    DeliveryView,
    NewChange,
    Outcome,
    Recorded,
    TargetHold,
    TargetQueueStats,
)
from pcns.queue.retention import Pruned, prune_finished
from pcns.queue.workers import WorkerRecord

# How long a caller waits for a pooled connection before the database counts as unavailable.
INTAKE_ACQUIRE_TIMEOUT = 5.0
ACQUIRE_TIMEOUT = 10.0
# How long an intake commit or a claim may run. A connection the network swallowed (no reset,
# no answer) would otherwise hold the group committer, and every change behind it, for the
# pool's 30 s command timeout; hooks give up after 10 s. A commit that timed out after it ran is
# harmless: the hook's resend (same webhook-id) gets the stored answer.
INTAKE_STATEMENT_TIMEOUT = 5.0
CLAIM_STATEMENT_TIMEOUT = 10.0


class DeliveryQueue:
    """Changes in, deliveries claimed, outcomes recorded; status and statistics for operators."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pool = db.pool

    def __repr__(self) -> str:
        return "DeliveryQueue()"

    @contextlib.asynccontextmanager
    async def _bounded(self, seconds: float, *, acquire: float) -> AsyncIterator[Any]:
        """A pooled connection for at most ``seconds``: past that, the connection is cut and
        TimeoutError raised. The driver's own statement timeout is no bound on a connection
        the network swallowed: it asks the server to cancel, then waits for an answer that
        never comes (and so would returning the connection to the pool)."""
        conn = await self._pool.acquire(timeout=acquire)
        try:
            async with asyncio.timeout(seconds):
                yield conn
        except TimeoutError:
            conn.terminate()
            raise
        finally:
            await self._pool.release(conn)

    async def insert_changes(self, changes: Sequence[NewChange]) -> list[Committed]:
        """Commit a group of changes in one statement (see :func:`store.insert_changes`)."""
        with translated():
            async with self._bounded(INTAKE_STATEMENT_TIMEOUT, acquire=INTAKE_ACQUIRE_TIMEOUT) as c:
                return await store.insert_changes(c, changes)

    async def claim(
        self,
        *,
        limit: int,
        lease_seconds: float,
        max_age_seconds: float,
        targets: Sequence[str],
        worker: UUID | None = None,
        quotas: Mapping[str, int] | None = None,
        token: UUID | None = None,
    ) -> tuple[list[ClaimedDelivery], dict[str, list[str]]]:
        """Lease up to ``limit`` due deliveries (see :func:`store.claim_due_deliveries`)."""
        with translated():
            async with self._bounded(CLAIM_STATEMENT_TIMEOUT, acquire=ACQUIRE_TIMEOUT) as conn:
                return await store.claim_due_deliveries(
                    conn,
                    limit=limit,
                    lease_seconds=lease_seconds,
                    max_age_seconds=max_age_seconds,
                    targets=targets,
                    worker=worker,
                    quotas=quotas,
                    token=token,
                )

    async def complete(self, outcomes: Sequence[Outcome]) -> dict[DeliveryId, Recorded]:
        """Record outcomes; each still-leased row's accept-to-now age in seconds."""
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                return await store.complete_deliveries(conn, outcomes)

    async def release(self, deliveries: Sequence[ClaimedDelivery]) -> None:
        """Give unfinished deliveries back (shutdown), due now, the attempt not counted."""
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                await store.release_deliveries(conn, deliveries)

    async def reap(self, *, max_attempts: int, worker_timeout: float) -> list[tuple[str, str]]:
        """Return deliveries of workers that stopped heartbeating; (target, new state) each."""
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                return await workers.reap_dead_workers(
                    conn, max_attempts=max_attempts, worker_timeout=worker_timeout
                )

    async def register_worker(
        self, me: WorkerRecord, version: str, *, replaces: UUID | None = None
    ) -> None:
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                await workers.register_worker(conn, me, version, replaces=replaces)

    async def heartbeat(self, worker: UUID, *, timeout: float) -> bool:  # noqa: ASYNC109
        """Refresh ``worker``'s heartbeat within ``timeout``; False: it was declared dead."""
        with translated():
            async with self._bounded(timeout, acquire=timeout) as conn:
                return await workers.heartbeat(conn, worker)

    async def release_lost_claims(self, worker: UUID, live: Collection[UUID]) -> list[str]:
        """Rows in flight for ``worker`` under a lease token it does not hold (a claim whose
        answer never came back) go back to the queue; their targets."""
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                return await workers.release_lost_claims(conn, worker, live)

    async def retire_worker(self, worker: UUID) -> None:
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                await workers.retire_worker(conn, worker)

    async def workers_on_host(self, host: str) -> list[WorkerRecord]:
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                return await workers.workers_on_host(conn, host)

    async def retire_workers(self, ids: list[UUID]) -> None:
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                await workers.retire_workers(conn, ids)

    async def postpone_target(self, target: str, seconds: float) -> int:
        """Reschedule a target's pending deliveries past ``seconds``; how many were moved."""
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                return await store.postpone_target(conn, target, seconds)

    async def expire_parked(self, *, max_age_seconds: float) -> list[str]:
        """End parked deliveries past ``max_age_seconds`` (ciphertext deleted); their targets."""
        with translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                return await store.expire_parked(conn, max_age_seconds=max_age_seconds)

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

    # Operators' tools. Each bulk action is recorded in the operators' audit trail in the same
    # transaction as the rows it changes.

    async def find(
        self, f: DeliveryFilter, *, limit: int = 50, before: UUID | None = None
    ) -> list[DeliveryView]:
        """One page of the deliveries ``f`` selects, newest first (keyset by ``before``)."""
        with translated():
            async with self._pool.acquire(timeout=INTAKE_ACQUIRE_TIMEOUT) as conn:
                return await ops.list_deliveries(conn, f, limit=limit, before=before)

    async def get(self, delivery_id: UUID) -> DeliveryView | None:
        with translated():
            async with self._pool.acquire(timeout=INTAKE_ACQUIRE_TIMEOUT) as conn:
                return await ops.get_delivery(conn, delivery_id)

    async def retry(self, f: DeliveryFilter, *, actor: str, dry_run: bool = False) -> list[str]:
        """Parked (and backing-off pending) deliveries ``f`` selects become due now; the
        targets of the rows retried (``dry_run``: would be, nothing changed or recorded)."""
        return await self._bulk("retry", ops.retry_deliveries, f, actor, dry_run)

    async def cancel_matching(
        self, f: DeliveryFilter, *, actor: str, dry_run: bool = False
    ) -> list[str]:
        """Pending and parked deliveries ``f`` selects end cancelled, ciphertexts deleted."""
        return await self._bulk("cancel", ops.cancel_deliveries, f, actor, dry_run)

    async def _bulk(
        self,
        action: str,
        run: Callable[[Any, DeliveryFilter], Awaitable[list[str]]],
        f: DeliveryFilter,
        actor: str,
        dry_run: bool,
    ) -> list[str]:
        with translated():
            async with self._pool.acquire(timeout=INTAKE_ACQUIRE_TIMEOUT) as conn:
                tx = conn.transaction()
                await tx.start()
                try:
                    targets = await run(conn, f)
                    if not dry_run:
                        await ops.record_action(conn, actor, action, f.as_json(), len(targets))
                except BaseException:
                    await tx.rollback()
                    raise
                # A dry run is the same statement rolled back: its count is exact.
                await (tx.rollback() if dry_run else tx.commit())
        return targets

    async def hold_target(
        self, target: str, *, actor: str, until: datetime | None, reason: str | None
    ) -> None:
        """Hold ``target``: its deliveries wait, not claimed, until :meth:`release_target`."""
        with translated():
            async with (
                self._pool.acquire(timeout=INTAKE_ACQUIRE_TIMEOUT) as conn,
                conn.transaction(),
            ):
                await ops.hold_target(conn, target, actor=actor, until=until, reason=reason)
                detail: dict[str, Any] = {"target": target}
                if until is not None:
                    detail["until"] = until.isoformat()
                if reason:
                    detail["reason"] = reason
                await ops.record_action(conn, actor, "hold", detail, 1)

    async def release_target(self, target: str, *, actor: str) -> bool:
        """End a hold; False if the target was not held."""
        with translated():
            async with (
                self._pool.acquire(timeout=INTAKE_ACQUIRE_TIMEOUT) as conn,
                conn.transaction(),
            ):
                released = await ops.release_target(conn, target)
                if released:
                    await ops.record_action(conn, actor, "release", {"target": target}, 1)
        return released

    async def holds(self) -> list[TargetHold]:
        with translated():
            async with self._pool.acquire(timeout=INTAKE_ACQUIRE_TIMEOUT) as conn:
                return await ops.target_holds(conn)

    async def operator_actions(self, limit: int = 50) -> list[OperatorAction]:
        """The operators' audit trail, newest first."""
        with translated():
            async with self._pool.acquire(timeout=INTAKE_ACQUIRE_TIMEOUT) as conn:
                return await ops.operator_actions(conn, limit)

    async def listen_for_work(self, on_wake: Callable[[], None], stop: asyncio.Event) -> None:
        """Call ``on_wake`` whenever new work is committed, until ``stop``."""
        await self._db.listen(store.WAKEUP_CHANNEL, on_wake, stop)
