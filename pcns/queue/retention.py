"""Retention: delete the history of finished deliveries once it is old enough.

Only terminal rows go, and never one the queue still needs:

- a pending or in-flight delivery is never touched (nothing acknowledged is lost);
- per (target, account) the newest ``delivered`` or ``failed`` row stays, whatever its age: the
  claim decision compares a pending change with it, so an older password that arrives late is
  still superseded and never written;
- a change row goes only when none of its deliveries is left and it is older than the cut-off,
  which is always far longer than the signature's timestamp tolerance: a resend old enough to
  find its (source, webhook-id) forgotten is refused as stale before it is looked up.

The walk goes through each table in primary-key order, a window of ``batch`` rows per
statement, so a run reads every row once and holds no lock for long. One run at a time per
database (a transaction-scoped advisory lock per statement); a second one finds the lock taken
and stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from pcns.config import MIN_RETENTION_SECONDS

PRUNE_LOCK = 0x70636E73_7072756E  # "pcnsprun"
_FIRST_ID = UUID(int=0)


def _walk_step(table: str, doomed: str) -> str:
    """One step of the walk over ``table``: take the run's lock ($4), read the next window of
    $2 primary keys after $1, delete the rows of it that ``doomed`` (a SELECT of ids from
    ``win`` and ``lock``) names; answer whether the lock was held, the window's last key (None
    at the end) and how many rows went."""
    return f"""
WITH lock AS (
    SELECT pg_try_advisory_xact_lock($4) AS held
), win AS (
    SELECT id FROM {table} WHERE id > $1 ORDER BY id LIMIT $2
), doomed AS (
    {doomed}
), gone AS (
    DELETE FROM {table} t USING doomed WHERE t.id = doomed.id RETURNING t.id
)
SELECT (SELECT held FROM lock) AS held, (SELECT id FROM win ORDER BY id DESC LIMIT 1) AS last,
       (SELECT count(*) FROM gone) AS deleted
"""


_PRUNE_DELIVERIES = _walk_step(
    "pcns_deliveries",
    """SELECT d.id FROM pcns_deliveries d JOIN win ON win.id = d.id, lock
    WHERE lock.held
      AND d.state IN ('delivered', 'failed', 'superseded', 'expired', 'cancelled')
      AND d.finished_at < now() - make_interval(secs => $3)
      AND (d.state NOT IN ('delivered', 'failed') OR EXISTS (
          SELECT FROM pcns_deliveries n
          WHERE n.target = d.target AND n.account = d.account
            AND n.state IN ('delivered', 'failed')
            AND (n.order_at, n.seq) > (d.order_at, d.seq)))""",
)

_PRUNE_CHANGES = _walk_step(
    "pcns_changes",
    """SELECT c.id FROM pcns_changes c JOIN win ON win.id = c.id, lock
    WHERE lock.held
      AND c.received_at < now() - make_interval(secs => $3)
      AND NOT EXISTS (SELECT FROM pcns_deliveries d WHERE d.change_id = c.id)""",
)


@dataclass(frozen=True, slots=True)
class Pruned:
    deliveries: int
    changes: int
    skipped: bool = False  # another run held the lock


async def prune_finished(pool: asyncpg.Pool, *, older_than: float, batch: int = 5000) -> Pruned:
    """Delete finished history older than ``older_than`` seconds (see the module's rules)."""
    if older_than < MIN_RETENTION_SECONDS:
        raise ValueError(f"retention must be at least {MIN_RETENTION_SECONDS:.0f} seconds")
    counts = [0, 0]
    for i, statement in enumerate((_PRUNE_DELIVERIES, _PRUNE_CHANGES)):
        last: UUID | None = _FIRST_ID
        while last is not None:
            async with pool.acquire() as conn:
                row = await conn.fetchrow(statement, last, batch, older_than, PRUNE_LOCK)
            assert row is not None
            if not row["held"]:
                return Pruned(deliveries=counts[0], changes=counts[1], skipped=True)
            counts[i] += row["deleted"]
            last = row["last"]
    return Pruned(deliveries=counts[0], changes=counts[1])
