"""Delivery against a real application database (the ``sql`` target on PostgreSQL), reached
through a proxy the test can cut: retries, permanent failures, give-up, expiry, supersede and
integrity, each observed in the queue and at the target."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from pcns.app import running_service
from targets.base import Password
from targets.hashing import verify_password
from tests.support import Client, PgProxy, ServiceFiles, eventually, fetch_all, wait_terminal

APP_SCHEMA = """
CREATE TABLE app_users (login text PRIMARY KEY, pw_hash text);
CREATE TABLE app_history (n bigserial PRIMARY KEY, login text, pw_hash text);
CREATE FUNCTION app_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO app_history (login, pw_hash) VALUES (NEW.login, NEW.pw_hash); RETURN NEW; END $$;
CREATE TRIGGER app_log AFTER UPDATE ON app_users FOR EACH ROW EXECUTE FUNCTION app_log();
INSERT INTO app_users (login) VALUES ('alice'), ('bob'), ('carol');
"""
SCHEME = "pbkdf2_sha256"


@dataclass
class App:
    """The target application's database and the proxy in front of it."""

    url: str
    proxy: PgProxy

    async def stored_hash(self, login: str) -> str | None:
        rows = await fetch_all(self.url, "SELECT pw_hash FROM app_users WHERE login = $1", login)
        value: str | None = rows[0]["pw_hash"]
        return value

    async def history(self, login: str) -> list[str]:
        rows = await fetch_all(
            self.url, "SELECT pw_hash FROM app_history WHERE login = $1 ORDER BY n", login
        )
        return [r["pw_hash"] for r in rows]


@pytest.fixture
async def app(empty_database_url: str) -> AsyncIterator[App]:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(APP_SCHEMA)
    finally:
        await conn.close()
    async with PgProxy(empty_database_url) as proxy:
        yield App(empty_database_url, proxy)


def sql_target(app: App) -> dict[str, Any]:
    return {
        "name": "erp",
        "type": "sql",
        "dsn": app.proxy.url,
        "query": "UPDATE app_users SET pw_hash = :hash WHERE login = :account",
        "hash": SCHEME,
        "timeout": 2.0,
        "breaker_threshold": 1000,  # these tests watch retries; the breaker has its own tests
    }


@asynccontextmanager
async def service_with(
    tmp_path: Path, db_url: str, app: App, **delivery: Any
) -> AsyncIterator[tuple[ServiceFiles, Client]]:
    files = ServiceFiles(
        tmp_path / "svc",
        db_url,
        targets=[sql_target(app)],
        delivery={"backoff_initial": "100ms", "backoff_max": "300ms", **delivery},
    )
    async with running_service(files.settings()), aiohttp.ClientSession() as session:
        yield files, Client(files, session)


async def delivery_row(files: ServiceFiles, change_id: str) -> asyncpg.Record:
    rows = await fetch_all(
        files.db_url, "SELECT * FROM pcns_deliveries WHERE change_id = $1", uuid.UUID(change_id)
    )
    assert len(rows) == 1
    return rows[0]


def verifies(hashed: str | None, password: str) -> bool:
    return hashed is not None and verify_password(SCHEME, Password(password), hashed)


async def test_transient_failures_retry_until_the_target_is_back(
    tmp_path: Path, db_url: str, app: App
) -> None:
    """While the application database is down the delivery retries; once back, it lands."""
    app.proxy.cut()
    async with service_with(tmp_path, db_url, app, max_attempts=100) as (files, client):
        _, body = await client.send("alice", "Retry-Me-1")

        async def retried() -> bool:
            row = await delivery_row(files, body["id"])
            return row["attempts"] >= 3 and row["state"] in ("pending", "in_flight")

        await eventually(retried)
        app.proxy.restore()
        assert await wait_terminal(client, body["id"]) == {"erp": "delivered"}
        row = await delivery_row(files, body["id"])
    assert row["ciphertext"] is None
    assert row["nonce"] is None
    assert verifies(await app.stored_hash("alice"), "Retry-Me-1")


async def test_permanent_error_parks_at_once(tmp_path: Path, db_url: str, app: App) -> None:
    """An account the application does not have is parked on the first attempt, with the
    reason, its ciphertext kept for an operator's retry."""
    async with service_with(tmp_path, db_url, app) as (files, client):
        _, body = await client.send("mallory", "Whatever-1")
        assert await wait_terminal(client, body["id"]) == {"erp": "parked"}
        row = await delivery_row(files, body["id"])
        status = await client.status(body["id"])
    assert row["attempts"] == 1
    assert "account not found" in row["last_error"]
    assert status["deliveries"][0]["last_error"] == row["last_error"]
    assert row["ciphertext"] is not None
    assert row["finished_at"] is None


async def test_max_attempts_then_parked(tmp_path: Path, db_url: str, app: App) -> None:
    """A target that stays down gets exactly max_attempts attempts, then the delivery is parked
    (not attempted again, its ciphertext kept for an operator's retry)."""
    app.proxy.cut()
    async with service_with(tmp_path, db_url, app, max_attempts=3) as (files, client):
        _, body = await client.send("alice", "Never-1")
        assert await wait_terminal(client, body["id"]) == {"erp": "parked"}
        row = await delivery_row(files, body["id"])
    assert row["attempts"] == 3
    assert "gave up after 3 attempts" in row["last_error"]
    assert row["ciphertext"] is not None
    assert await app.stored_hash("alice") is None


async def test_older_than_max_age_expires(tmp_path: Path, db_url: str, app: App) -> None:
    """A change still undelivered at max_age is expired and its ciphertext destroyed."""
    app.proxy.cut()
    async with service_with(tmp_path, db_url, app, max_age="1s", max_attempts=1000) as (
        files,
        client,
    ):
        _, body = await client.send("alice", "Too-Late-1")
        assert await wait_terminal(client, body["id"]) == {"erp": "expired"}
        row = await delivery_row(files, body["id"])
    assert row["ciphertext"] is None
    app.proxy.restore()
    assert await app.stored_hash("alice") is None


async def test_newer_change_supersedes_older_ones(tmp_path: Path, db_url: str, app: App) -> None:
    """Of three queued changes for one account, only the newest is written; the others, one of
    them arriving last with an older change time, are superseded."""
    app.proxy.cut()
    now = datetime.now(UTC)
    async with service_with(tmp_path, db_url, app, max_attempts=100) as (files, client):
        _, a = await client.send(
            "bob", "Old-1", changed_at=(now - timedelta(minutes=2)).isoformat()
        )
        _, b = await client.send("bob", "New-1", changed_at=now.isoformat())
        _, c = await client.send(
            "bob", "Oldest-1", changed_at=(now - timedelta(minutes=5)).isoformat()
        )
        await asyncio.sleep(0.5)
        app.proxy.restore()
        states = {
            name: await wait_terminal(client, ch["id"])
            for name, ch in (("a", a), ("b", b), ("c", c))
        }
        rows = [await delivery_row(files, ch["id"]) for ch in (a, b, c)]
    assert states == {
        "a": {"erp": "superseded"},
        "b": {"erp": "delivered"},
        "c": {"erp": "superseded"},
    }
    assert all(r["ciphertext"] is None for r in rows)
    history = await app.history("bob")
    assert len(history) == 1
    assert verifies(history[0], "New-1")


async def test_racing_changes_never_write_an_older_password_last(
    tmp_path: Path, db_url: str, app: App
) -> None:
    """Many changes for one account sent at once in shuffled order: the application's write
    history only ever moves forward, and the final password is the newest."""
    now = datetime.now(UTC)
    passwords = [f"Race-{i:02d}" for i in range(16)]
    sends = list(enumerate(passwords))
    random.Random(3).shuffle(sends)
    async with service_with(tmp_path, db_url, app, workers=8) as (_, client):
        results = await asyncio.gather(
            *(
                client.send("carol", pw, changed_at=(now - timedelta(seconds=60 - i)).isoformat())
                for i, pw in sends
            )
        )
        for _, body in results:
            await wait_terminal(client, body["id"])
    history = await app.history("carol")
    assert history, "nothing was written"
    assert verifies(history[-1], passwords[-1])
    position = 0
    for written in history:  # each write is a password at or after the previous one
        while not verifies(written, passwords[position]):
            position += 1
            assert position < len(passwords), "an older password was written after a newer one"


async def test_ciphertext_moved_to_another_row_fails_integrity(
    tmp_path: Path, db_url: str, app: App
) -> None:
    """A ciphertext copied onto another delivery's row never decrypts there: that delivery
    fails with reason integrity and the target is not touched."""
    app.proxy.cut()
    async with service_with(
        tmp_path, db_url, app, max_attempts=100, backoff_initial="1s", backoff_max="1s"
    ) as (files, client):
        _, alice = await client.send("alice", "Alice-Pw-1")
        _, bob = await client.send("bob", "Bob-Pw-1")

        async def moved() -> bool:
            result: str = await fetch_all(
                files.db_url,
                "UPDATE pcns_deliveries d SET ciphertext = s.ciphertext, nonce = s.nonce,"
                " key_id = s.key_id FROM pcns_deliveries s"
                " WHERE s.change_id = $1 AND d.change_id = $2"
                " AND d.state = 'pending' AND s.state = 'pending' AND s.attempts > 0"
                " RETURNING d.id",
                uuid.UUID(alice["id"]),
                uuid.UUID(bob["id"]),
            )
            return bool(result)

        await eventually(moved)
        app.proxy.restore()
        assert await wait_terminal(client, alice["id"]) == {"erp": "delivered"}
        assert await wait_terminal(client, bob["id"]) == {"erp": "failed"}
        row = await delivery_row(files, bob["id"])
    assert row["last_error"].startswith("integrity")
    assert row["ciphertext"] is None
    assert await app.history("bob") == []
    assert verifies(await app.stored_hash("alice"), "Alice-Pw-1")


async def test_schema_refuses_ciphertext_on_terminal_rows(db_url: str) -> None:
    """The database itself rejects a terminal delivery that still holds a ciphertext."""
    conn = await asyncpg.connect(db_url)
    try:
        change = uuid.uuid4()
        await conn.execute(
            "INSERT INTO pcns_changes (id, source, webhook_id, user_name, response)"
            " VALUES ($1, 'dc01', 'w1', 'alice', '{}')",
            change,
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO pcns_deliveries (id, change_id, target, account, order_at, state,"
                " ciphertext, nonce) VALUES ($1, $2, 'wiki', 'alice', now(), 'delivered',"
                " '\\x00', '\\x00')",
                uuid.uuid4(),
                change,
            )
    finally:
        await conn.close()
