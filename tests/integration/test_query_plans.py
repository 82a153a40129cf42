"""The queue's hot statements keep their index plans on a table of a million deliveries.

A table of mostly terminal history with a few thousand pending, some hundred in-flight and about
30,000 parked rows (21,000 of them one broken target's), eight targets sharing every account and
changes from three sources, is built once per session (``test_operator_plans.py`` plans the
operators' queries on it), analysed, and each statement is planned with ``EXPLAIN (FORMAT JSON)``
both as a custom plan (its parameter values known) and as the generic plan a long-lived
connection or PL/pgSQL switches to. What these tests prove: the claim walks the partial index
``pcns_deliveries_claim`` and every statement of the claim function reads rows by index, the
completion, release and reaper UPDATEs find their rows through the primary key or the lease index,
and the queue statistics read only partial indexes; no Seq Scan over the history anywhere. A
statement that grows an ``OR`` defeating its index fails here (the last test shows the checks
catch exactly that). The claim's statements are taken from the function as installed in the
database, so these tests follow the migrations; where the server has ``auto_explain``, the
plans of the function as it really runs are checked too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from pcns.queue import store, workers
from tests.conftest import database_url

CHANGES = 125_000  # x TARGETS deliveries: a million rows
TARGETS = 8
TARGET_NAMES = [f"target{n}" for n in range(1, TARGETS + 1)]  # the workers' targets
ACCOUNTS = 25_000  # five changes per (target, account)
PENDING_CHANGES = 1_000  # the newest changes: 8,000 pending deliveries, half of them due now
IN_FLIGHT_CHANGES = 100  # the changes before them: 800 deliveries in flight
# One target broke before them: its deliveries of the 20,000 changes before the in-flight ones
# are parked. Elsewhere one delivery in 97 of the history is parked (about 1,300 per target).
PARKED_TARGET = "target3"
PARKED_CHANGES = 20_000
SOURCES = ("dc01", "dc02", "hr")  # changes by source: 2/3, 1/3 and one in a hundred
CLAIM_BATCH = 64  # delivery.claim_batch's default

MODES = ("force_custom_plan", "force_generic_plan")
TABLE = "pcns_deliveries"
CLAIM_INDEX = "pcns_deliveries_claim"
PKEY = "pcns_deliveries_pkey"
LEASE_INDEX = "pcns_deliveries_leases"

# Mostly terminal history, the newest changes still open; each change's values are worked out
# once and shared by its deliveries to every target. Delivery ids are UUIDv7 as pcns makes them
# (the creation time's milliseconds first), so a time range is a range of ids.
_OPEN = PENDING_CHANGES + IN_FLIGHT_CHANGES
_FILL = f"""
WITH c AS MATERIALIZED (
    SELECT g, md5('change-' || g)::uuid AS id, 'user' || (g % {ACCOUNTS}) AS account,
           CASE WHEN g % 100 = 0 THEN '{SOURCES[2]}' WHEN g % 3 = 0 THEN '{SOURCES[1]}'
                ELSE '{SOURCES[0]}' END AS source,
           now() - make_interval(secs => {CHANGES} - g) AS at,
           CASE
               WHEN g > {CHANGES - PENDING_CHANGES} THEN 'pending'
               WHEN g > {CHANGES - _OPEN} THEN 'in_flight'
               WHEN g % 50 = 0 THEN 'failed'
               WHEN g % 7 = 0 THEN 'superseded'
               ELSE 'delivered'
           END AS state
    FROM generate_series(1, {CHANGES}) AS g
), changes AS (
    INSERT INTO pcns_changes (id, source, webhook_id, user_name, received_at, response)
    SELECT id, source, 'msg_' || g, account, at, '{{}}' FROM c
)
INSERT INTO {TABLE} (id, change_id, target, account, order_at, state, attempts, due_at,
    lease_token, lease_until, key_id, nonce, ciphertext, created_at, updated_at, finished_at)
SELECT s.id, c.id, t.target, c.account, c.at, s.state, o.attempts, o.due_at,
       CASE WHEN s.state = 'in_flight' THEN gen_random_uuid() END, o.lease_until,
       'dek-1', o.nonce, o.ciphertext, c.at, c.at, o.finished_at
FROM c
CROSS JOIN (SELECT n, 'target' || n AS target FROM generate_series(1, {TARGETS}) AS n) AS t
CROSS JOIN LATERAL (SELECT
        (lpad(to_hex(floor(extract(epoch FROM c.at) * 1000)::bigint), 12, '0') || '7'
            || substr(md5(c.g || '/' || t.n), 1, 19))::uuid AS id,
        CASE WHEN c.state IN ('delivered', 'superseded', 'failed') AND (c.g % 97 = 0 OR
                 (t.target = '{PARKED_TARGET}' AND c.g > {CHANGES - _OPEN - PARKED_CHANGES}))
             THEN 'parked' ELSE c.state END AS state
    OFFSET 0) AS s
CROSS JOIN LATERAL (SELECT
        CASE WHEN s.state = 'pending' THEN c.g % 2 ELSE 1 END AS attempts,
        -- half the pending rows are due, half wait for a retry
        CASE WHEN s.state = 'pending' AND c.g % 2 = 1 THEN now() + interval '10 minutes'
             ELSE c.at END AS due_at,
        -- a tenth of the leases have run out: the reaper's work
        CASE WHEN s.state = 'in_flight' THEN now() + CASE WHEN c.g % 10 = 0
             THEN interval '-1 minute' ELSE interval '1 minute' END END AS lease_until,
        CASE WHEN s.state IN ('pending', 'in_flight', 'parked') THEN '\\x00'::bytea END AS nonce,
        CASE WHEN s.state IN ('pending', 'in_flight', 'parked') THEN '\\x01'::bytea END
            AS ciphertext,
        CASE WHEN s.state NOT IN ('pending', 'in_flight', 'parked')
             THEN c.at + interval '1 second' END AS finished_at
    OFFSET 0) AS o
"""


async def fill_queue(conn: asyncpg.Connection) -> None:
    """Load the table fast: its indexes and keys are dropped for the load and rebuilt after from
    their own definitions, so the planner sees exactly the migrated schema."""
    indexes = await conn.fetch(
        "SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS ddl"
        " FROM pg_index i WHERE i.indrelid = $1::regclass AND NOT EXISTS"
        " (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        TABLE,
    )
    keys = await conn.fetch(
        "SELECT conname, contype, pg_get_constraintdef(oid) AS ddl FROM pg_constraint"
        " WHERE conrelid = $1::regclass AND contype IN ('p', 'u', 'f')",
        TABLE,
    )
    before = await index_definitions(conn)
    await conn.execute("SET maintenance_work_mem = '256MB'")
    async with conn.transaction():
        for key in keys:
            await conn.execute(f'ALTER TABLE {TABLE} DROP CONSTRAINT "{key["conname"]}"')
        for index in indexes:
            await conn.execute(f"DROP INDEX {index['name']}")
        await conn.execute(_FILL)
        # Keys and indexes first, then the foreign key, checked in one pass over the table.
        add = [f'ALTER TABLE {TABLE} ADD CONSTRAINT "{k["conname"]}" {k["ddl"]}' for k in keys]
        foreign = [a for a, k in zip(add, keys, strict=True) if k["contype"] == "f"]
        rebuild = [a for a in add if a not in foreign] + [i["ddl"] for i in indexes] + foreign
        for ddl in rebuild:
            await conn.execute(ddl)
    assert await index_definitions(conn) == before
    await conn.execute(f"ANALYZE pcns_changes; ANALYZE {TABLE}")


async def index_definitions(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT pg_get_indexdef(indexrelid) AS ddl FROM pg_index"
        " WHERE indrelid = $1::regclass ORDER BY 1",
        TABLE,
    )
    return [r["ddl"] for r in rows]


# The million-row database, built once per session for this module and for
# test_operator_plans.py, which imports the fixtures: pytest gives every module that imports a
# fixture its own instance, so the database's name is kept in the session's stash. (Named in the
# decorator, so that the tests' arguments do not shadow the functions.)
_BIG_QUEUE = pytest.StashKey[str]()


@pytest.fixture(scope="session", name="big_queue_database")
async def big_queue_database_fixture(
    request: pytest.FixtureRequest, pg_server_url: str, migrated_template: str
) -> AsyncIterator[str]:
    """The URL of a migrated database holding a million analysed delivery rows."""
    stash = request.session.stash
    if _BIG_QUEUE not in stash:
        name = "pcns_plans_" + uuid.uuid4().hex[:12]
        await _admin(pg_server_url, f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
        try:
            conn = await asyncpg.connect(database_url(pg_server_url, name))
            try:
                await fill_queue(conn)
            finally:
                await conn.close()
        except BaseException:
            await _admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            raise
        stash[_BIG_QUEUE] = name
    name = stash[_BIG_QUEUE]
    yield database_url(pg_server_url, name)
    # The first instance to finish, at the end of the session, drops it.
    await _admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module", name="big_queue")
async def big_queue_fixture(big_queue_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the million-row database (:func:`big_queue_database_fixture`)."""
    conn = await asyncpg.connect(big_queue_database)
    try:
        yield conn
    finally:
        await conn.close()


# --- reading plans ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """One plan node that reads the deliveries table or one of its indexes."""

    node: str
    index: str | None
    cond: str


def reads_of_deliveries(plan: dict[str, Any], indexes: set[str]) -> list[Read]:
    found = []
    stack = [plan]
    while stack:
        node = stack.pop()
        stack.extend(node.get("Plans", []))
        kind = node["Node Type"]
        if kind == "ModifyTable":
            continue  # the UPDATE's target: its rows come from the scans below it
        index = node.get("Index Name")
        if node.get("Relation Name") == TABLE or index in indexes:
            found.append(Read(kind, index, node.get("Index Cond", "")))
    return found


def why(plan: dict[str, Any]) -> str:
    return json.dumps(plan, indent=1)[:6000]


def assert_no_seq_scan(plan: dict[str, Any], indexes: set[str], what: str) -> list[Read]:
    reads = reads_of_deliveries(plan, indexes)
    assert reads, f"{what}: no read of {TABLE} found in\n{why(plan)}"
    scans = [r for r in reads if r.node == "Seq Scan"]
    assert not scans, f"{what}: Seq Scan on {TABLE}\n{why(plan)}"
    return reads


def assert_walks_claim_index(plan: dict[str, Any], indexes: set[str]) -> None:
    """The claim's walk reads only the claim index, bounded by due time: the pending rows that
    are due, not the history (an index scan in due order, or a bitmap of it then sorted)."""
    assert_only_index(plan, indexes, {CLAIM_INDEX}, "claim walk")
    reads = reads_of_deliveries(plan, indexes)
    assert any(r.index == CLAIM_INDEX and "due_at" in r.cond for r in reads), (
        f"claim walk: due_at is not a condition on {CLAIM_INDEX}\n{why(plan)}"
    )


def assert_only_index(
    plan: dict[str, Any], indexes: set[str], allowed: set[str], what: str
) -> None:
    """Every read of the table goes through one of ``allowed`` (an index scan or a bitmap)."""
    reads = assert_no_seq_scan(plan, indexes, what)
    heap = {"Bitmap Heap Scan"}  # its rows come from the Bitmap Index Scan below it
    wrong = [r for r in reads if r.node not in heap and r.index not in allowed]
    assert not wrong, f"{what}: reads {TABLE} other than through {sorted(allowed)}\n{why(plan)}"


async def literal(conn: asyncpg.Connection, value: object, type_: str) -> str:
    """``value`` as a typed SQL literal, quoted by the server (EXECUTE takes no bind parameters)."""
    text: str = await conn.fetchval(
        f"SELECT quote_nullable($1::{type_}::text) || '::{type_}'", value
    )
    return text


async def explain(
    conn: asyncpg.Connection,
    sql: str,
    args: Sequence[str] = (),
    *,
    mode: str,
    types: Sequence[str] | None = None,
    analyze: bool = False,
) -> dict[str, Any]:
    """The plan of ``sql`` prepared (parameter ``types`` when given) and executed with ``args``
    (SQL literals) under ``plan_cache_mode = mode``; nothing is run, unless ``analyze`` (for a
    SELECT only): then the plan carries what each node read."""
    name = "plan_" + uuid.uuid4().hex[:12]
    declared = f"({', '.join(types)})" if types else ""
    await conn.execute(f"PREPARE {name}{declared} AS {sql}")
    try:
        await conn.execute(f"SET plan_cache_mode = {mode}")
        call = f"EXECUTE {name}" + (f"({', '.join(args)})" if args else "")
        options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
        raw = await conn.fetchval(f"EXPLAIN ({options}) {call}")
    finally:
        await conn.execute(f"RESET plan_cache_mode; DEALLOCATE {name}")
    plan: dict[str, Any] = json.loads(raw)[0]["Plan"]
    return plan


async def deliveries_indexes(conn: asyncpg.Connection, *, partial_only: bool = False) -> set[str]:
    rows = await conn.fetch(
        "SELECT indexrelid::regclass::text AS name FROM pg_index"
        " WHERE indrelid = $1::regclass AND (indpred IS NOT NULL OR NOT $2)",
        TABLE,
        partial_only,
    )
    return {r["name"] for r in rows}


# --- the claim function's statements ----------------------------------------------------------

# The function's variables as the statements' parameters, the way PL/pgSQL passes them.
_VARIABLES = {
    "v_row.id": "uuid",
    "v_targets": "text[]",
    "v_accounts": "text[]",
    "v_held": "text[]",
    "p_limit": "integer",
    "p_lease_token": "uuid",
    "p_lease_seconds": "float8",
    "p_max_age_seconds": "float8",
    "p_worker": "uuid",
    "p_targets": "text[]",
}
_VARIABLE = re.compile(r"\b(" + "|".join(re.escape(v) for v in _VARIABLES) + r")\b")


@dataclass(frozen=True)
class Statement:
    sql: str
    variables: tuple[str, ...]  # $1, $2, ... in this order

    @property
    def types(self) -> list[str]:
        return [_VARIABLES[v] for v in self.variables]


def as_statement(body: str) -> Statement:
    names: list[str] = []

    def param(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return Statement(_VARIABLE.sub(param, body), tuple(names))


def claim_statements(source: str) -> dict[str, Statement]:
    """The SQL statements of ``pcns_claim_deliveries``: the walk, the per-row recheck and the
    decision applied with the key locks held."""
    shapes = {
        "walk": r"\bFOR\s+v_row\s+IN\s+(SELECT\b.*?)\s+LOOP\b",
        "recheck": r"\bNOT\s+EXISTS\s*\(\s*(SELECT\b.*?)\);",
        "apply": r"\bRETURN\s+QUERY\s+(WITH\b.*?);\s*END\s*$",
    }
    found = {}
    for name, shape in shapes.items():
        match = re.search(shape, source, re.DOTALL | re.IGNORECASE)
        assert match, f"pcns_claim_deliveries has no {name} statement shaped {shape!r}: update me"
        found[name] = as_statement(match.group(1))
    return found


async def claim_arguments(conn: asyncpg.Connection) -> dict[str, str]:
    """Values for the function's variables as a claim of one batch would give them."""
    due = await conn.fetch(
        f"SELECT id, target, account FROM {TABLE} WHERE state = 'pending' AND due_at <= now()"
        f" ORDER BY due_at LIMIT {CLAIM_BATCH}"
    )
    assert len(due) == CLAIM_BATCH
    values: dict[str, object] = {
        "v_row.id": due[0]["id"],
        "v_targets": [r["target"] for r in due],
        "v_accounts": [r["account"] for r in due],
        "v_held": ["held-target"],
        "p_limit": CLAIM_BATCH,
        "p_lease_token": uuid.uuid4(),
        "p_lease_seconds": 60.0,
        "p_max_age_seconds": 7 * 86400.0,
        "p_worker": uuid.uuid4(),
        "p_targets": TARGET_NAMES,
    }
    return {name: await literal(conn, values[name], _VARIABLES[name]) for name in _VARIABLES}


def check_claim_statement(name: str, plan: dict[str, Any], indexes: set[str]) -> None:
    if name == "walk":
        assert_walks_claim_index(plan, indexes)
    elif name == "recheck":
        assert_only_index(plan, indexes, {PKEY}, "claim recheck")
    else:
        assert_no_seq_scan(plan, indexes, "claim decision")
        reads = reads_of_deliveries(plan, indexes)
        assert any(r.index == PKEY for r in reads), (
            f"claim decision does not update its rows by primary key\n{why(plan)}"
        )


async def claim_function_source(conn: asyncpg.Connection) -> str:
    assert "pcns_claim_deliveries(" in store._CLAIM, "the claim no longer calls the function"
    source: str = await conn.fetchval(
        "SELECT prosrc FROM pg_proc WHERE proname = 'pcns_claim_deliveries'"
    )
    return source


@pytest.mark.parametrize("mode", MODES)
async def test_claim_statements_use_the_claim_index(
    big_queue: asyncpg.Connection, mode: str
) -> None:
    """Each statement of the installed claim function, planned with a batch's values, walks the
    partial claim index or finds rows by key, and never scans the million-row table."""
    indexes = await deliveries_indexes(big_queue)
    args = await claim_arguments(big_queue)
    for name, statement in claim_statements(await claim_function_source(big_queue)).items():
        plan = await explain(
            big_queue,
            statement.sql,
            [args[v] for v in statement.variables],
            mode=mode,
            types=statement.types,
        )
        check_claim_statement(name, plan, indexes)


async def test_claim_function_as_run_uses_the_claim_index(big_queue: asyncpg.Connection) -> None:
    """Running the claim function itself (custom plans, then generic ones), ``auto_explain``
    shows every statement it ran reading the table by index, its walk on the claim index."""
    conn = big_queue
    try:
        await conn.execute("LOAD 'auto_explain'")
    except asyncpg.UndefinedFileError:
        reason = "this PostgreSQL has no auto_explain module (contrib not installed)"
        if os.environ.get("PCNS_REQUIRE_TOOLS") == "1":
            pytest.fail(f"PCNS_REQUIRE_TOOLS=1 but {reason}")
        pytest.skip(reason)
    plans: list[dict[str, Any]] = []

    def collect(_: object, message: asyncpg.PostgresLogMessage) -> None:
        text = message.message or ""
        if "plan:" in text:
            plans.append(json.loads(text.split("plan:", 1)[1]))

    indexes = await deliveries_indexes(conn)
    conn.add_log_listener(collect)
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(
            "SET LOCAL auto_explain.log_min_duration = 0;"
            " SET LOCAL auto_explain.log_nested_statements = on;"
            " SET LOCAL auto_explain.log_format = 'json';"
            " SET LOCAL client_min_messages = log"
        )
        for mode in MODES:
            await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
            for _ in range(2):
                claimed = await conn.fetch(
                    store._CLAIM,
                    CLAIM_BATCH,
                    uuid.uuid4(),
                    60.0,
                    7 * 86400.0,
                    None,
                    TARGET_NAMES,
                    [],
                    [],
                )
                assert claimed, "the claim found nothing to claim"
        await conn.execute("SET LOCAL client_min_messages = notice")
        await asyncio.sleep(0)  # log listeners run on the next loop iterations
        await asyncio.sleep(0)
    finally:
        await tx.rollback()  # the other tests see the queue as it was built
        conn.remove_log_listener(collect)
    seen = {"walk": 0, "recheck": 0, "apply": 0}
    for logged in plans:
        text, plan = logged["Query Text"], logged["Plan"]
        if "pcns_claim_deliveries(" in text:
            continue  # the calling statement: a Function Scan
        if TABLE not in text:
            continue  # the driver's own queries (asyncpg introspecting the array types)
        if "UPDATE" in text:
            name = "apply"
        elif "ORDER BY" in text:
            name = "walk"
        elif "v_row.id" in text:
            name = "recheck"
        else:
            assert not reads_of_deliveries(plan, indexes), f"unexpected read: {text}"
            continue
        seen[name] += 1
        check_claim_statement(name, plan, indexes)
    assert all(seen.values()), f"auto_explain did not log every claim statement: {seen}"


# --- the other queue statements ---------------------------------------------------------------


async def in_flight_rows(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT id, lease_token FROM {TABLE} WHERE state = 'in_flight' LIMIT {CLAIM_BATCH}"
    )
    assert len(rows) == CLAIM_BATCH
    return rows


@pytest.mark.parametrize("mode", MODES)
async def test_completion_finds_rows_by_primary_key(
    big_queue: asyncpg.Connection, mode: str
) -> None:
    """Recording a batch of outcomes reads each row through the primary key, nothing else."""
    conn = big_queue
    rows = await in_flight_rows(conn)
    n = len(rows)
    args = [
        await literal(conn, [r["id"] for r in rows], "uuid[]"),
        await literal(conn, [r["lease_token"] for r in rows], "uuid[]"),
        await literal(conn, ["delivered"] * (n - 1) + ["deferred"], "text[]"),
        await literal(conn, [None] * (n - 1) + ["busy"], "text[]"),
        await literal(conn, [0.0] * (n - 1) + [30.0], "float8[]"),
        await literal(conn, [0.0] * (n - 1) + [50.0], "float8[]"),
    ]
    plan = await explain(conn, store._COMPLETE, args, mode=mode)
    assert_only_index(plan, await deliveries_indexes(conn), {PKEY}, "completion")
    assert any(
        r.node == "Index Scan" and r.index == PKEY for r in reads_of_deliveries(plan, {PKEY})
    ), f"completion: no Index Scan on {PKEY}\n{why(plan)}"


@pytest.mark.parametrize("mode", MODES)
async def test_release_and_reaper_use_their_indexes(
    big_queue: asyncpg.Connection, mode: str
) -> None:
    """Giving leases back reads rows by primary key; the reaper reads only the lease index."""
    conn = big_queue
    indexes = await deliveries_indexes(conn)
    rows = await in_flight_rows(conn)
    release = [
        await literal(conn, [r["id"] for r in rows], "uuid[]"),
        await literal(conn, rows[0]["lease_token"], "uuid"),
    ]
    plan = await explain(conn, store._RELEASE, release, mode=mode)
    assert_only_index(plan, indexes, {PKEY}, "release")
    plan = await explain(conn, workers._REAP, ["5", "10"], mode=mode)
    assert_only_index(plan, indexes, {LEASE_INDEX}, "reaper")


async def test_queue_stats_read_only_partial_indexes(big_queue: asyncpg.Connection) -> None:
    """The per-target queue statistics read the table only through its partial indexes, so their
    cost follows the open rows, not the history."""
    conn = big_queue
    indexes = await deliveries_indexes(conn)
    partial = await deliveries_indexes(conn, partial_only=True)
    assert {CLAIM_INDEX, LEASE_INDEX} <= partial
    for mode in MODES:
        plan = await explain(conn, store._QUEUE_STATS, mode=mode)
        assert_only_index(plan, indexes, partial, "queue stats")


@pytest.mark.parametrize(
    ("what", "good", "bad"),
    [
        ("walk", "d.state = 'pending'", "(d.state = 'pending' OR d.state = 'in_flight')"),
        ("walk", "d.due_at <= now()", "(d.due_at <= now() OR d.attempts = 0)"),
        ("stats", "WHERE state = 'pending'", "WHERE (state = 'pending' OR attempts = 0)"),
    ],
)
async def test_an_or_that_defeats_the_index_is_caught(
    big_queue: asyncpg.Connection, what: str, good: str, bad: str
) -> None:
    """The checks above fail for a claim walk or a statistics query whose ``OR`` defeats the
    partial index, so a statement changed that way cannot pass them."""
    conn = big_queue
    indexes = await deliveries_indexes(conn)
    if what == "walk":
        walk = claim_statements(await claim_function_source(conn))["walk"]
        assert good in walk.sql
        args = await claim_arguments(conn)
        plan = await explain(
            conn,
            walk.sql.replace(good, bad),
            [args[v] for v in walk.variables],
            mode=MODES[0],
            types=walk.types,
        )
        with pytest.raises(AssertionError, match="claim walk"):
            assert_walks_claim_index(plan, indexes)
    else:
        assert good in store._QUEUE_STATS
        plan = await explain(conn, store._QUEUE_STATS.replace(good, bad, 1), mode=MODES[0])
        partial = await deliveries_indexes(conn, partial_only=True)
        with pytest.raises(AssertionError, match="queue stats"):
            assert_only_index(plan, indexes, partial, "queue stats")
