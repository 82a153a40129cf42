"""Versioned migrations: ordered ``NNN_name.sql`` files, each applied once, in a transaction."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

import asyncpg
import structlog

from pcns.database import Database, translated

log = structlog.get_logger(__name__)

_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# Serialises concurrent migrators (several receivers starting at once).
_LOCK_KEY = 0x70636E73


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in files("pcns.queue").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply every pending migration; returns the names applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS pcns_schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["version"] for r in await conn.fetch("SELECT version FROM pcns_schema_migrations")
        }
        for migration in available_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO pcns_schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("migration_applied", migration=migration.name)
            applied.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied


async def migrate_database(db: Database) -> list[str]:
    """:func:`migrate` on a connection of ``db``'s pool; driver errors translated."""
    with translated():
        async with db.pool.acquire() as conn:
            return await migrate(conn)
