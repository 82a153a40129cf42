"""Every statement the service runs against its queue, and the claim protocol.

Claiming: due pending rows are walked in due order (partial index ``pcns_deliveries_claim``) and
each distinct (target, account) is serialised with a transaction-scoped advisory lock, taken with
a try: a key another claimer holds is skipped, as ``SKIP LOCKED`` skips a row. Only after holding
the key locks is each key's state read, on a fresh snapshot, and rows are locked only then, by the
UPDATE that applies the decision to keys this claim holds; so at most one delivery per (target,
account) is ever in flight, an older password never follows a newer, and two claims never wait on
each other. Both steps run in the PL/pgSQL function ``pcns_claim_deliveries`` (migration 004): one
statement, one round trip, one implicit READ COMMITTED transaction whose commit releases every
lock it took.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from pcns.queue.records import (
    ChangeId,
    ChangeStatus,
    ClaimedDelivery,
    Committed,
    DeliveryId,
    DeliveryStatus,
    NewChange,
    Outcome,
    Recorded,
    TargetQueueStats,
)
from vault import Sealed

WAKEUP_CHANNEL = "pcns_wakeup"

_INSERT_CHANGES = f"""
WITH c AS (
    INSERT INTO pcns_changes
        (id, source, webhook_id, user_name, domain, upn, sid, changed_at, response)
    SELECT x.id, x.source, x.webhook_id, x.user_name, x.domain, x.upn, x.sid, x.changed_at,
           x.response
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::timestamptz[], $9::text[])
         AS x(id, source, webhook_id, user_name, domain, upn, sid, changed_at, response)
    ON CONFLICT (source, webhook_id) DO NOTHING
    RETURNING id, changed_at
), d AS (
    INSERT INTO pcns_deliveries
        (id, change_id, target, account, order_at, state, last_error,
         key_id, nonce, ciphertext, finished_at)
    SELECT y.id, y.change_id, y.target, y.account, least(coalesce(c.changed_at, now()), now()),
           y.state, y.last_error, y.key_id, y.nonce, y.ciphertext,
           CASE WHEN y.state = 'pending' THEN NULL ELSE now() END
    FROM unnest($10::uuid[], $11::uuid[], $12::text[], $13::text[], $14::text[], $15::text[],
                $16::text[], $17::bytea[], $18::bytea[])
         AS y(id, change_id, target, account, state, last_error, key_id, nonce, ciphertext)
    JOIN c ON c.id = y.change_id
    RETURNING state
)
SELECT (SELECT coalesce(array_agg(id), '{{}}') FROM c) AS inserted,
       (SELECT pg_notify('{WAKEUP_CHANNEL}', '')
        WHERE EXISTS (SELECT 1 FROM d WHERE state = 'pending')) IS NULL AS notified
"""

_STORED_RESPONSES = """
SELECT s.source, s.webhook_id, c.id, c.response
FROM unnest($1::text[], $2::text[]) AS s(source, webhook_id)
JOIN pcns_changes c ON c.source = s.source AND c.webhook_id = s.webhook_id
"""


def _sealed_columns(sealed: Sealed | None) -> tuple[str | None, bytes | None, bytes | None]:
    if sealed is None:
        return None, None, None
    return sealed.key_id, sealed.nonce, sealed.ciphertext


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to column arrays, the shape ``unnest($1::type[], ...)`` takes."""
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


async def insert_changes(conn: asyncpg.Connection, changes: Sequence[NewChange]) -> list[Committed]:
    """Commit a group of changes in one statement; returns what each one became, in order.

    A (source, webhook-id) seen before queues nothing and gets the body stored the first time.
    """
    change_rows = [
        (c.id, c.source, c.webhook_id, c.user, c.domain, c.upn, c.sid, c.changed_at, c.response)
        for c in changes
    ]
    delivery_rows = [
        (d.id, c.id, d.target, d.account, d.state, d.failed_reason, *_sealed_columns(d.sealed))
        for c in changes
        for d in c.deliveries
    ]
    args = _columns(change_rows, 9) + _columns(delivery_rows, 9)
    row = await conn.fetchrow(_INSERT_CHANGES, *args)
    assert row is not None
    inserted = set(row["inserted"])
    replay = [ch for ch in changes if ch.id not in inserted]
    stored: dict[tuple[str, str], Committed] = {}
    if replay:
        rows = await conn.fetch(
            _STORED_RESPONSES, [c.source for c in replay], [c.webhook_id for c in replay]
        )
        stored = {
            (r["source"], r["webhook_id"]): Committed(ChangeId(r["id"]), r["response"], new=False)
            for r in rows
        }
    return [
        Committed(ch.id, ch.response, new=True)
        if ch.id in inserted
        else stored[(ch.source, ch.webhook_id)]
        for ch in changes
    ]


# The claim protocol runs inside ``pcns_claim_deliveries`` (migration 004), called as one
# statement in its own implicit transaction: one round trip per claim. It first takes the key
# locks while walking due rows; its next statement, on the fresh snapshot a VOLATILE function
# takes per statement, sees every claim committed before those locks were held, decides each key
# and applies the decision.
_CLAIM = "SELECT * FROM pcns_claim_deliveries($1, $2, $3, $4, $5, $6, $7, $8)"


async def claim_due_deliveries(
    conn: asyncpg.Connection,
    *,
    limit: int,
    lease_seconds: float,
    max_age_seconds: float,
    targets: Sequence[str],
    worker: UUID | None = None,
    quotas: Mapping[str, int] | None = None,
    token: UUID | None = None,
) -> tuple[list[ClaimedDelivery], dict[str, list[str]]]:
    """Lease up to ``limit`` due deliveries of ``targets`` to ``worker`` (its heartbeat keeps
    them) under the lease ``token`` (a fresh one if None).

    ``quotas``: at most that many rows of each target named (0: none of it, not walked).
    Returns the claimed deliveries and, per target, the states of rows this claim ended
    (``superseded`` / ``expired``) for metrics. Call it outside an explicit transaction: the
    locks it takes are held, and its claim hidden from other workers, until its transaction
    commits.
    """
    ended: dict[str, list[str]] = defaultdict(list)
    token = token or uuid4()
    quotas = quotas or {}
    walked = [t for t in targets if quotas.get(t, 1) > 0]
    capped = [(t, n) for t, n in quotas.items() if n > 0]
    applied = await conn.fetch(
        _CLAIM,
        limit,
        token,
        lease_seconds,
        max_age_seconds,
        worker,
        walked,
        [t for t, _ in capped],
        [n for _, n in capped],
    )
    claimed = []
    for r in applied:
        if r["state"] != "in_flight":
            ended[r["target"]].append(r["state"])
            continue
        claimed.append(
            ClaimedDelivery(
                id=DeliveryId(r["id"]),
                change_id=ChangeId(r["change_id"]),
                target=r["target"],
                account=r["account"],
                attempts=r["attempts"],
                age_seconds=r["age"],
                lease_token=token,
                sealed=Sealed(key_id=r["key_id"], nonce=r["nonce"], ciphertext=r["ciphertext"]),
            )
        )
    return claimed, ended


# A delivered row whose confirm_after is still ahead (an older change's timed-out request may
# land until then, migration 008) is not done: it goes back to pending, due at confirm_after,
# to be written once more; ``again`` below. The attempt is not counted.
_COMPLETE = """
UPDATE pcns_deliveries d SET
    state = CASE WHEN x.state = 'delivered' AND d.confirm_after > now() THEN 'pending'
            ELSE x.state END,
    attempts = d.attempts - CASE WHEN x.deferred OR (x.state = 'delivered'
                                 AND d.confirm_after > now()) THEN 1 ELSE 0 END,
    last_error = CASE WHEN x.state = 'delivered' AND d.confirm_after > now()
                 THEN 'delivered; written again once an older change''s timed-out attempt can'
                      || ' no longer land'
                 ELSE coalesce(x.error, CASE WHEN x.deferred THEN d.last_error END) END,
    due_at = CASE WHEN x.state = 'delivered' AND d.confirm_after > now() THEN d.confirm_after
             WHEN x.state = 'pending' THEN now() + make_interval(secs => x.delay)
             ELSE d.due_at END,
    doubt_until = CASE WHEN x.doubt > 0
                  THEN greatest(d.doubt_until, now() + make_interval(secs => x.doubt))
                  ELSE d.doubt_until END,
    confirm_after = CASE WHEN x.state = 'delivered' THEN NULL ELSE d.confirm_after END,
    lease_token = NULL,
    lease_until = NULL,
    worker_id = NULL,
    -- Kept while the delivery is open (pending again, or parked for an operator's retry).
    nonce = CASE WHEN x.state IN ('pending', 'parked')
                 OR (x.state = 'delivered' AND d.confirm_after > now()) THEN d.nonce END,
    ciphertext = CASE WHEN x.state IN ('pending', 'parked')
                      OR (x.state = 'delivered' AND d.confirm_after > now()) THEN d.ciphertext END,
    finished_at = CASE WHEN x.state IN ('pending', 'parked')
                       OR (x.state = 'delivered' AND d.confirm_after > now()) THEN NULL
                  ELSE now() END,
    updated_at = now()
FROM (
    SELECT id, token, CASE WHEN state = 'deferred' THEN 'pending' ELSE state END AS state,
           state = 'deferred' AS deferred, error, delay, doubt
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::float8[], $6::float8[])
         AS u(id, token, state, error, delay, doubt)
) AS x
-- A lease token is set only while in flight (constraint lease_only_while_in_flight): matching it
-- by primary key finds exactly the rows this worker still leases, with no scan of in-flight rows.
WHERE d.id = x.id AND d.lease_token = x.token
RETURNING d.id, extract(epoch FROM now() - d.created_at)::float8 AS age, d.state = 'pending'
    AND x.state = 'delivered' AS again
"""


MAX_ERROR_CHARS = 1000


def storable_error(text: str | None) -> str | None:
    """An adapter's error text as ``last_error`` can hold it: printable, bounded. A third-party
    adapter may pass a target's raw text on, and a NUL would make PostgreSQL refuse the row."""
    if text is None:
        return None
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "\ufffd" for c in text)
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


async def complete_deliveries(
    conn: asyncpg.Connection, outcomes: Sequence[Outcome]
) -> dict[DeliveryId, Recorded]:
    """Record attempt outcomes; a terminal state deletes the ciphertext in the same statement.

    Returns, for each row still leased by us, its accept-to-now age in seconds and whether a
    delivered row must be written again (see ``_COMPLETE``); an outcome whose lease was lost
    (the reaper gave the row to another worker) is dropped.
    """
    rows = await conn.fetch(
        _COMPLETE,
        [o.delivery.id for o in outcomes],
        [o.delivery.lease_token for o in outcomes],
        [o.state for o in outcomes],
        [storable_error(o.error) for o in outcomes],
        [o.delay for o in outcomes],
        [o.doubt for o in outcomes],
    )
    return {DeliveryId(r["id"]): Recorded(r["age"], r["again"]) for r in rows}


_POSTPONE_TARGET = """
UPDATE pcns_deliveries SET due_at = now() + make_interval(secs => $2), updated_at = now()
WHERE target = $1 AND state = 'pending' AND due_at < now() + make_interval(secs => $2)
"""


async def postpone_target(conn: asyncpg.Connection, target: str, seconds: float) -> int:
    """Reschedule a target's pending deliveries past ``seconds`` (breaker open); no attempt used."""
    done: str = await conn.execute(_POSTPONE_TARGET, target, seconds)
    return int(done.split()[-1])


_RELEASE = """
UPDATE pcns_deliveries SET
    state = 'pending', attempts = greatest(attempts - 1, 0), due_at = now(),
    lease_token = NULL, lease_until = NULL, worker_id = NULL, updated_at = now()
WHERE id = ANY($1::uuid[]) AND lease_token = $2::uuid  -- still ours, so still in flight
"""


async def release_deliveries(
    conn: asyncpg.Connection, deliveries: Sequence[ClaimedDelivery]
) -> None:
    """Give unfinished deliveries back (shutdown): due now, the interrupted attempt not counted."""
    by_token: dict[UUID, list[DeliveryId]] = defaultdict(list)
    for d in deliveries:
        by_token[d.lease_token].append(d.id)
    for token, ids in by_token.items():
        await conn.execute(_RELEASE, ids, token)


_EXPIRE_PARKED = """
UPDATE pcns_deliveries SET
    state = 'expired', nonce = NULL, ciphertext = NULL, finished_at = now(), updated_at = now(),
    last_error = left(coalesce(last_error, '') || CASE state
        WHEN 'parked' THEN ' (parked until delivery.max_age)'
        ELSE ' (no worker configured for its target claimed it within delivery.max_age)' END,
        1100)
WHERE state IN ('parked', 'pending') AND created_at < now() - make_interval(secs => $1)
RETURNING target
"""


async def expire_parked(conn: asyncpg.Connection, *, max_age_seconds: float) -> list[str]:
    """End parked deliveries older than ``max_age_seconds`` as ``expired``, deleting their
    ciphertexts in the same statement; and pending ones too, which a claim would have expired
    had any worker been configured for their target. Returns their targets."""
    rows = await conn.fetch(_EXPIRE_PARKED, max_age_seconds)
    return [r["target"] for r in rows]


_CANCEL = """
UPDATE pcns_deliveries SET
    state = 'cancelled', nonce = NULL, ciphertext = NULL, finished_at = now(), updated_at = now(),
    last_error = 'cancelled by an operator'
WHERE change_id = $1 AND state IN ('pending', 'parked')
RETURNING target
"""


async def cancel_change(conn: asyncpg.Connection, change_id: UUID) -> list[str]:
    """End the change's pending deliveries as ``cancelled``; returns their targets."""
    rows = await conn.fetch(_CANCEL, change_id)
    return [r["target"] for r in rows]


async def change_status(conn: asyncpg.Connection, change_id: UUID) -> ChangeStatus | None:
    change = await conn.fetchrow(
        "SELECT id, source, user_name, domain, received_at FROM pcns_changes WHERE id = $1",
        change_id,
    )
    if change is None:
        return None
    rows = await conn.fetch(
        "SELECT target, account, state, attempts, last_error, created_at, updated_at,"
        " CASE WHEN state = 'pending' THEN due_at END AS next_attempt_at, finished_at"
        " FROM pcns_deliveries WHERE change_id = $1 ORDER BY target",
        change_id,
    )
    return ChangeStatus(
        id=ChangeId(change["id"]),
        source=change["source"],
        user=change["user_name"],
        domain=change["domain"],
        received_at=change["received_at"],
        deliveries=tuple(DeliveryStatus(**dict(r)) for r in rows),
    )


_QUEUE_STATS = """
SELECT target, 'pending' AS state, count(*) AS n,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest
FROM pcns_deliveries WHERE state = 'pending' GROUP BY target
UNION ALL
SELECT target, 'due', count(*), 0::float8
FROM pcns_deliveries WHERE state = 'pending' AND due_at <= now() GROUP BY target
UNION ALL
SELECT target, 'in_flight', count(*), 0::float8
FROM pcns_deliveries WHERE state = 'in_flight' GROUP BY target
UNION ALL
SELECT target, 'parked', count(*), 0::float8
FROM pcns_deliveries WHERE state = 'parked' GROUP BY target
"""


async def queue_stats(conn: asyncpg.Connection) -> list[TargetQueueStats]:
    """Open deliveries per target, and the targets' holds; each branch reads only its partial
    index's rows, so the cost follows the queue's depth, not the table's history."""
    counts: dict[str, dict[str, tuple[int, float]]] = defaultdict(dict)
    for r in await conn.fetch(_QUEUE_STATS):
        counts[r["target"]][r["state"]] = (r["n"], r["oldest"])
    holds = {r["target"]: r["until"] for r in await conn.fetch(_HOLDS)}
    out = []
    for t in sorted(set(counts) | set(holds)):
        c = counts.get(t, {})
        held = t in holds
        out.append(
            TargetQueueStats(
                t,
                pending=c.get("pending", (0, 0.0))[0],
                in_flight=c.get("in_flight", (0, 0.0))[0],
                oldest_pending_seconds=c.get("pending", (0, 0.0))[1],
                parked=c.get("parked", (0, 0.0))[0],
                due=0 if held else c.get("due", (0, 0.0))[0],
                held=held,
                hold_until=holds.get(t),
            )
        )
    return out


_HOLDS = "SELECT target, until FROM pcns_target_holds"
