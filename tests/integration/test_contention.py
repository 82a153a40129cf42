"""CPU contention in pcns is pcns's: attempts that queue for the hashing pool neither time out
nor count against a healthy target, and a worker claims only what the pool can start."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp

from pcns.app import running_service
from targets.hashing import hashing_threads
from tests.integration.conftest import needs_htpasswd
from tests.support import (
    Client,
    ServiceFiles,
    fetch_all,
    htpasswd_target,
    htpasswd_verifies,
    wait_terminal,
)

# bcrypt at cost 12 takes a few hundred milliseconds here: a dozen of them queue for seconds in
# the hashing pool, several times the attempt timeout.
CHANGES = 12


@needs_htpasswd
async def test_waiting_for_the_hashing_pool_is_not_the_targets_time(
    tmp_path: Path, db_url: str
) -> None:
    """Twelve changes to an htpasswd target hashing with bcrypt cost 12, attempt_timeout 1 s
    and a breaker that opens at the first failure: each is delivered at its first attempt, the
    breaker never opens, and the worker never holds more attempts than the pool can start."""
    path = tmp_path / "wiki.htpasswd"
    target = htpasswd_target("wiki", path, bcrypt_cost=12, breaker_threshold=1)
    files = ServiceFiles(
        tmp_path / "svc",
        db_url,
        targets=[target],
        delivery={"workers": 16, "attempt_timeout": "1s", "lease": "10s"},
    )
    async with running_service(files.settings()) as svc, aiohttp.ClientSession() as session:
        client = Client(files, session)
        # The first delivery teaches the worker that this target hashes.
        status, first = await client.send("warmup", "Warm-Up-Pass-1")
        assert status == 202
        assert await wait_terminal(client, first["id"]) == {"wiki": "delivered"}

        sent = await asyncio.gather(
            *(client.send(f"user{i}", f"Contended-Pass-{i}") for i in range(CHANGES))
        )
        assert all(status == 202 for status, _ in sent)
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                rows = await fetch_all(
                    db_url, "SELECT count(*) AS n FROM pcns_deliveries WHERE state = 'in_flight'"
                )
                peak = max(peak, rows[0]["n"])
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        try:
            for _, body in sent:
                assert await wait_terminal(client, body["id"], timeout=60) == {"wiki": "delivered"}
        finally:
            watcher.cancel()
        rows = await fetch_all(
            db_url,
            "SELECT attempts, last_error FROM pcns_deliveries WHERE change_id = ANY($1::uuid[])",
            [uuid.UUID(body["id"]) for _, body in sent],
        )
        assert [(r["attempts"], r["last_error"]) for r in rows] == [(1, None)] * CHANGES
        breaker = svc.metrics.registry.get_sample_value(
            "pcns_target_breaker_open", {"target": "wiki"}
        )
        assert not breaker
        assert 1 <= peak <= 2 * hashing_threads()
    for i in (0, CHANGES - 1):
        assert htpasswd_verifies(path, f"user{i}", f"Contended-Pass-{i}")
