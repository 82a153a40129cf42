"""Worker heartbeats: a dead worker's deliveries come back within worker_timeout, a live
worker's long attempt is never taken from it, and a worker cut off from its database stops its
attempts before anyone else may take them over."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

import aiohttp
import asyncpg

from pcns.app import running_service
from tests.integration.test_protection import App, app, http_target
from tests.support import Client, PgProxy, ServiceFiles, eventually, fetch_all, wait_terminal

__all__ = ["app"]  # the fixture, imported for these tests

BEATS = {
    "heartbeat_interval": "300ms",
    "worker_timeout": "1500ms",
    "attempt_timeout": "8s",
    "lease": "60s",  # far longer than any test: only heartbeats can explain a takeover
    "backoff_initial": "200ms",
}


async def delivery(db_url: str, change_id: str) -> asyncpg.Record:
    rows = await fetch_all(
        db_url,
        "SELECT state, attempts, worker_id, last_error FROM pcns_deliveries WHERE change_id = $1",
        uuid.UUID(change_id),
    )
    assert len(rows) == 1
    return rows[0]


async def workers(db_url: str) -> list[asyncpg.Record]:
    return await fetch_all(db_url, "SELECT id, host, pid FROM pcns_workers")


async def test_a_dead_workers_delivery_is_taken_over_by_heartbeat(
    tmp_path: Path, db_url: str, app: App
) -> None:
    """A delivery in flight for a worker whose heartbeat stopped (leased for an hour) goes back
    to the queue once worker_timeout passes, is delivered by a live worker, and the dead
    worker's row is gone."""
    files = ServiceFiles(tmp_path / "svc", db_url, targets=[http_target(app)], delivery=BEATS)
    async with running_service(files.settings()) as svc, aiohttp.ClientSession() as session:
        client = Client(files, session)
        await svc.queue.hold_target("hr", actor="test", until=None, reason="set up a dead worker")
        status, body = await client.send("alice", "Taken-Over-1")
        assert status == 202
        dead = uuid.uuid4()
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute(
                "INSERT INTO pcns_workers (id, host, pid, process_started, version, heartbeat_at)"
                " VALUES ($1, 'elsewhere', 4242, 0, 'test', now() - interval '1 hour')",
                dead,
            )
            await conn.execute(
                "UPDATE pcns_deliveries SET state = 'in_flight', attempts = 1, worker_id = $1,"
                " lease_token = gen_random_uuid(), lease_until = now() + interval '1 hour'",
                dead,
            )
        finally:
            await conn.close()
        await svc.queue.release_target("hr", actor="test")
        assert await wait_terminal(client, body["id"], timeout=15) == {"hr": "delivered"}
        row = await delivery(db_url, body["id"])
        assert row["attempts"] == 2
        assert row["worker_id"] is None
        assert app.stored == {"alice": "Taken-Over-1"}
        assert dead not in {w["id"] for w in await workers(db_url)}


async def test_a_live_workers_long_attempt_is_never_taken(
    tmp_path: Path, db_url: str, app: App
) -> None:
    """An attempt lasting twice worker_timeout, with a second worker's reaper running all the
    while, is delivered once, by the worker that started it."""
    app.delay = 3.0
    files = ServiceFiles(tmp_path / "svc", db_url, targets=[http_target(app)], delivery=BEATS)
    (tmp_path / "other").mkdir()
    shutil.copy(files.keyring, tmp_path / "other" / "keyring.json")  # one keyring, two workers
    other = ServiceFiles(tmp_path / "other", db_url, targets=[http_target(app)], delivery=BEATS)
    async with running_service(files.settings()), aiohttp.ClientSession() as session:
        client = Client(files, session)
        status, body = await client.send("bob", "Long-Attempt-1")
        assert status == 202

        async def in_flight() -> bool:
            return (await delivery(db_url, body["id"]))["state"] == "in_flight"

        await eventually(in_flight, timeout=10)
        async with running_service(other.settings(), role="worker"):
            assert len(await workers(db_url)) == 2
            assert await wait_terminal(client, body["id"], timeout=15) == {"hr": "delivered"}
        row = await delivery(db_url, body["id"])
        assert row["attempts"] == 1
        assert row["last_error"] is None
        assert app.calls == 1


async def test_a_clean_stop_retires_the_worker(tmp_path: Path, db_url: str, app: App) -> None:
    """A worker registers at start (this host, this pid) and its row goes at a clean stop."""
    files = ServiceFiles(tmp_path / "svc", db_url, targets=[http_target(app)], delivery=BEATS)
    async with running_service(files.settings()):
        rows = await eventually(lambda: workers(db_url), timeout=10)
        assert len(rows) == 1
        assert rows[0]["pid"] == os.getpid()
    assert await workers(db_url) == []


async def test_a_worker_cut_off_from_its_database_fences_itself(
    tmp_path: Path, db_url: str, app: App
) -> None:
    """A worker that cannot heartbeat for longer than worker_timeout abandons its attempt and
    registers again; the delivery is attempted anew and delivered, none is recorded twice."""
    app.delay = 4.0
    async with PgProxy(db_url) as proxy:
        files = ServiceFiles(
            tmp_path / "svc", proxy.url, targets=[http_target(app)], delivery=BEATS
        )
        async with running_service(files.settings()), aiohttp.ClientSession() as session:
            client = Client(files, session)
            status, body = await client.send("carol", "Fenced-Then-Delivered-1")
            assert status == 202

            async def started() -> bool:
                return app.active == 1

            await eventually(started, timeout=10)
            first = (await workers(db_url))[0]["id"]
            proxy.cut()
            await asyncio.sleep(2.5)  # past worker_timeout: the attempt must have been stopped
            proxy.restore()
            assert await wait_terminal(client, body["id"], timeout=20) == {"hr": "delivered"}
            row = await delivery(db_url, body["id"])
            assert row["attempts"] == 2  # the fenced attempt counts; its outcome was never written
            assert app.calls == 2
            assert [w["id"] for w in await workers(db_url)] != [first]
