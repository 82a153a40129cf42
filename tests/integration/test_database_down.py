"""A database outage: the receiver answers 503 with Retry-After and acknowledges nothing; once
PostgreSQL is back, the same requests are accepted and delivered."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from pcns.app import running_service
from tests.integration.conftest import needs_htpasswd
from tests.support import (
    Client,
    PgProxy,
    ServiceFiles,
    fetch_all,
    htpasswd_verifies,
    wait_terminal,
)


@needs_htpasswd
async def test_database_down_gives_503_and_acknowledges_nothing(
    tmp_path: Path, db_url: str
) -> None:
    """While PostgreSQL is unreachable every change gets 503 + Retry-After and none is stored;
    the resend after recovery (same webhook-id) is accepted once and delivered."""
    async with PgProxy(db_url) as proxy:
        files = ServiceFiles(tmp_path / "svc", proxy.url)
        async with running_service(files.settings()), aiohttp.ClientSession() as session:
            client = Client(files, session)
            proxy.cut()
            body = json.dumps({"user": "alice", "password": "During-Outage-1"}).encode()
            headers = client.signed_headers(body, webhook_id="msg_outage")
            for _ in range(3):
                status, problem, _ = await client.post_raw(body, headers)
                assert status == 503
                assert problem["type"] == "urn:pcns:problem:database-unavailable"
            async with session.post(
                files.url + "/v1/password-changes", data=body, headers=headers
            ) as resp:
                assert resp.headers["Retry-After"] == "5"
            async with session.get(files.url + "/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["checks"]["database"] == "unavailable"
            rows = await fetch_all(db_url, "SELECT count(*) AS n FROM pcns_changes")
            assert rows[0]["n"] == 0

            proxy.restore()
            status, accepted, _ = await client.post_raw(body, headers)
            assert status == 202
            assert await wait_terminal(client, accepted["id"]) == {"wiki": "delivered"}
            again = await client.post_raw(body, headers)
            assert again[1] == accepted
    rows = await fetch_all(db_url, "SELECT count(*) AS n FROM pcns_changes")
    assert rows[0]["n"] == 1
    assert htpasswd_verifies(files.root / "wiki.htpasswd", "alice", "During-Outage-1")


async def test_burst_during_outage_is_answered_503_in_full(tmp_path: Path, db_url: str) -> None:
    """Concurrent changes queued behind a group that met the outage all get 503, none is
    stored, and the service accepts again once PostgreSQL is back."""
    async with PgProxy(db_url) as proxy:
        files = ServiceFiles(tmp_path / "svc", proxy.url)
        async with running_service(files.settings()), aiohttp.ClientSession() as session:
            client = Client(files, session)
            proxy.cut()

            async def post(i: int) -> int:
                body = json.dumps({"user": f"burst{i}", "password": f"Burst-Pass-{i}"}).encode()
                status, _, _ = await client.post_raw(body, client.signed_headers(body))
                return status

            statuses = await asyncio.gather(*(post(i) for i in range(24)))
            assert statuses == [503] * 24
            rows = await fetch_all(db_url, "SELECT count(*) AS n FROM pcns_changes")
            assert rows[0]["n"] == 0
            proxy.restore()
            assert await post(99) == 202
