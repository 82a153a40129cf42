"""Shared fixtures: a real PostgreSQL server for the whole session.

``PCNS_TEST_DATABASE_URL`` points the suite at an existing server (CI uses the machine's);
unset, an embedded PostgreSQL (``pgserver``) is started in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server on which tests may create and drop databases."""
    url = os.environ.get("PCNS_TEST_DATABASE_URL")
    if url:
        yield url
        return
    import pgserver  # type: ignore[import-untyped]

    data_dir = tempfile.mkdtemp(prefix="pcns-test-pg-")
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


def database_url(server_url: str, name: str) -> str:
    """The same server URL with another database name."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture
async def empty_database_url(pg_server_url: str) -> AsyncIterator[str]:
    """A freshly created, empty database, dropped after the test."""
    name = "pcns_t_" + uuid.uuid4().hex[:16]
    conn = await asyncpg.connect(pg_server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield database_url(pg_server_url, name)
    conn = await asyncpg.connect(pg_server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def migrated_template(pg_server_url: str) -> AsyncIterator[str]:
    """A database with every migration applied, used as the template of per-test databases."""
    from pcns.queue.migrate import migrate

    name = "pcns_tpl_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(pg_server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(database_url(pg_server_url, name))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield name
    conn = await asyncpg.connect(pg_server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def db_url(pg_server_url: str, migrated_template: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test (a copy of the session's template)."""
    name = "pcns_t_" + uuid.uuid4().hex[:16]
    conn = await asyncpg.connect(pg_server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    finally:
        await conn.close()
    yield database_url(pg_server_url, name)
    conn = await asyncpg.connect(pg_server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


REQUIRED_TOOLS = ("htpasswd", "prometheus", "promtool")


def pytest_configure(config: pytest.Config) -> None:
    """In CI (``PCNS_REQUIRE_TOOLS=1``) a missing real tool is an error, never a quiet skip."""
    if os.environ.get("PCNS_REQUIRE_TOOLS") == "1":
        missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
        if missing:
            raise pytest.UsageError(f"PCNS_REQUIRE_TOOLS=1 but not installed: {missing}")
