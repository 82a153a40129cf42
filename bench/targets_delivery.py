"""Part (i) of ``python -m bench.targets``: deliveries/s draining N queued changes to an argon2id
``sql`` target (a real PostgreSQL ``users`` table in a scratch database, ``UPDATE users SET pw
= :hash WHERE login = :account``) with the service's default delivery settings (role
``worker``), against N argon2id hashes computed alone with the same parallelism:
``delivery.workers`` (8) coroutines, each awaiting ``targets.hashing.hash_password_async`` on
the same event loop and so the same hashing pool (all cores but one, at nice 19). A single
thread's rate is shown too.

Also the target both parts use (:func:`sql_target`, :func:`users_database`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench.delivery import Drain, pcns_drain
from bench.harness.backlog import backlog_template
from bench.harness.cpu import CpuWindow
from bench.harness.databases import Databases
from bench.harness.loadgen import PASSWORD
from bench.harness.report import (
    PartResult,
    Row,
    cpu_line,
    median_background,
    median_rate,
    median_ratio,
)
from bench.harness.service import ServiceFiles, free_port, settings_of
from targets.hashing import hashing_threads

WORKERS = 8  # DeliverySettings().workers, the default the service runs with
TARGET = "app"
QUERY = "UPDATE users SET pw = :hash WHERE login = :account"


def sql_target(app_url: str) -> dict[str, Any]:
    return {"name": TARGET, "type": "sql", "dsn": app_url, "query": QUERY, "hash": "argon2id"}


async def users_database(dbs: Databases, accounts: int) -> str:
    """The application's own database: a ``users`` table with ``mem-0 .. mem-<accounts-1>``,
    the accounts ``queue_backlog`` queues changes for."""
    url = await dbs.create("app")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE users (login text PRIMARY KEY, pw text)")
        await conn.execute(
            "INSERT INTO users SELECT 'mem-' || g, NULL FROM generate_series(0, $1 - 1) g",
            accounts,
        )
        await conn.execute("VACUUM ANALYZE users")
    finally:
        await conn.close()
    return url


async def hashes_alone(n: int, concurrency: int, *, own_thread: bool = False) -> Drain:
    """``n`` argon2id hashes of the benchmark's passwords, ``concurrency`` at a time, each through
    ``hash_password_async`` (the service's hashing pool), or, with
    ``own_thread``, all on a single thread: one core's rate."""
    from concurrent.futures import ThreadPoolExecutor

    from targets.base import Password
    from targets.hashing import hash_password, hash_password_async

    passwords = iter(range(n))
    single = ThreadPoolExecutor(max_workers=1) if own_thread else None
    loop = asyncio.get_running_loop()

    async def hasher() -> None:
        for i in passwords:
            password = Password(f"{PASSWORD}{i}")
            if single is None:
                await hash_password_async("argon2id", password)
            else:
                await loop.run_in_executor(single, hash_password, "argon2id", password)

    window = CpuWindow()
    window.begin()
    started = time.perf_counter()
    await asyncio.gather(*(hasher() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    window.end()
    if single is not None:
        single.shutdown()
    return Drain(n / elapsed, window.used)


async def check_target_hashes(app_url: str, n: int) -> None:
    """Every account got a hash, and the first one verifies with the library's own check."""
    from targets.base import Password
    from targets.hashing import verify_password

    conn = await asyncpg.connect(app_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM users WHERE pw LIKE '$argon2id$%'")
        first = await conn.fetchval("SELECT pw FROM users WHERE login = 'mem-0'")
    finally:
        await conn.close()
    ok = first is not None and verify_password("argon2id", Password(f"{PASSWORD}0"), first)
    if stored != n or not ok:
        print(
            f"  (i) WARNING: {stored} argon2id hashes stored, mem-0 verifies: {ok}", file=sys.stderr
        )


@dataclass
class HashingResult:
    deliveries: list[Drain] = field(default_factory=list)
    alone: list[Drain] = field(default_factory=list)
    one_thread: list[Drain] = field(default_factory=list)


async def bench_hashing_target(
    dbs: Databases, files: ServiceFiles, *, n: int, rounds: int
) -> HashingResult:
    from targets.base import load_target_types

    load_target_types()  # adapter modules imported once, as in a running worker
    template = await backlog_template(
        dbs, files, n, label="hash_template", target=TARGET, due="now"
    )
    out = HashingResult()
    for r in range(rounds):
        app_url = await users_database(dbs, n)
        url = await dbs.create("deliver", template=template)
        settings = settings_of(files.document(url, free_port(), targets=[sql_target(app_url)]))
        out.deliveries.append(await pcns_drain(dbs, url, settings, n, target=TARGET, part="(i)"))
        await check_target_hashes(app_url, n)
        await dbs.drop(url)
        await dbs.drop(app_url)
        await dbs.quiesce(dbs.server_url, analyze=False)
        out.alone.append(await hashes_alone(n, WORKERS))
        out.one_thread.append(await hashes_alone(max(1, n // 4), 1, own_thread=True))
        print(
            f"  (i) round {r + 1}/{rounds}: {out.deliveries[-1].rate:.1f} deliveries/s, "
            f"{out.alone[-1].rate:.1f} hashes/s alone ({WORKERS} in flight), "
            f"{out.one_thread[-1].rate:.1f} hashes/s on one thread",
            file=sys.stderr,
            flush=True,
        )
    return out


def hashing_rows(i: HashingResult, n: int) -> PartResult:
    paired = [d.rate / a.rate for d, a in zip(i.deliveries, i.alone, strict=True)]
    out: list[Row] = [
        (
            "(i)",
            f"deliveries/s, argon2id sql target, {n} changes, delivery defaults",
            median_rate([d.rate for d in i.deliveries], "deliveries"),
        ),
        (
            "(i)",
            f"argon2id hashes/s alone, {WORKERS} in flight, pool of {hashing_threads()} threads",
            median_rate([a.rate for a in i.alone], "hashes"),
        ),
        (
            "(i)",
            "  info: argon2id hashes/s on a single thread (one core)",
            median_rate([a.rate for a in i.one_thread], "hashes"),
        ),
        ("(i)", "deliveries/s / hashes/s alone, per round", median_ratio(paired, ">= 0.8x")),
    ]
    kinds = ("server", "postgres")
    every = [d.cpu for d in i.deliveries + i.alone + i.one_thread]
    notes = [
        "(i) CPU ms per delivery or hash (this process, its hashing threads included; postgres):",
        cpu_line("deliveries", [d.cpu for d in i.deliveries], n * 1000, kinds),
        cpu_line("hash alone", [a.cpu for a in i.alone], n * 1000, kinds),
        cpu_line("one thread", [a.cpu for a in i.one_thread], max(1, n // 4) * 1000, kinds),
        f"    other processes on the machine meanwhile: {median_background(every)} cores (median)",
    ]
    return out, notes
