"""The claim protocol at the queue's boundary (``claim_due_deliveries`` on a real PostgreSQL):
newest wins, one in flight per (target, account), supersede after a newer delivered change,
expiry, the lease, and many claimers racing over the same keys."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from pcns.database import Database
from pcns.delivery.completer import Completer
from pcns.metrics import Metrics
from pcns.queue.deliveries import DeliveryQueue
from pcns.queue.records import ClaimedDelivery, Outcome
from pcns.queue.store import claim_due_deliveries, complete_deliveries

LEASE = 60.0
MAX_AGE = 3600.0
TARGETS = ["t1", "t2"]  # the targets the claiming worker is configured for


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(db_url)
    try:
        yield c
    finally:
        await c.close()


async def queue(
    conn: asyncpg.Connection,
    account: str,
    *,
    target: str = "t1",
    order_at: datetime | None = None,
    state: str = "pending",
    due_in: float = 0.0,
    created_ago: float = 0.0,
) -> uuid.UUID:
    """One change with one delivery, inserted as the intake would leave it; returns its id."""
    change_id, delivery_id = uuid.uuid4(), uuid.uuid4()
    await conn.execute(
        "INSERT INTO pcns_changes (id, source, webhook_id, user_name, response)"
        " VALUES ($1, 'dc01', $2, $3, '{}')",
        change_id,
        str(change_id),
        account,
    )
    sealed = state == "pending"
    await conn.execute(
        "INSERT INTO pcns_deliveries (id, change_id, target, account, order_at, state, due_at,"
        " created_at, key_id, nonce, ciphertext, finished_at)"
        " VALUES ($1, $2, $3, $4, coalesce($5, now()), $6,"
        " now() + make_interval(secs => $7), now() - make_interval(secs => $8), 'k1',"
        " CASE WHEN $9 THEN '\\x00'::bytea END, CASE WHEN $9 THEN '\\x01'::bytea END,"
        " CASE WHEN $9 THEN NULL ELSE now() END)",
        delivery_id,
        change_id,
        target,
        account,
        order_at,
        state,
        due_in,
        created_ago,
        sealed,
    )
    return delivery_id


async def claim(
    conn: asyncpg.Connection, limit: int = 16
) -> tuple[list[ClaimedDelivery], dict[str, list[str]]]:
    return await claim_due_deliveries(
        conn, limit=limit, lease_seconds=LEASE, max_age_seconds=MAX_AGE, targets=TARGETS
    )


async def states(conn: asyncpg.Connection) -> dict[uuid.UUID, tuple[str, bool]]:
    """Each delivery's state and whether it still holds a ciphertext."""
    rows = await conn.fetch(
        "SELECT id, state, ciphertext IS NOT NULL AS sealed FROM pcns_deliveries"
    )
    return {r["id"]: (r["state"], r["sealed"]) for r in rows}


async def test_newest_pending_change_is_claimed_and_older_ones_superseded(
    conn: asyncpg.Connection,
) -> None:
    """Of three due changes for one account, only the newest by change time is leased; the
    others end superseded, without their ciphertexts, and are reported as ended."""
    now = datetime.now(UTC)
    old = await queue(conn, "bob", order_at=now - timedelta(minutes=2))
    new = await queue(conn, "bob", order_at=now)
    oldest = await queue(conn, "bob", order_at=now - timedelta(minutes=5))

    claimed, ended = await claim(conn)

    assert [d.id for d in claimed] == [new]
    assert ended == {"t1": ["superseded", "superseded"]}
    assert await states(conn) == {
        old: ("superseded", False),
        new: ("in_flight", True),
        oldest: ("superseded", False),
    }


async def test_claim_takes_a_lease(conn: asyncpg.Connection) -> None:
    """A claimed delivery carries its ciphertext and a lease token; the row records the token,
    a lease ending ``lease`` seconds from now, and one more attempt."""
    delivery = await queue(conn, "alice")

    (claimed,), _ = await claim(conn)

    row = await conn.fetchrow(
        "SELECT lease_token, extract(epoch FROM lease_until - now()) AS left, attempts"
        " FROM pcns_deliveries WHERE id = $1",
        delivery,
    )
    assert row is not None
    assert claimed.sealed.ciphertext == b"\x01"
    assert claimed.attempts == 1
    assert row["lease_token"] == claimed.lease_token
    assert row["attempts"] == 1
    assert LEASE - 5 < row["left"] <= LEASE


async def test_nothing_more_is_claimed_for_an_account_while_one_is_in_flight(
    conn: asyncpg.Connection,
) -> None:
    """A newer change for an account with a delivery in flight waits, untouched, until that
    delivery is recorded; then it is claimed."""
    first = await queue(conn, "carol", order_at=datetime.now(UTC) - timedelta(minutes=1))
    (held,), _ = await claim(conn)
    assert held.id == first
    second = await queue(conn, "carol")

    assert await claim(conn) == ([], {})
    assert (await states(conn))[second] == ("pending", True)

    await complete_deliveries(conn, [Outcome(held, "delivered")])
    (claimed,), _ = await claim(conn)
    assert claimed.id == second


async def test_change_older_than_a_delivered_one_is_superseded(conn: asyncpg.Connection) -> None:
    """A change arriving after a newer one for the same account was delivered is never
    written: it ends superseded at its claim."""
    now = datetime.now(UTC)
    await queue(conn, "dave", order_at=now, state="delivered")
    late = await queue(conn, "dave", order_at=now - timedelta(minutes=1))

    claimed, ended = await claim(conn)

    assert claimed == []
    assert ended == {"t1": ["superseded"]}
    assert (await states(conn))[late] == ("superseded", False)


async def test_delivery_older_than_max_age_expires_at_claim(conn: asyncpg.Connection) -> None:
    """A pending delivery older than max_age is ended as expired, its ciphertext deleted,
    instead of being leased."""
    stale = await queue(conn, "erin", created_ago=MAX_AGE + 60)

    claimed, ended = await claim(conn)

    assert claimed == []
    assert ended == {"t1": ["expired"]}
    assert (await states(conn))[stale] == ("expired", False)


async def test_not_yet_due_delivery_is_left_alone(conn: asyncpg.Connection) -> None:
    """A delivery scheduled for later is neither claimed nor ended by a claim now."""
    later = await queue(conn, "frank", due_in=3600)

    assert await claim(conn) == ([], {})
    assert (await states(conn))[later] == ("pending", True)


async def test_racing_claimers_lease_one_delivery_per_account_and_only_the_newest(
    db_url: str, conn: asyncpg.Connection
) -> None:
    """Eight claimers on their own connections, claiming small batches at once over accounts
    whose changes lie side by side in due order: no claim fails (claims never wait on each
    other, so they cannot deadlock), every account gets exactly one lease, on its newest change,
    and every other change ends superseded."""
    now = datetime.now(UTC)
    newest: dict[str, uuid.UUID] = {}
    for i in range(60):
        for n in range(4):  # an account's changes side by side in due order: batches overlap
            account = f"user{i}"
            newest[account] = await queue(conn, account, order_at=now - timedelta(minutes=10 - n))
    claimers = [await asyncpg.connect(db_url) for _ in range(8)]
    try:

        async def drain(c: asyncpg.Connection) -> list[ClaimedDelivery]:
            got: list[ClaimedDelivery] = []
            while True:
                claimed, _ = await claim(c, limit=4)
                got += claimed
                if not await c.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pcns_deliveries WHERE state = 'pending')"
                ):
                    return got

        results = await asyncio.gather(*(drain(c) for c in claimers))
    finally:
        for c in claimers:
            await c.close()
    leased = [d for got in results for d in got]
    assert Counter(d.account for d in leased) == Counter({a: 1 for a in newest})
    assert {d.account: d.id for d in leased} == newest
    final = Counter(state for state, _ in (await states(conn)).values())
    assert final == {"in_flight": 60, "superseded": 180}


async def test_outcome_error_text_is_stored_printable_and_bounded(
    conn: asyncpg.Connection,
) -> None:
    """A target's raw text with a NUL and control characters (which PostgreSQL would refuse in
    a text column) is stored with those characters replaced, and cut to a bounded length."""
    await queue(conn, "nul")
    await queue(conn, "long")
    claimed, _ = await claim(conn)
    by_account = {d.account: d for d in claimed}
    ages = await complete_deliveries(
        conn,
        [
            Outcome(by_account["nul"], "failed", "refused:\x00 bad\x1b[31m value"),
            Outcome(by_account["long"], "pending", "x" * 5000, 30.0),
        ],
    )
    assert set(ages) == {by_account["nul"].id, by_account["long"].id}
    rows = {
        r["account"]: r["last_error"]
        for r in await conn.fetch("SELECT account, last_error FROM pcns_deliveries")
    }
    assert rows["nul"] == "refused:\ufffd bad\ufffd[31m value"
    assert rows["long"] == "x" * 1000 + "..."


async def test_completer_records_the_rest_when_the_database_refuses_one_outcome(
    conn: asyncpg.Connection, db_url: str
) -> None:
    """One outcome PostgreSQL refuses (here a retry delay past the timestamp range) does not
    hold back its group: the others are recorded, the refused one keeps its lease (the reaper
    returns it to the queue when that runs out), and the completer goes on recording."""
    for account in ("good", "bad", "later"):
        await queue(conn, account)
    claimed, _ = await claim(conn)
    by_account = {d.account: d for d in claimed}
    recorded = asyncio.Event()
    async with (
        asyncpg.create_pool(db_url, min_size=1, max_size=2) as pool,
        Completer(DeliveryQueue(Database(db_url, pool)), Metrics(), recorded.set) as completer,
    ):
        completer.add(Outcome(by_account["good"], "delivered"))
        completer.add(Outcome(by_account["bad"], "pending", "busy", 1e300))
        await asyncio.wait_for(recorded.wait(), timeout=10)
        recorded.clear()
        completer.add(Outcome(by_account["later"], "delivered"))
        await asyncio.wait_for(recorded.wait(), timeout=10)
    rows = {
        r["account"]: (r["state"], r["lease_token"] is not None)
        for r in await conn.fetch("SELECT account, state, lease_token FROM pcns_deliveries")
    }
    assert rows == {
        "good": ("delivered", False),
        "bad": ("in_flight", True),
        "later": ("delivered", False),
    }


async def claim_index_reads(conn: asyncpg.Connection) -> int:
    """Index entries read from the claim index so far, as the statistics system counts them."""
    await conn.execute("SELECT pg_stat_force_next_flush()")  # this session's counts, flushed
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    reads: int = await conn.fetchval(
        "SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = 'pcns_deliveries_claim'"
    )
    return reads


async def test_a_backlog_a_claim_leaves_alone_costs_it_nothing(conn: asyncpg.Connection) -> None:
    """With 3,000 due deliveries of a held target and 3,000 of a target at its quota, a claim
    takes the one due delivery of the third target and reads a handful of index entries, not
    the backlogs."""
    await conn.execute(
        "INSERT INTO pcns_changes (id, source, webhook_id, user_name, response)"
        " SELECT ('00000000-0000-7000-8000-' || lpad(g::text, 12, '0'))::uuid, 'dc01',"
        " 'b' || g, 'user' || g, '{}' FROM generate_series(1, 6000) g"
    )
    await conn.execute(
        "INSERT INTO pcns_deliveries (id, change_id, target, account, order_at, state, due_at,"
        " key_id, nonce, ciphertext)"
        " SELECT gen_random_uuid(), ('00000000-0000-7000-8000-' || lpad(g::text, 12, '0'))::uuid,"
        " CASE WHEN g % 2 = 0 THEN 'held' ELSE 'busy' END, 'user' || g, now(), 'pending',"
        " now() - interval '1 minute', 'k1', '\\x00', '\\x01' FROM generate_series(1, 6000) g"
    )
    await conn.execute("INSERT INTO pcns_target_holds (target, actor) VALUES ('held', 'test')")
    await conn.execute("ANALYZE pcns_deliveries")
    wanted = await queue(conn, "carol", target="t1")
    before = await claim_index_reads(conn)
    claimed, _ = await claim_due_deliveries(
        conn,
        limit=16,
        lease_seconds=LEASE,
        max_age_seconds=MAX_AGE,
        targets=["t1", "held", "busy"],
        quotas={"busy": 0},
    )
    read = await claim_index_reads(conn) - before
    assert [d.id for d in claimed] == [wanted]
    assert 1 <= read <= 16, f"the claim read {read} entries of the claim index"


async def test_a_newer_password_is_written_again_after_an_older_attempt_in_doubt(
    conn: asyncpg.Connection,
) -> None:
    """An attempt that timed out leaves its change in doubt for its window; the newer change
    claimed meanwhile, once delivered, comes back due at the window's end (ciphertext kept, the
    attempt not counted) and is delivered for good by the next claim."""
    await queue(conn, "dave")
    (first,), _ = await claim(conn)
    await complete_deliveries(
        conn, [Outcome(first, "pending", "attempt timed out", 0.0, reason="retried", doubt=0.6)]
    )
    newer = await queue(conn, "dave")
    (second,), ended = await claim(conn)
    assert second.id == newer
    assert ended == {"t1": ["superseded"]}
    written = await complete_deliveries(conn, [Outcome(second, "delivered")])
    assert written[newer].again
    row = await conn.fetchrow(
        "SELECT state, attempts, ciphertext IS NOT NULL AS sealed,"
        " due_at > now() AS later FROM pcns_deliveries WHERE id = $1",
        newer,
    )
    assert dict(row) == {"state": "pending", "attempts": 0, "sealed": True, "later": True}
    assert (await claim(conn))[0] == []  # not before the window ends
    await asyncio.sleep(0.7)
    (again,), _ = await claim(conn)
    assert again.id == newer
    written = await complete_deliveries(conn, [Outcome(again, "delivered")])
    assert not written[newer].again
    assert (await states(conn))[newer] == ("delivered", False)
