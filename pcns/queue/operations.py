"""Operators' statements: find deliveries by a filter, retry or cancel what a filter selects,
hold and release targets, and the audit trail of each of those actions.

Every list is ordered newest first by delivery id (a UUIDv7: its order is the order of
acceptance) and paged by keyset (``before``: the last id of the previous page), so a page costs
the same on the millionth row as on the first. A time range becomes a range of ids, served by
the primary key.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from pcns.queue.records import DELIVERY_STATES, DeliveryState, DeliveryView, TargetHold
from pcns.queue.store import WAKEUP_CHANNEL

MAX_PAGE = 500


def id_floor(at: datetime) -> uuid.UUID:
    """The smallest UUIDv7 of the millisecond ``at``: ``id >= id_floor(t)`` means created at or
    after ``t`` (to the millisecond)."""
    ms = int(at.timestamp() * 1000)
    return uuid.UUID(int=(ms & ((1 << 48) - 1)) << 80)


def glob_to_like(pattern: str) -> str:
    """A shell-style glob (``*``, ``?``) as a LIKE pattern; LIKE's own wildcards are escaped."""
    out = []
    for ch in pattern:
        if ch in "%_\\":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Which deliveries an operator means. Every field narrows; an empty filter means all."""

    states: tuple[DeliveryState, ...] = ()
    target: str | None = None
    account: str | None = None  # exact, or a glob when it holds * or ?
    source: str | None = None
    change_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None

    def is_empty(self) -> bool:
        return self == DeliveryFilter()

    def as_json(self) -> dict[str, Any]:
        """For the audit trail: what was asked, in plain values, under the API's field names."""
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            k = "state" if k == "states" else k
            if v in (None, ()):
                continue
            if isinstance(v, datetime):
                v = v.isoformat()
            elif isinstance(v, uuid.UUID):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[k] = v
        return out


def _where(f: DeliveryFilter, args: list[Any]) -> list[str]:
    """SQL conditions on ``d`` (pcns_deliveries) and ``c`` (pcns_changes) for ``f``."""

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where: list[str] = []
    if f.states:
        where.append(_state_in(f.states))
    if f.target is not None:
        where.append(f"d.target = {arg(f.target)}")
    if f.account is not None:
        if _is_glob(f.account):
            where.append(f"d.account LIKE {arg(glob_to_like(f.account))}")
        elif _by_account_alone(f):
            # Every target's rows of this account, through the (target, account, ...) index:
            # one probe per target, the targets found by a loose scan of the same index.
            account = arg(f.account)
            pairs = f"SELECT t.target, {account}::text FROM _targets t"
            where.append(f"(d.target, d.account) IN ({pairs})")
        else:
            where.append(f"d.account = {arg(f.account)}")
    if f.source is not None:
        where.append(f"c.source = {arg(f.source)}")
    if f.change_id is not None:
        where.append(f"d.change_id = {arg(f.change_id)}")
    if f.since is not None:
        where.append(f"d.id >= {arg(id_floor(f.since))}")
    if f.until is not None:
        where.append(f"d.id < {arg(id_floor(f.until))}")
    return where


def _state_in(states: Sequence[DeliveryState]) -> str:
    """``d.state`` is one of ``states``, written out as literals (a closed set of names), one
    equality each: a partial index (``WHERE state = 'parked'``) serves only a condition the
    planner can prove from the statement itself, never a parameter of a generic plan, and an
    ``OR`` of equalities lets each state's partial index serve its own arm (a BitmapOr)."""
    if not set(states) <= set(DELIVERY_STATES):
        raise ValueError("not a delivery state")
    return "(" + " OR ".join(f"d.state = '{s}'" for s in states) + ")"


# The distinct targets of the queue, by skipping through the account index (a few probes).
_TARGETS_CTE = """
WITH RECURSIVE _targets(target) AS (
    (SELECT target FROM pcns_deliveries ORDER BY target LIMIT 1)
    UNION ALL
    SELECT (SELECT d.target FROM pcns_deliveries d WHERE d.target > t.target
            ORDER BY d.target LIMIT 1)
    FROM _targets t WHERE t.target IS NOT NULL
)
"""

_VIEW_COLUMNS = """
d.id, d.change_id, d.target, d.account, d.state, d.attempts, d.last_error, d.created_at,
d.updated_at, CASE WHEN d.state = 'pending' THEN d.due_at END AS next_attempt_at,
d.finished_at, c.source, c.user_name, (d.target IN (SELECT target FROM pcns_target_holds))
    AS held
"""


def _select(
    f: DeliveryFilter,
    args: list[Any],
    columns: str,
    extra: Sequence[str] = (),
    *,
    changes: bool = True,
) -> str:
    """A SELECT of ``columns`` over the deliveries ``f`` selects (and the ``extra`` conditions,
    whose parameters are already in ``args``); ``changes=False``: ``columns`` need nothing of
    ``c`` (pcns_changes), which is then joined only when ``f`` filters on the source."""
    where = [*extra, *_where(f, args)]
    cte = _TARGETS_CTE if _by_account_alone(f) else ""
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    # Every delivery has its change (a NOT NULL foreign key): the join never drops a row.
    join = " JOIN pcns_changes c ON c.id = d.change_id" if changes or f.source else ""
    return f"{cte}SELECT {columns} FROM pcns_deliveries d{join} {clause}"


def _is_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


def _by_account_alone(f: DeliveryFilter) -> bool:
    """An exact account without a target: probed once per target (see ``_TARGETS_CTE``)."""
    return f.account is not None and f.target is None and not _is_glob(f.account)


def list_sql(
    f: DeliveryFilter, limit: int = 50, before: uuid.UUID | None = None
) -> tuple[str, list[Any]]:
    """The statement of :func:`list_deliveries` and its arguments (for plan checks too)."""
    args: list[Any] = []
    extra = []
    if before is not None:
        args.append(before)
        extra.append("d.id < $1")
    sql = _select(f, args, _VIEW_COLUMNS, extra)
    # The page size as a literal too: a generic plan guesses a LIMIT parameter at a tenth of
    # the rows, and would then page an account's few rows by walking the primary key.
    sql += f" ORDER BY d.id DESC LIMIT {min(max(int(limit), 1), MAX_PAGE)}"
    return sql, args


async def list_deliveries(
    conn: asyncpg.Connection,
    f: DeliveryFilter,
    *,
    limit: int = 50,
    before: uuid.UUID | None = None,
) -> list[DeliveryView]:
    """One page of deliveries matching ``f``, newest first, older than ``before`` if given."""
    sql, args = list_sql(f, limit, before)
    return [DeliveryView(**dict(r)) for r in await conn.fetch(sql, *args)]


async def get_delivery(conn: asyncpg.Connection, delivery_id: uuid.UUID) -> DeliveryView | None:
    row = await conn.fetchrow(
        f"SELECT {_VIEW_COLUMNS} FROM pcns_deliveries d JOIN pcns_changes c ON c.id = d.change_id"
        " WHERE d.id = $1",
        delivery_id,
    )
    return DeliveryView(**dict(row)) if row is not None else None


def _bulk_sql(
    f: DeliveryFilter, set_clause: str, states: Sequence[DeliveryState]
) -> tuple[str, list[Any]] | None:
    """The UPDATE applying ``set_clause`` to the deliveries ``f`` selects among ``states``, and
    its arguments; None when ``f`` asks only for other states."""
    narrowed = replace(f, states=tuple(s for s in (f.states or states) if s in states))
    if not narrowed.states:
        return None
    args: list[Any] = []
    picked = _select(narrowed, args, "d.id", changes=False)
    sql = (
        f"WITH picked AS ({picked}) UPDATE pcns_deliveries d SET {set_clause}, updated_at = now()"
        f" FROM picked WHERE d.id = picked.id AND {_state_in(narrowed.states)} RETURNING d.target"
    )
    return sql, args


def retry_sql(f: DeliveryFilter) -> tuple[str, list[Any]] | None:
    """The statement of :func:`retry_deliveries` and its arguments (for plan checks too)."""
    return _bulk_sql(f, "state = 'pending', attempts = 0, due_at = now()", ("parked", "pending"))


def cancel_sql(f: DeliveryFilter) -> tuple[str, list[Any]] | None:
    """The statement of :func:`cancel_deliveries` and its arguments (for plan checks too)."""
    return _bulk_sql(
        f,
        "state = 'cancelled', nonce = NULL, ciphertext = NULL, finished_at = now(),"
        " last_error = 'cancelled by an operator'",
        ("pending", "parked"),
    )


async def _bulk(conn: asyncpg.Connection, statement: tuple[str, list[Any]] | None) -> list[str]:
    """Run a bulk UPDATE of :func:`_bulk_sql`; the targets of the rows it changed."""
    if statement is None:
        return []
    rows = await conn.fetch(statement[0], *statement[1])
    return [r["target"] for r in rows]


async def retry_deliveries(conn: asyncpg.Connection, f: DeliveryFilter) -> list[str]:
    """Parked deliveries (and pending ones waiting out a backoff) become due now, with a fresh
    count of attempts; their ciphertext was kept, so nothing is re-sent by the hook. Returns the
    targets of the rows retried."""
    targets = await _bulk(conn, retry_sql(f))
    if targets:
        await conn.execute(f"NOTIFY {WAKEUP_CHANNEL}")
    return targets


async def cancel_deliveries(conn: asyncpg.Connection, f: DeliveryFilter) -> list[str]:
    """Pending and parked deliveries end ``cancelled``; their ciphertexts are deleted."""
    return await _bulk(conn, cancel_sql(f))


async def hold_target(
    conn: asyncpg.Connection, target: str, *, actor: str, until: datetime | None, reason: str | None
) -> None:
    await conn.execute(
        "INSERT INTO pcns_target_holds (target, actor, until, reason) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (target) DO UPDATE SET actor = $2, until = $3, reason = $4, held_at = now()",
        target,
        actor,
        until,
        reason,
    )


async def release_target(conn: asyncpg.Connection, target: str) -> bool:
    """End a hold; True if there was one. Its deliveries are claimed again at once."""
    done: str = await conn.execute("DELETE FROM pcns_target_holds WHERE target = $1", target)
    if done == "DELETE 1":
        await conn.execute(f"NOTIFY {WAKEUP_CHANNEL}")
        return True
    return False


async def target_holds(conn: asyncpg.Connection) -> list[TargetHold]:
    rows = await conn.fetch(
        "SELECT target, held_at, until, actor, reason FROM pcns_target_holds ORDER BY target"
    )
    return [TargetHold(**dict(r)) for r in rows]


async def record_action(
    conn: asyncpg.Connection, actor: str, action: str, filter_: dict[str, Any], count: int
) -> None:
    await conn.execute(
        "INSERT INTO pcns_operator_audit (actor, action, filter, count) VALUES ($1, $2, $3, $4)",
        actor,
        action,
        json.dumps(filter_),
        count,
    )


@dataclass(frozen=True, slots=True)
class OperatorAction:
    at: datetime
    actor: str
    action: str
    filter: dict[str, Any]
    count: int


async def operator_actions(conn: asyncpg.Connection, limit: int = 50) -> list[OperatorAction]:
    rows = await conn.fetch(
        "SELECT at, actor, action, filter, count FROM pcns_operator_audit ORDER BY id DESC"
        " LIMIT $1",
        limit,
    )
    return [
        OperatorAction(r["at"], r["actor"], r["action"], json.loads(r["filter"]), r["count"])
        for r in rows
    ]
