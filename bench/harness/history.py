"""A queue with a long history, built fast: ``changes`` changes delivered to eight targets
(a million delivery rows for 125,000 changes) by one ``INSERT ... SELECT`` over
``generate_series``, with the deliveries' indexes and keys dropped for the load and rebuilt
after from their own definitions, so the planner sees exactly the migrated schema.

Mostly terminal history (delivered, superseded, failed) spread over the last two days, within
``delivery.max_age``; the newest thousand changes pending (backing off, due in ten minutes); one
broken target's ``parked`` newest deliveries, their ciphertexts kept. Delivery ids are UUIDv7 as
pcns makes them (the creation time's milliseconds first). Every account has five changes, each
delivered to every target. Open rows carry ciphertext-sized random bytes under the service's
real data key id: nothing that uses this history opens them (no worker runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from bench.harness.backlog import service_keyring
from bench.harness.databases import Databases, with_database

TABLE = "pcns_deliveries"
TARGETS = tuple(f"app{n}" for n in range(1, 9))
PENDING_CHANGES = 1000
SPAN_SECONDS = 48 * 3600.0


@dataclass(frozen=True)
class History:
    changes: int
    parked: int  # the newest deliveries of PARKED_TARGET before the pending ones are parked
    parked_target: str = "app3"

    @property
    def accounts(self) -> int:
        return self.changes // 5

    @property
    def rows(self) -> int:
        return self.changes * len(TARGETS)


def _fill(h: History, key_id: str) -> str:
    n, pending = h.changes, PENDING_CHANGES
    parked_from = n - pending - h.parked
    targets = ", ".join(f"('{t}')" for t in TARGETS)
    return f"""
WITH c AS MATERIALIZED (
    SELECT g, md5('change-' || g)::uuid AS id, 'user' || (g % {h.accounts}) AS account,
           now() - make_interval(secs => ({n} - g) * {SPAN_SECONDS / n}) AS at,
           CASE WHEN g > {n - pending} THEN 'pending' WHEN g % 50 = 0 THEN 'failed'
                WHEN g % 7 = 0 THEN 'superseded' ELSE 'delivered' END AS state
    FROM generate_series(1, {n}) AS g
), changes AS (
    INSERT INTO pcns_changes (id, source, webhook_id, user_name, received_at, response)
    SELECT id, 'dc01', 'msg_history-' || g, account, at, '{{}}' FROM c
)
INSERT INTO {TABLE} (id, change_id, target, account, order_at, state, attempts, due_at,
    last_error, key_id, nonce, ciphertext, created_at, updated_at, finished_at)
SELECT s.id, c.id, t.target, c.account, c.at, s.state, o.attempts, o.due_at, o.last_error,
       CASE WHEN o.open THEN '{key_id}' END,
       CASE WHEN o.open THEN decode(substr(md5(s.id::text), 1, 24), 'hex') END,
       CASE WHEN o.open THEN decode(md5(s.id::text || 'a') || md5(s.id::text || 'b') || '00',
                                    'hex') END,
       c.at, c.at, CASE WHEN NOT o.open THEN c.at + interval '1 second' END
FROM c
CROSS JOIN (VALUES {targets}) AS t(target)
CROSS JOIN LATERAL (SELECT
        (lpad(to_hex(floor(extract(epoch FROM c.at) * 1000)::bigint), 12, '0') || '7'
            || substr(md5(c.g || '/' || t.target), 1, 19))::uuid AS id,
        CASE WHEN t.target = '{h.parked_target}' AND c.g > {parked_from} AND c.state <> 'pending'
             THEN 'parked' ELSE c.state END AS state
    OFFSET 0) AS s
CROSS JOIN LATERAL (SELECT
        s.state IN ('pending', 'parked') AS open,
        CASE s.state WHEN 'pending' THEN 1 WHEN 'parked' THEN 12 ELSE 1 END AS attempts,
        CASE WHEN s.state = 'pending' THEN now() + interval '10 minutes' ELSE c.at END AS due_at,
        CASE WHEN s.state = 'parked' THEN 'permission denied (parked after 12 attempts)'
             WHEN s.state = 'failed' THEN 'account does not exist' END AS last_error
    OFFSET 0) AS o
"""


async def build_history(url: str, keyring_file: Path, h: History) -> None:
    """Migrate the database at ``url`` and fill it with ``h`` (not yet analysed)."""
    keys = await service_keyring(url, keyring_file)  # migrates, creates the first data key
    if keys.primary_id is None:
        raise RuntimeError("the service's keyring has no primary data key")
    conn = await asyncpg.connect(url)
    try:
        indexes = await conn.fetch(
            "SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS ddl"
            " FROM pg_index i WHERE i.indrelid = $1::regclass AND NOT EXISTS"
            " (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
            TABLE,
        )
        keys_ = await conn.fetch(
            "SELECT conname, contype, pg_get_constraintdef(oid) AS ddl FROM pg_constraint"
            " WHERE conrelid = $1::regclass AND contype IN ('p', 'u', 'f')",
            TABLE,
        )
        await conn.execute("SET maintenance_work_mem = '256MB'")
        async with conn.transaction():
            for key in keys_:
                await conn.execute(f'ALTER TABLE {TABLE} DROP CONSTRAINT "{key["conname"]}"')
            for index in indexes:
                await conn.execute(f"DROP INDEX {index['name']}")
            await conn.execute(_fill(h, keys.primary_id))
            add = [f'ALTER TABLE {TABLE} ADD CONSTRAINT "{k["conname"]}" {k["ddl"]}' for k in keys_]
            foreign = [a for a, k in zip(add, keys_, strict=True) if k["contype"] == "f"]
            # keys and indexes first, then the foreign key, checked in one pass over the table
            for ddl in [a for a in add if a not in foreign] + [i["ddl"] for i in indexes] + foreign:
                await conn.execute(ddl)
    finally:
        await conn.close()


async def history_copy(dbs: Databases, template: str, label: str) -> str:
    """A scratch copy of the history database ``template`` (dropped with the others): its
    files copied after a checkpoint (``STRATEGY = FILE_COPY``), not every page through the WAL
    as PostgreSQL 15 copies by default, which takes long for a million rows."""
    name = f"pcns_bench_{dbs.token}_{len(dbs.names)}_{label}"
    source = urlsplit(template).path.lstrip("/")
    conn = await asyncpg.connect(dbs.server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}" STRATEGY = FILE_COPY')
    finally:
        await conn.close()
    dbs.names.append(name)
    return with_database(dbs.server_url, name)
