"""Worker heartbeats and the reaper (migration 008): the statements that tell live workers from
dead ones and hand a dead worker's in-flight deliveries back to the queue.

A worker is alive while its row's ``heartbeat_at`` is younger than ``delivery.worker_timeout``,
measured by the database's clock alone, so the hosts' clocks never matter. The reaper deletes a
stale row and returns that worker's deliveries in one statement; a worker that finds its own row
gone was declared dead and must abandon what it holds (see :mod:`pcns.delivery.heartbeat`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from uuid import UUID

import asyncpg


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A registered worker process: where it runs and which process it is."""

    id: UUID
    host: str
    pid: int
    process_started: float


_REGISTER = """
WITH gone AS (DELETE FROM pcns_workers WHERE id = $6)
INSERT INTO pcns_workers (id, host, pid, process_started, version) VALUES ($1, $2, $3, $4, $5)
"""


async def register_worker(
    conn: asyncpg.Connection, me: WorkerRecord, version: str, *, replaces: UUID | None = None
) -> None:
    """Register ``me``, heartbeat now; ``replaces``: this process's previous id, retired in the
    same statement (its deliveries are reaped as any dead worker's)."""
    await conn.execute(_REGISTER, me.id, me.host, me.pid, me.process_started, version, replaces)


async def heartbeat(conn: asyncpg.Connection, worker: UUID) -> bool:
    """Refresh ``worker``'s heartbeat; False when its row is gone (it was declared dead)."""
    done: str = await conn.execute(
        "UPDATE pcns_workers SET heartbeat_at = now() WHERE id = $1", worker
    )
    return done != "UPDATE 0"


async def retire_worker(conn: asyncpg.Connection, worker: UUID) -> None:
    """A clean stop: the worker's row goes (its deliveries were released or recorded)."""
    await conn.execute("DELETE FROM pcns_workers WHERE id = $1", worker)


async def workers_on_host(conn: asyncpg.Connection, host: str) -> list[WorkerRecord]:
    rows = await conn.fetch(
        "SELECT id, host, pid, process_started FROM pcns_workers WHERE host = $1", host
    )
    return [WorkerRecord(r["id"], r["host"], r["pid"], r["process_started"]) for r in rows]


async def retire_workers(conn: asyncpg.Connection, workers: list[UUID]) -> None:
    """Workers found dead by other means (a pid that no longer runs): their rows go now."""
    await conn.execute("DELETE FROM pcns_workers WHERE id = ANY($1::uuid[])", workers)


# A claim that committed but whose answer was lost (the connection died, or the statement's
# timeout fired after it ran) leaves rows in flight under a live worker's id that the worker
# does not know it holds: its heartbeat would keep them forever. The worker names the lease
# tokens it holds (its attempts and its claims under way); any other in-flight row of its id
# goes back, due now, the attempt that never began not counted.
_RELEASE_LOST_CLAIMS = """
UPDATE pcns_deliveries SET
    state = 'pending', attempts = greatest(attempts - 1, 0), due_at = now(),
    last_error = 'its claim was lost on the way back to the worker',
    lease_token = NULL, lease_until = NULL, worker_id = NULL, updated_at = now()
WHERE state = 'in_flight' AND worker_id = $1 AND lease_token <> ALL ($2::uuid[])
RETURNING target
"""


async def release_lost_claims(
    conn: asyncpg.Connection, worker: UUID, live: Collection[UUID]
) -> list[str]:
    rows = await conn.fetch(_RELEASE_LOST_CLAIMS, worker, list(live))
    return [r["target"] for r in rows]


# The stale workers' rows are deleted and their deliveries returned in one statement. The UPDATE
# does not see the CTE's deletes (one snapshot), hence both conditions: a row of a worker deleted
# here, or of one whose row is already gone (retired, declared dead by another reaper, or
# replaced by a restarted process). Rows leased before migration 008 have no worker: their
# lease_until decides, as it did then. Every row read is in flight: the lease index serves it.
_REAP = """
WITH dead AS (
    DELETE FROM pcns_workers
    WHERE heartbeat_at < now() - make_interval(secs => $2)
    RETURNING id
)
UPDATE pcns_deliveries d SET
    state = CASE WHEN d.attempts >= $1 THEN 'parked' ELSE 'pending' END,
    last_error = 'worker lost its lease mid-delivery (stopped or crashed)',
    due_at = now(), lease_token = NULL, lease_until = NULL, worker_id = NULL, updated_at = now()
WHERE d.state = 'in_flight' AND CASE
    WHEN d.worker_id IS NULL THEN d.lease_until < now()
    ELSE d.worker_id IN (SELECT id FROM dead)
         OR NOT EXISTS (SELECT FROM pcns_workers w WHERE w.id = d.worker_id)
END
RETURNING d.target, d.state
"""


async def reap_dead_workers(
    conn: asyncpg.Connection, *, max_attempts: int, worker_timeout: float
) -> list[tuple[str, str]]:
    """Return the deliveries of workers that stopped heartbeating to the queue, or park them
    when that was their last attempt; (target, new state) for each."""
    rows = await conn.fetch(_REAP, max_attempts, worker_timeout)
    return [(r["target"], r["state"]) for r in rows]
