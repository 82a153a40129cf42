"""Part (i) of ``python -m bench.keys``: ``pcns keys rewrap`` rows/s against a plain batched
UPDATE of the same rows, each on its own copy of one backlog database.

``pcns.keys.admin.rewrap`` (what the CLI runs, batch 1000) re-seals N queued ciphertexts sealed
under the first data key, after ``rotate``. The baseline takes batches of the same size, per
transaction ``SELECT id ... FOR UPDATE SKIP LOCKED LIMIT 1000`` (the rewrap's own WHERE clause
and index), then ``UPDATE ... SET key_id = <new>, ciphertext = ciphertext || ''`` on those ids.
Shown for information: pcns's own two statements (fetch the rows, write back through
``unnest``) with the same bytes written back, i.e. the rewrap minus the crypto.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.harness.cpu import CpuWindow
from bench.harness.databases import Databases, fetch_count
from bench.harness.report import (
    PartResult,
    Row,
    cpu_line,
    median_background,
    median_rate,
    median_ratio,
)
from bench.harness.service import ServiceFiles

if TYPE_CHECKING:
    from pcns.database import Database

BATCH = 1000  # `pcns keys rewrap --batch` default
ACTOR = "bench"
UNDER_OLD_KEYS = (
    "SELECT count(*) FROM pcns_deliveries WHERE ciphertext IS NOT NULL "
    "AND key_id <> (SELECT id FROM pcns_data_keys WHERE state = 'primary')"
)

# The plain baseline: the rewrap's own candidate query (same WHERE, same partial index), then
# one UPDATE rewriting the same rows and changing the indexed key_id as the rewrap does.
_PLAIN_LOCK = """
SELECT id FROM pcns_deliveries
WHERE ciphertext IS NOT NULL AND key_id = ANY($1::text[])
LIMIT $2
FOR UPDATE SKIP LOCKED
"""
_PLAIN_UPDATE = """
UPDATE pcns_deliveries SET key_id = $2, ciphertext = ciphertext || ''::bytea
WHERE id = ANY($1::uuid[])
"""


async def rotated(url: str, files: ServiceFiles, *, propagation: float) -> tuple[str, str]:
    """``rotate`` as ``pcns keys rotate`` does it; returns (old primary, new primary)."""
    from pcns.database import create_pool
    from pcns.keys import admin
    from pcns.queue.key_store import KeyStore
    from vault import FileKek

    kek = FileKek(files.keyring)
    async with create_pool(url, size=2) as db:
        store = KeyStore(db)
        old = (await admin.load_keyring(store, kek)).primary_id
        new = await admin.rotate(store, kek, actor=ACTOR, propagation=propagation)
    assert old is not None
    return old, new


@dataclass
class Rewrite:
    rate: float
    cpu: dict[str, float | None]


async def _timed(
    dbs: Databases, url: str, rows: int, work: Callable[[Database], Awaitable[None]]
) -> Rewrite:
    """Quiesce, then time ``work(db)`` and check no ciphertext is left under an old key."""
    from pcns.database import create_pool

    async with create_pool(url, size=2) as db:  # the pool `pcns keys` opens
        await dbs.quiesce(url, analyze=True)
        window = CpuWindow()
        window.begin()
        started = time.perf_counter()
        await work(db)
        elapsed = time.perf_counter() - started
        window.end()
    left = await fetch_count(url, UNDER_OLD_KEYS)
    if left:
        print(f"  (i) WARNING: {left} ciphertexts still under an old key", file=sys.stderr)
    return Rewrite(rows / elapsed, window.used)


async def time_rewrap(dbs: Databases, files: ServiceFiles, url: str, rows: int) -> Rewrite:
    from pcns.keys import admin
    from pcns.queue.key_store import KeyStore
    from vault import FileKek

    await rotated(url, files, propagation=0.0)

    async def work(db: Database) -> None:
        store = KeyStore(db)
        report = await admin.rewrap(store, FileKek(files.keyring), actor=ACTOR, batch=BATCH)
        if report.rewrapped != rows or report.remaining:
            print(f"  (i) WARNING: rewrap reported {report}", file=sys.stderr)

    return await _timed(dbs, url, rows, work)


async def time_plain_update(dbs: Databases, files: ServiceFiles, url: str, rows: int) -> Rewrite:
    old, new = await rotated(url, files, propagation=0.0)

    async def work(db: Database) -> None:
        while True:
            async with db.pool.acquire() as conn, conn.transaction():
                ids = [r["id"] for r in await conn.fetch(_PLAIN_LOCK, [old], BATCH)]
                if not ids:
                    return
                await conn.execute(_PLAIN_UPDATE, ids, new)

    return await _timed(dbs, url, rows, work)


async def time_statements_only(dbs: Databases, files: ServiceFiles, url: str, rows: int) -> Rewrite:
    """pcns's rewrap statements with the bytes written back unchanged: the rewrap minus crypto."""
    from pcns.queue import keys as sql

    old, new = await rotated(url, files, propagation=0.0)

    async def work(db: Database) -> None:
        while True:
            async with db.pool.acquire() as conn, conn.transaction():
                locked = await sql.lock_sealed_by(conn, [old], BATCH)
                if not locked:
                    return
                await sql.write_resealed(conn, [(r.id, new, r.nonce, r.ciphertext) for r in locked])

    return await _timed(dbs, url, rows, work)


@dataclass
class RewrapResult:
    rewrap: list[Rewrite] = field(default_factory=list)
    plain: list[Rewrite] = field(default_factory=list)
    statements: list[Rewrite] = field(default_factory=list)


async def bench_rewrap(
    dbs: Databases, files: ServiceFiles, template: str, *, rows: int, rounds: int
) -> RewrapResult:
    out = RewrapResult()
    for r in range(rounds):
        for runs, timer in (
            (out.rewrap, time_rewrap),
            (out.plain, time_plain_update),
            (out.statements, time_statements_only),
        ):
            url = await dbs.create("rewrite", template=template)
            runs.append(await timer(dbs, files, url, rows))
            await dbs.drop(url)
        print(
            f"  (i) round {r + 1}/{rounds}: rewrap {out.rewrap[-1].rate:.0f} rows/s, "
            f"plain UPDATE {out.plain[-1].rate:.0f} rows/s, "
            f"statements only {out.statements[-1].rate:.0f} rows/s",
            file=sys.stderr,
            flush=True,
        )
    return out


def rewrap_rows(i: RewrapResult, rows: int) -> PartResult:
    paired = [a.rate / b.rate for a, b in zip(i.rewrap, i.plain, strict=True)]
    out: list[Row] = [
        (
            "(i)",
            f"pcns keys rewrap (admin.rewrap), {rows:,} rows, batch {BATCH}",
            median_rate([x.rate for x in i.rewrap], "rows"),
        ),
        (
            "(i)",
            "plain batched UPDATE, same rows, batch and server",
            median_rate([x.rate for x in i.plain], "rows"),
        ),
        (
            "(i)",
            "  info: rewrap's statements, bytes written back unchanged",
            median_rate([x.rate for x in i.statements], "rows"),
        ),
        ("(i)", "rewrap / plain UPDATE, per round", median_ratio(paired, ">= 0.5x")),
    ]
    kinds = ("server", "postgres")
    every = [x.cpu for x in i.rewrap + i.plain + i.statements]
    notes = [
        "(i) CPU ms per 1000 rows (this process, postgres):",
        cpu_line("rewrap", [x.cpu for x in i.rewrap], rows, kinds),
        cpu_line("plain", [x.cpu for x in i.plain], rows, kinds),
        cpu_line("statements", [x.cpu for x in i.statements], rows, kinds),
        f"    other processes on the machine meanwhile: {median_background(every)} cores (median)",
    ]
    return out, notes
