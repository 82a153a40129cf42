"""What a statement's plan reads, as a benchmark reports it: its scan nodes, from
``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` of the plan a long-lived connection ends up using."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import asyncpg

# A prepared statement is planned afresh ("custom") for its first five runs; then PostgreSQL
# may switch to one generic plan for good (plan_cache_mode = auto), as on a pooled connection.
RUNS_BEFORE_GENERIC = 5


async def _literal(conn: asyncpg.Connection, value: object) -> str:
    type_ = "uuid" if isinstance(value, uuid.UUID) else "text"
    text: str = await conn.fetchval(
        f"SELECT quote_nullable($1::{type_}::text) || '::{type_}'", value
    )
    return text


async def scan_nodes(conn: asyncpg.Connection, sql: str, args: list[Any]) -> str:
    """One line: every node that reads a table or index in the plan of ``sql`` with ``args``
    (ids and text) after more runs than PostgreSQL plans afresh, with the rows it returned;
    whether that plan is the generic one; and the buffers it touched. Runs the statement."""
    name = "bench_" + uuid.uuid4().hex[:12]
    literals = ", ".join([await _literal(conn, a) for a in args])
    call = f"EXECUTE {name}" + (f"({literals})" if literals else "")
    await conn.execute(f"PREPARE {name} AS {sql}")
    try:
        for _ in range(RUNS_BEFORE_GENERIC + 1):
            await conn.execute(call)
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {call}")
    finally:
        await conn.execute(f"DEALLOCATE {name}")
    top = json.loads(raw)[0]["Plan"]
    nodes: Counter[str] = Counter()
    rows: Counter[str] = Counter()
    generic = False
    stack = [top]
    while stack:
        node = stack.pop()
        stack.extend(node.get("Plans", []))
        conds = " ".join(str(node.get(k, "")) for k in ("Index Cond", "Filter", "Recheck Cond"))
        generic = generic or "$" in conds
        if "Relation Name" in node or "Index Name" in node:
            on = node.get("Index Name") or node["Relation Name"]
            key = f"{node['Node Type']} {on}"
            nodes[key] += 1
            rows[key] += node.get("Actual Rows", 0) * node.get("Actual Loops", 1)
    listed = ", ".join(
        f"{key}{f' x{n}' if n > 1 else ''} ({rows[key]:.0f} rows)" for key, n in nodes.items()
    )
    buffers = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
    return f"{listed}; {'generic' if generic else 'custom'} plan, {buffers} buffers"
