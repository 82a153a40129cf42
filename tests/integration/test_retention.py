"""Retention on a real PostgreSQL: finished history older than the cut-off goes; pending work,
each account's newest delivered change and recent rows stay; a late older change is still
superseded after its account's history was pruned."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from pcns import app
from pcns.config import Settings
from pcns.queue import upkeep
from pcns.queue.retention import prune_finished
from pcns.queue.store import claim_due_deliveries
from tests.support import ServiceFiles, eventually

DAY = 86400.0


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(db_url, min_size=1, max_size=2) as p:
        yield p


async def change(
    pool: asyncpg.Pool,
    account: str,
    state: str,
    *,
    days_ago: float,
    target: str = "t1",
    order_at: datetime | None = None,
) -> tuple[uuid.UUID, uuid.UUID]:
    """One change with one delivery in ``state``, received and (if terminal) finished
    ``days_ago``; returns (change id, delivery id)."""
    change_id, delivery_id = uuid.uuid4(), uuid.uuid4()
    when = datetime.now(UTC) - timedelta(days=days_ago)
    open_ = state in ("pending", "in_flight")
    await pool.execute(
        "INSERT INTO pcns_changes (id, source, webhook_id, user_name, response, received_at)"
        " VALUES ($1, 'dc01', $2, $3, '{}', $4)",
        change_id,
        str(change_id),
        account,
        when,
    )
    await pool.execute(
        "INSERT INTO pcns_deliveries (id, change_id, target, account, order_at, state, due_at,"
        " created_at, key_id, nonce, ciphertext, finished_at, lease_token, lease_until)"
        " VALUES ($1, $2, $3, $4, coalesce($5::timestamptz, $6::timestamptz), $7::text,"
        " $6, $6, 'k1',"
        " CASE WHEN $8 THEN '\\x00'::bytea END, CASE WHEN $8 THEN '\\x01'::bytea END,"
        " CASE WHEN $8 THEN NULL ELSE $6 END,"
        " CASE WHEN $7 = 'in_flight' THEN gen_random_uuid() END,"
        " CASE WHEN $7 = 'in_flight' THEN now() + interval '1 minute' END)",
        delivery_id,
        change_id,
        target,
        account,
        order_at,
        when,
        state,
        open_,
    )
    return change_id, delivery_id


async def remaining(pool: asyncpg.Pool) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
    changes = {r["id"] for r in await pool.fetch("SELECT id FROM pcns_changes")}
    deliveries = {r["id"] for r in await pool.fetch("SELECT id FROM pcns_deliveries")}
    return changes, deliveries


async def test_prune_keeps_open_work_newest_outcomes_and_recent_rows(pool: asyncpg.Pool) -> None:
    """Old superseded, expired, cancelled and older delivered or failed rows go with their changes;
    pending and in-flight rows, each account's newest delivered or failed row and anything
    younger than the cut-off stay."""
    old_delivered = await change(pool, "alice", "delivered", days_ago=200)
    old_failed = await change(pool, "alice", "failed", days_ago=150)
    newest_alice = await change(pool, "alice", "delivered", days_ago=120)
    superseded = await change(pool, "bob", "superseded", days_ago=100)
    expired = await change(pool, "bob", "expired", days_ago=100)
    cancelled = await change(pool, "carol", "cancelled", days_ago=100)
    only_bob = await change(pool, "bob", "failed", days_ago=100)
    pending = await change(pool, "dave", "pending", days_ago=100)
    in_flight = await change(pool, "erin", "in_flight", days_ago=100)
    recent_superseded = await change(pool, "frank", "superseded", days_ago=10)
    recent_delivered = await change(pool, "frank", "delivered", days_ago=5)
    other_target = await change(pool, "alice", "delivered", days_ago=180, target="t2")

    pruned = await prune_finished(pool, older_than=90 * DAY, batch=2)

    gone = [old_delivered, old_failed, superseded, expired, cancelled]
    kept = [newest_alice, only_bob, pending, in_flight, recent_superseded, recent_delivered]
    kept.append(other_target)  # the newest (and only) one of its own (target, account)
    changes, deliveries = await remaining(pool)
    assert (pruned.deliveries, pruned.changes, pruned.skipped) == (len(gone), len(gone), False)
    assert deliveries == {d for _, d in kept}
    assert changes == {c for c, _ in kept}
    assert not deliveries & {d for _, d in gone}


async def test_late_older_change_is_still_superseded_after_pruning(pool: asyncpg.Pool) -> None:
    """The account's newest delivered row survives pruning, so a change that arrives late with an
    older timestamp is superseded at its claim and its password is never written."""
    now = datetime.now(UTC)
    await change(pool, "alice", "delivered", days_ago=200, order_at=now - timedelta(days=200))
    await change(pool, "alice", "delivered", days_ago=100, order_at=now - timedelta(days=100))
    await prune_finished(pool, older_than=90 * DAY)
    assert await pool.fetchval("SELECT count(*) FROM pcns_deliveries") == 1

    _, late = await change(pool, "alice", "pending", days_ago=0, order_at=now - timedelta(days=150))
    async with pool.acquire() as conn:
        claimed, ended = await claim_due_deliveries(
            conn, limit=8, lease_seconds=60, max_age_seconds=3 * DAY, targets=["t1"]
        )
    assert claimed == []
    assert ended == {"t1": ["superseded"]}
    assert await pool.fetchval("SELECT state FROM pcns_deliveries WHERE id = $1", late) == (
        "superseded"
    )


async def test_prune_refuses_a_cut_off_shorter_than_an_hour(pool: asyncpg.Pool) -> None:
    """A retention under an hour is refused before anything is deleted."""
    await change(pool, "alice", "superseded", days_ago=1)
    with pytest.raises(ValueError, match="at least 3600 seconds"):
        await prune_finished(pool, older_than=60)
    assert await pool.fetchval("SELECT count(*) FROM pcns_deliveries") == 1


async def test_service_prunes_on_its_own_when_retention_is_set(
    tmp_path: Path, db_url: str, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With database.retention set, a worker deletes old finished history by itself and counts
    it in pcns_history_pruned_total; pending work is left alone."""
    monkeypatch.setattr(upkeep, "PRUNE_FIRST_DELAY", 0.1)
    old = await change(pool, "alice", "superseded", days_ago=40)
    waiting = await change(pool, "bob", "pending", days_ago=40, target="nowhere")
    files = ServiceFiles(tmp_path / "svc", db_url)
    doc = files.document()
    doc["database"]["retention"] = "30d"
    settings = Settings(**json.loads(json.dumps(doc, default=str)))
    async with app.running_service(settings, role="worker") as service:

        async def pruned() -> float | None:
            registry = service.metrics.registry
            return registry.get_sample_value("pcns_history_pruned_total", {"table": "deliveries"})

        assert await eventually(pruned) == 1
    changes, deliveries = await remaining(pool)
    assert old[1] not in deliveries
    assert old[0] not in changes
    assert waiting[1] in deliveries
