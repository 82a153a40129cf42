"""The operators' queries keep their index plans on the million deliveries of test_query_plans.

Each statement is built by the code that runs it (``operations.list_sql``, ``retry_sql``,
``cancel_sql``) and planned with ``EXPLAIN (FORMAT JSON)`` as a custom plan and as the generic
plan that a pooled connection switches to after five runs of one prepared statement. What these
tests prove: a list by exact account alone finds the targets by a skip scan of
``pcns_deliveries_account`` and probes (target, account) in it; a list by target and account
probes the same index; a target's parked page, also a page deep, walks
``pcns_deliveries_parked`` in id order and stops at the page; a change's deliveries come from
``pcns_deliveries_change``; a time range is a range of the primary key; a retry or cancel of a
target's rows reads only the partial indexes of the states it changes, of an account's rows only
its (target, account) entries. Nothing scans the table. The last test shows the checks fail for
the two statement shapes these plans replaced (a state or a page size as a parameter).

Filters no index serves (a glob on the account, a source, a state of the history alone) are
listed in docs/benchmarks.md with their plans; they are not checked here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from pcns.queue import operations as ops
from pcns.queue.operations import DeliveryFilter
from tests.integration.test_query_plans import (  # noqa: F401 - the fixtures, reused
    ACCOUNTS,
    CHANGES,
    CLAIM_INDEX,
    MODES,
    PARKED_TARGET,
    PKEY,
    TABLE,
    TARGETS,
    Read,
    assert_only_index,
    big_queue_database_fixture,
    big_queue_fixture,
    deliveries_indexes,
    explain,
    literal,
    reads_of_deliveries,
    why,
)

ACCOUNT_INDEX = "pcns_deliveries_account"
PARKED_INDEX = "pcns_deliveries_parked"
CHANGE_INDEX = "pcns_deliveries_change"
ACCOUNT = "user123"  # five changes, each delivered to all eight targets
OTHER_TARGET = "target2"
ACCOUNT_ROWS = CHANGES // ACCOUNTS * TARGETS  # its five changes, delivered to every target
PAGE = 50


@dataclass(frozen=True)
class Values:
    """Real values of the million-row queue for the filters."""

    account_before: uuid.UUID  # the account's fifth-newest delivery: its second page
    parked_before: uuid.UUID  # the PARKED_TARGET's 1000th-newest parked delivery
    change_id: uuid.UUID
    since: datetime  # an hour in the middle of the history
    range_before: uuid.UUID  # a delivery inside that hour


@pytest.fixture(scope="module")
async def values(big_queue: asyncpg.Connection) -> Values:
    conn = big_queue
    account_ids = await conn.fetch(
        f"SELECT id FROM {TABLE} WHERE account = $1 ORDER BY id DESC", ACCOUNT
    )
    parked = await conn.fetchval(
        f"SELECT id FROM {TABLE} WHERE target = $1 AND state = 'parked' ORDER BY id DESC"
        " OFFSET 999 LIMIT 1",
        PARKED_TARGET,
    )
    middle = await conn.fetchrow(
        f"SELECT id, change_id, created_at FROM {TABLE} ORDER BY id OFFSET 500000 LIMIT 1"
    )
    assert len(account_ids) == ACCOUNT_ROWS
    assert parked is not None
    assert middle is not None
    return Values(
        account_before=account_ids[4]["id"],
        parked_before=parked,
        change_id=middle["change_id"],
        since=middle["created_at"] - timedelta(minutes=30),
        range_before=middle["id"],
    )


Statement = tuple[str, list[Any]]


async def list_plan(conn: asyncpg.Connection, statement: Statement, mode: str) -> Any:
    """The plan of a list, run (a SELECT changes nothing): the plan shows what each node read,
    and the skip scan's subplans, which EXPLAIN leaves out of a recursive CTE it does not run."""
    sql, args = statement
    return await explain(conn, sql, await literals(conn, args), mode=mode, analyze=True)


async def bulk_plan(conn: asyncpg.Connection, statement: Statement | None, mode: str) -> Any:
    """The plan of a bulk UPDATE, not run."""
    assert statement is not None, "the filter selected no state the action changes"
    sql, args = statement
    return await explain(conn, sql, await literals(conn, args), mode=mode)


async def literals(conn: asyncpg.Connection, args: list[Any]) -> list[str]:
    """A statement's arguments (ids and text) as typed SQL literals."""
    return [await literal(conn, a, "uuid" if isinstance(a, uuid.UUID) else "text") for a in args]


def assert_probes(plan: dict[str, Any], index: str, conds: tuple[str, ...], what: str) -> Read:
    """Some read of ``index`` has every one of ``conds`` in its index condition."""
    for r in reads_of_deliveries(plan, {index}):
        if r.index == index and all(c in r.cond for c in conds):
            return r
    raise AssertionError(f"{what}: no read of {index} on {conds}\n{why(plan)}")


def assert_reads_at_most(plan: dict[str, Any], rows: int, what: str) -> None:
    """A run plan fetched at most ``rows`` rows of the table, those its filters dropped too
    (EXPLAIN gives per-loop averages, rounded: a node run in loops may count a few more)."""
    read = 0
    stack = [plan]
    while stack:
        node = stack.pop()
        stack.extend(node.get("Plans", []))
        if node.get("Relation Name") == TABLE and node["Node Type"] != "ModifyTable":
            seen = sum(node.get(k, 0) for k in ("Actual Rows", "Rows Removed by Filter"))
            read += (seen + node.get("Rows Removed by Index Recheck", 0)) * node["Actual Loops"]
    assert read <= rows, f"{what}: read {read} rows of {TABLE}, expected at most {rows}"


def assert_ordered_page(plan: dict[str, Any], index: str, what: str) -> None:
    """The page comes from an index scan in id order that stops at the LIMIT: no Sort (which
    would have read every matching row first), no more rows read than the page holds."""
    stack = [plan]
    while stack:
        node = stack.pop()
        stack.extend(node.get("Plans", []))
        assert node["Node Type"] != "Sort", f"{what}: the page is sorted\n{why(plan)}"
    reads = reads_of_deliveries(plan, {index})
    assert any(r.node == "Index Scan" and r.index == index for r in reads), (
        f"{what}: no ordered Index Scan on {index}\n{why(plan)}"
    )
    assert_reads_at_most(plan, PAGE, what)


def _by_account(v: Values, before: bool) -> Statement:
    return ops.list_sql(DeliveryFilter(account=ACCOUNT), PAGE, v.account_before if before else None)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("before", [False, True], ids=["first-page", "before"])
async def test_list_by_account_alone_probes_each_target(
    big_queue: asyncpg.Connection, values: Values, mode: str, before: bool
) -> None:
    """A list by exact account alone, first page or older, finds the targets by a skip scan of
    the account index and reads only the account's rows, by (target, account) probes of it."""
    plan = await list_plan(big_queue, _by_account(values, before), mode)
    what = f"list by account ({mode})"
    assert_only_index(plan, await deliveries_indexes(big_queue), {ACCOUNT_INDEX}, what)
    assert_probes(plan, ACCOUNT_INDEX, ("target >",), what + ", skip scan")
    assert_probes(plan, ACCOUNT_INDEX, ("target = t.target", "account ="), what + ", probe")
    # The account's rows and one entry per target for the skip scan, plus one per probe for
    # EXPLAIN's rounding of per-loop averages: never the history.
    assert_reads_at_most(plan, ACCOUNT_ROWS + 2 * (TARGETS + 1), what)


@pytest.mark.parametrize("mode", MODES)
async def test_list_by_target_and_account_probes_the_account_index(
    big_queue: asyncpg.Connection, mode: str
) -> None:
    """A list by target and exact account reads only that pair's entries of the account index."""
    f = DeliveryFilter(target=OTHER_TARGET, account=ACCOUNT)
    plan = await list_plan(big_queue, ops.list_sql(f, PAGE), mode)
    what = f"list by target and account ({mode})"
    assert_only_index(plan, await deliveries_indexes(big_queue), {ACCOUNT_INDEX}, what)
    assert_probes(plan, ACCOUNT_INDEX, ("target =", "account ="), what)
    assert_reads_at_most(plan, ACCOUNT_ROWS // TARGETS, what)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("before", [False, True], ids=["first-page", "1000-deep"])
async def test_parked_page_walks_the_parked_index(
    big_queue: asyncpg.Connection, values: Values, mode: str, before: bool
) -> None:
    """A page of a target's parked deliveries, the first or one 1000 rows deep, walks the parked
    index from its key in id order and reads only the page, of the target's 21,000."""
    f = DeliveryFilter(target=PARKED_TARGET, states=("parked",))
    statement = ops.list_sql(f, PAGE, values.parked_before if before else None)
    plan = await list_plan(big_queue, statement, mode)
    what = f"parked page ({mode})"
    assert_only_index(plan, await deliveries_indexes(big_queue), {PARKED_INDEX}, what)
    cond = assert_probes(plan, PARKED_INDEX, ("target =",), what).cond
    assert not before or "id <" in cond, f"{what}: `before` is not in the index condition"
    assert_ordered_page(plan, PARKED_INDEX, what)


@pytest.mark.parametrize("mode", MODES)
async def test_list_by_change_reads_the_change_index(
    big_queue: asyncpg.Connection, values: Values, mode: str
) -> None:
    """A change's deliveries are found through the change index alone: one row per target."""
    f = DeliveryFilter(change_id=values.change_id)
    plan = await list_plan(big_queue, ops.list_sql(f, PAGE), mode)
    what = f"list by change ({mode})"
    assert_only_index(plan, await deliveries_indexes(big_queue), {CHANGE_INDEX}, what)
    assert_probes(plan, CHANGE_INDEX, ("change_id =",), what)
    assert_reads_at_most(plan, TARGETS, what)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("before", [False, True], ids=["first-page", "before"])
async def test_time_range_is_a_primary_key_range(
    big_queue: asyncpg.Connection, values: Values, mode: str, before: bool
) -> None:
    """A list by time alone, first page or older, walks a range of the primary key in id order
    and reads only the page."""
    f = DeliveryFilter(since=values.since, until=values.since + timedelta(hours=1))
    statement = ops.list_sql(f, PAGE, values.range_before if before else None)
    plan = await list_plan(big_queue, statement, mode)
    what = f"time range ({mode})"
    assert_only_index(plan, await deliveries_indexes(big_queue), {PKEY}, what)
    assert_probes(plan, PKEY, ("id >=", "id <"), what)
    assert_ordered_page(plan, PKEY, what)


Bulk = Callable[[DeliveryFilter], Statement | None]
ACTIONS: dict[str, Bulk] = {"retry": ops.retry_sql, "cancel": ops.cancel_sql}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("states", [(), ("parked",)], ids=["open-states", "parked"])
async def test_bulk_action_on_a_target_reads_only_open_rows(
    big_queue: asyncpg.Connection, mode: str, action: str, states: tuple[Any, ...]
) -> None:
    """A retry or cancel of a target's rows (its parked ones, or every state the action
    changes) finds them in the parked index by target and in the other states' partial
    indexes, never in the target's history (the account index) or the whole table."""
    f = DeliveryFilter(target=PARKED_TARGET, states=states)
    plan = await bulk_plan(big_queue, ACTIONS[action](f), mode)
    what = f"{action} of a target ({mode})"
    indexes = await deliveries_indexes(big_queue)
    partial = await deliveries_indexes(big_queue, partial_only=True)
    assert CLAIM_INDEX in partial
    assert_only_index(plan, indexes, partial | {PKEY}, what)
    assert_probes(plan, PARKED_INDEX, ("target =",), what)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("action", ACTIONS)
async def test_bulk_action_on_an_account_probes_each_target(
    big_queue: asyncpg.Connection, mode: str, action: str
) -> None:
    """A retry or cancel of an account's rows reads only its (target, account) entries of the
    account index, for every target, and updates them by primary key."""
    plan = await bulk_plan(big_queue, ACTIONS[action](DeliveryFilter(account=ACCOUNT)), mode)
    what = f"{action} of an account ({mode})"
    assert_only_index(plan, await deliveries_indexes(big_queue), {ACCOUNT_INDEX, PKEY}, what)
    assert_probes(plan, ACCOUNT_INDEX, ("target = t.target", "account ="), what)


@pytest.mark.parametrize("what", ["parked page", "account page"])
async def test_parameters_that_defeat_the_plan_are_caught(
    big_queue: asyncpg.Connection, values: Values, what: str
) -> None:
    """The checks above fail for the generic plans of the shapes these statements had: a state
    as a parameter (no partial index can serve it) and the page size as a parameter (guessed
    at a tenth of the rows, it made an account's second page walk the primary key)."""
    conn = big_queue
    if what == "parked page":
        f = DeliveryFilter(target=PARKED_TARGET, states=("parked",))
        sql, args = ops.list_sql(f, PAGE, values.parked_before)
        good, bad, allowed = "(d.state = 'parked')", "d.state = ANY(${}::text[])", PARKED_INDEX
        extra = await literal(conn, ["parked"], "text[]")
    else:
        sql, args = _by_account(values, before=True)
        good, bad, allowed = f" LIMIT {PAGE}", " LIMIT ${}", ACCOUNT_INDEX
        extra = await literal(conn, PAGE, "integer")
    assert good in sql
    sql = sql.replace(good, bad.format(len(args) + 1))
    plan = await explain(conn, sql, [*await literals(conn, args), extra], mode="force_generic_plan")
    with pytest.raises(AssertionError, match=what):
        assert_only_index(plan, await deliveries_indexes(conn), {allowed}, what)
