"""Part (x) of ``python -m bench.contention``: the scenario that once collapsed.

One receiver and two worker processes (``delivery.workers = 16`` each) on one queue, three
targets with their production hashing: htpasswd (bcrypt cost 12), ``sql`` on PostgreSQL
(argon2id) and ``sql`` on MariaDB (bcrypt). ``changes`` changes are sent by 8 closed-loop
senders; the clock runs from the first request until every delivery has ended. The baseline is
the same hashes made alone in two processes, each with its own hashing pool, 16 at a time: what
the two workers' pools can do with nothing else to do.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench.harness.databases import Databases, fetch_count, wait_until
from bench.harness.fleet import Fleet
from bench.harness.hash_alone import hashed_in_processes
from bench.harness.loadgen import run_loadgen
from bench.harness.report import PartResult, Row, median_ratio
from bench.harness.service import ServiceFiles
from bench.harness.soak_targets import HtpasswdFile, MariadbTable, PostgresTable

WORKER_PROCESSES = 2
SLOTS = 16  # delivery.workers, as deploy/production.toml suggests
SENDERS = 8
BCRYPT_COST = 12  # the htpasswd adapter's default
ENDED = "SELECT count(*) FROM pcns_deliveries WHERE state NOT IN ('pending', 'in_flight')"
_OUTCOMES = """
SELECT count(*) FILTER (WHERE state = 'delivered') AS delivered,
       count(*) FILTER (WHERE state = 'delivered' AND attempts = 1) AS first_attempt,
       max(attempts) AS most_attempts
FROM pcns_deliveries
"""


@dataclass(frozen=True)
class ScenarioResult:
    delivery_s: float
    hashing_s: float
    delivered: int
    first_attempt: int
    most_attempts: int
    deferred_lines: int
    timeouts: int


def _count_in_logs(fleet: Fleet, text: str) -> int:
    return sum(p.read_text(errors="replace").count(text) for p in fleet.logs() if p.exists())


async def bench_scenario(
    dbs: Databases, files: ServiceFiles, *, changes: int, mysql_url: str
) -> ScenarioResult:
    queue_url, app_url = await dbs.create("scenario"), await dbs.create("scenario_app")
    root = files.root / f"scenario-{len(dbs.names)}"
    root.mkdir()
    accounts = [f"col-{i}" for i in range(changes)]
    wiki = HtpasswdFile("wiki", root / "wiki.htpasswd", bcrypt_cost=BCRYPT_COST)
    app = PostgresTable("app", app_url, scheme="argon2id")
    maria = MariadbTable("mariadb", mysql_url, scheme="bcrypt")
    await app.create(accounts)
    await maria.create(accounts)
    doc = files.document(
        queue_url,
        0,
        delivery={"workers": SLOTS},
        targets=[wiki.document(), app.document(), maria.document()],
    )
    fleet = Fleet(root, doc, 1, WORKER_PROCESSES)
    spec = {
        "url": fleet.receiver_urls[0],
        "secret_file": str(files.secret_file),
        "senders": SENDERS,
        "count": changes,
        "mode": "closed",
        "prefix": "col-",
        "warmup": 0,
    }
    began = 0.0

    async def go() -> None:
        nonlocal began
        began = time.perf_counter()

    try:
        await fleet.start()
        await run_loadgen(spec, go)

        async def ended() -> bool:
            return await fetch_count(queue_url, ENDED) >= 3 * changes

        await wait_until(ended, timeout=1800, interval=0.2)
        delivery_s = time.perf_counter() - began
    finally:
        await fleet.stop()
    conn = await asyncpg.connect(queue_url)
    try:
        row = await conn.fetchrow(_OUTCOMES)
    finally:
        await conn.close()
    assert row is not None
    await maria.close()
    await dbs.drop(queue_url)
    await dbs.drop(app_url)
    jobs: list[list[Any]] = [
        ["bcrypt", BCRYPT_COST, changes],
        ["argon2id", None, changes],
        ["bcrypt", None, changes],
    ]
    hashing_s = await hashed_in_processes(jobs, WORKER_PROCESSES, SLOTS)
    result = ScenarioResult(
        delivery_s=delivery_s,
        hashing_s=hashing_s,
        delivered=row["delivered"],
        first_attempt=row["first_attempt"],
        most_attempts=row["most_attempts"] or 0,
        deferred_lines=_count_in_logs(fleet, '"outcome": "pending"'),
        timeouts=_count_in_logs(fleet, "attempt timed out"),
    )
    print(
        f"  (x) {result.delivered}/{3 * changes} delivered in {delivery_s:.1f}s "
        f"({result.first_attempt} at attempt 1); the hashes alone {hashing_s:.1f}s",
        file=sys.stderr,
        flush=True,
    )
    return result


def scenario_rows(results: list[ScenarioResult], changes: int) -> PartResult:
    n = 3 * changes
    rows: list[Row] = [
        (
            "(x)",
            f"{changes} changes x 3 hashing targets, {SENDERS} senders, "
            f"{WORKER_PROCESSES} workers x {SLOTS}: until all ended",
            f"{statistics.median(r.delivery_s for r in results):8.1f} s",
        ),
        (
            "(x)",
            f"the same {n} hashes alone, {WORKER_PROCESSES} processes' pools",
            f"{statistics.median(r.hashing_s for r in results):8.1f} s",
        ),
        (
            "(x)",
            "delivered / at attempt 1 / most attempts of one delivery",
            f"{min(r.delivered for r in results):8d} / {min(r.first_attempt for r in results)}"
            f" / {max(r.most_attempts for r in results)} (of {n})",
        ),
        (
            "(x)",
            "time to deliver / time to hash alone, per round",
            median_ratio([r.delivery_s / r.hashing_s for r in results], "<= 1.2x"),
        ),
    ]
    notes = [
        "(x) attempts timed out: "
        f"{[r.timeouts for r in results]}; per-attempt 'pending' log lines: "
        f"{[r.deferred_lines for r in results]}"
    ]
    return rows, notes
