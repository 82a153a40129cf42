"""Key-rotation benchmarks of pcns (issue 3), each a ratio to a baseline measured in the same run.

    .venv/bin/python bench/bench_keys.py [--quick] [--rows N] [--max-background CORES]

(i)  ``pcns keys rewrap`` rows/s: ``pcns.keys.admin.rewrap`` (what the CLI runs, batch 1000)
     over N queued ciphertexts sealed under the first data key, after ``rotate``, against a
     plain batched UPDATE of the same N rows on a copy of the same database, with the same batch
     size: per transaction ``SELECT id ... FOR UPDATE SKIP LOCKED LIMIT 1000`` (the rewrap's own
     WHERE clause and index), then ``UPDATE ... SET key_id = <new>, ciphertext = ciphertext ||
     ''`` on those ids. Shown for information: pcns's own two statements (fetch the rows, write
     back through ``unnest``) with the same bytes written back, i.e. the rewrap minus the crypto.
(ii) accepted changes/s through the signed HTTP API (role ``receiver``, the load of bench_core
     (a)) over that backlog, before a rotation, and while ``pcns keys rewrap`` runs as its own
     process against the same database.

Uses bench_core's scratch databases, service start-up, load generator, CPU accounting and table.
Nothing here asserts a timing. See docs/benchmarks.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` as a package

import argparse
import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

from bench.bench_core import (
    CpuWindow,
    Databases,
    HttpRun,
    Row,
    ServiceFiles,
    _background,
    _count,
    _cpu_line,
    _proc_cpu,
    _progress,
    _rate,
    _ratio,
    _wait_until,
    answers_warning,
    benchmark_parser,
    closed_loop_spec,
    free_port,
    in_process_service,
    queue_backlog,
    run_loadgen,
    run_parts,
    settings_of,
    to_toml,
    with_defaults,
)

BATCH = 1000  # `pcns keys rewrap --batch` default
ACTOR = "bench"
_UNDER_OLD_KEYS = (
    "SELECT count(*) FROM pcns_deliveries WHERE ciphertext IS NOT NULL "
    "AND key_id <> (SELECT id FROM pcns_data_keys WHERE state = 'primary')"
)


# --------------------------------------------------------------------------------------------
# (i) rewrap rate against a plain batched UPDATE
# --------------------------------------------------------------------------------------------

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


async def backlog_template(dbs: Databases, files: ServiceFiles, rows: int) -> str:
    """A database holding ``rows`` queued ciphertexts under the first data key; every timed run
    gets a byte-identical copy of it (``CREATE DATABASE ... TEMPLATE``)."""
    url = await dbs.create("template")
    # Not due for a day: nothing would deliver them even if a worker ran.
    await queue_backlog(url, files, rows, target="noop", due="later")
    await dbs.quiesce(url, analyze=True)
    return url


async def rotated(url: str, files: ServiceFiles, *, propagation: float) -> tuple[str, str]:
    """``rotate`` as ``pcns keys rotate`` does it; returns (old primary, new primary)."""
    from pcns.database import create_pool
    from pcns.keys import admin
    from vault import FileKek

    kek = FileKek(files.keyring)
    async with create_pool(url, size=2) as pool:
        old = (await admin.load_keyring(pool, kek)).primary_id
        new = await admin.rotate(pool, kek, actor=ACTOR, propagation=propagation)
    assert old is not None
    return old, new


@dataclass
class Rewrite:
    rate: float
    cpu: dict[str, float | None]


async def _timed(dbs: Databases, url: str, rows: int, work: Any) -> Rewrite:
    """Quiesce, then time ``work(pool)`` and check no ciphertext is left under an old key."""
    from pcns.database import create_pool

    async with create_pool(url, size=2) as pool:  # the pool `pcns keys` opens
        await dbs.quiesce(url, analyze=True)
        window = CpuWindow()
        window.begin()
        started = time.perf_counter()
        await work(pool)
        elapsed = time.perf_counter() - started
        window.end()
    left = await _count(url, _UNDER_OLD_KEYS)
    if left:
        print(f"  (i) WARNING: {left} ciphertexts still under an old key", file=sys.stderr)
    return Rewrite(rows / elapsed, window.used)


async def time_rewrap(dbs: Databases, files: ServiceFiles, url: str, rows: int) -> Rewrite:
    from pcns.keys import admin
    from vault import FileKek

    await rotated(url, files, propagation=0.0)

    async def work(pool: Any) -> None:
        report = await admin.rewrap(pool, FileKek(files.keyring), actor=ACTOR, batch=BATCH)
        if report.rewrapped != rows or report.remaining:
            print(f"  (i) WARNING: rewrap reported {report}", file=sys.stderr)

    return await _timed(dbs, url, rows, work)


async def time_plain_update(dbs: Databases, files: ServiceFiles, url: str, rows: int) -> Rewrite:
    old, new = await rotated(url, files, propagation=0.0)

    async def work(pool: Any) -> None:
        while True:
            async with pool.acquire() as conn, conn.transaction():
                ids = [r["id"] for r in await conn.fetch(_PLAIN_LOCK, [old], BATCH)]
                if not ids:
                    return
                await conn.execute(_PLAIN_UPDATE, ids, new)

    return await _timed(dbs, url, rows, work)


async def time_statements_only(dbs: Databases, files: ServiceFiles, url: str, rows: int) -> Rewrite:
    """pcns's rewrap statements with the bytes written back unchanged: the rewrap minus crypto."""
    from pcns.queue import keys as sql

    old, new = await rotated(url, files, propagation=0.0)

    async def work(pool: Any) -> None:
        while True:
            async with pool.acquire() as conn, conn.transaction():
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


# --------------------------------------------------------------------------------------------
# (ii) accept rate before and during a rewrap
# --------------------------------------------------------------------------------------------

_REWRAP_STARTED = "SELECT count(*) FROM pcns_key_audit WHERE action = 'rewrap-start'"
_SEALED_BY = "SELECT count(*) FROM pcns_deliveries WHERE ciphertext IS NOT NULL AND key_id = $1"


async def start_rewrap(url: str, config: Path) -> asyncio.subprocess.Process:
    """``pcns keys rewrap`` as its own process, as an operator runs it; returns once it has
    loaded the keys, counted its work and audited ``rewrap-start``, i.e. its batches begin."""
    command = ["-m", "pcns", "keys", "rewrap", "--config", str(config), "--actor", ACTOR]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )

    async def started() -> bool:
        return proc.returncode is not None or await _count(url, _REWRAP_STARTED) > 0

    await _wait_until(started, timeout=60, interval=0.01)
    return proc


@dataclass
class AcceptResult:
    before: list[HttpRun] = field(default_factory=list)
    during: list[HttpRun] = field(default_factory=list)
    rewrap_rate: list[float] = field(default_factory=list)  # rows/s of the whole rewrap, loaded
    in_window: list[int] = field(default_factory=list)  # rows rewrapped inside the timed window
    left_at_end: list[int] = field(default_factory=list)  # rows still under the old key then
    summaries: list[str] = field(default_factory=list)


async def accept_round(
    dbs: Databases, files: ServiceFiles, template: str, *, count: int, r: int, out: AcceptResult
) -> None:
    url = await dbs.create("accept", template=template)
    port = free_port()
    doc = files.document(url, port)
    config = files.root / "keys-accept.toml"
    config.write_text(to_toml(doc), encoding="utf-8")
    spec = closed_loop_spec(files, port, count)
    rewrap: list[tuple[asyncio.subprocess.Process, float, int, float]] = []

    async def quiesce() -> None:
        await dbs.quiesce(url, analyze=True)

    async def rewrap_under_way() -> None:
        await quiesce()
        started = time.perf_counter()
        proc = await start_rewrap(url, config)
        left = await _count(url, _SEALED_BY, old)
        rewrap.append((proc, started, left, _proc_cpu(proc.pid)))

    async with in_process_service(settings_of(doc), "receiver"):
        out.before.append(await run_loadgen({**spec, "prefix": f"kb{r}-"}, quiesce))
        # The CLI's default propagation is refresh_interval + 1 s; the service also reloads on
        # the NOTIFY at once, so 2 s is ample here.
        old, _ = await rotated(url, files, propagation=2.0)
        during = await run_loadgen({**spec, "prefix": f"kd{r}-"}, rewrap_under_way)
        proc, started, left_at_go, cpu_at_go = rewrap[0]
        running = proc.returncode is None
        left = await _count(url, _SEALED_BY, old)
        if running:  # the rewrap process's CPU over the window (once it exits, it is gone)
            during.cpu["rewrap"] = _proc_cpu(proc.pid) - cpu_at_go
        assert proc.stdout is not None
        summary = (await proc.stdout.read()).decode().strip()
        await proc.wait()
        elapsed = time.perf_counter() - started
    out.during.append(during)
    out.in_window.append(left_at_go - left)
    out.left_at_end.append(left)
    total = int(m[1]) if (m := re.search(r"rewrapped (\d+)", summary)) else 0
    out.rewrap_rate.append(total / elapsed)
    out.summaries.append(summary)
    unwrapped = await _count(url, _UNDER_OLD_KEYS)
    if unwrapped or not running or not left:
        print(
            f"  (ii) WARNING: the rewrap did not cover the whole window ({left} rows left at "
            f"its end, process running: {running}), or left {unwrapped} under an old key",
            file=sys.stderr,
        )
    await dbs.drop(url)


async def bench_accept(
    dbs: Databases, files: ServiceFiles, template: str, *, count: int, rounds: int
) -> AcceptResult:
    out = AcceptResult()
    for r in range(rounds):
        await accept_round(dbs, files, template, count=count, r=r, out=out)
        print(
            f"  (ii) round {r + 1}/{rounds}: accepted {out.before[-1].rate:.0f}/s before, "
            f"{out.during[-1].rate:.0f}/s during the rewrap ({out.summaries[-1]})",
            file=sys.stderr,
            flush=True,
        )
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _rows_rate(values: list[float]) -> str:
    return _rate(values).replace(" /s", " rows/s", 1)


def rewrap_rows(i: RewrapResult, rows: int) -> tuple[list[Row], list[str]]:
    paired = [a.rate / b.rate for a, b in zip(i.rewrap, i.plain, strict=True)]
    out: list[Row] = [
        (
            "(i)",
            f"pcns keys rewrap (admin.rewrap), {rows:,} rows, batch {BATCH}",
            _rows_rate([x.rate for x in i.rewrap]),
        ),
        (
            "(i)",
            "plain batched UPDATE, same rows, batch and server",
            _rows_rate([x.rate for x in i.plain]),
        ),
        (
            "(i)",
            "  info: rewrap's statements, bytes written back unchanged",
            _rows_rate([x.rate for x in i.statements]),
        ),
        ("(i)", "rewrap / plain UPDATE, per round", _ratio(paired, ">= 0.5x")),
    ]
    kinds = ("server", "postgres")
    every = [x.cpu for x in i.rewrap + i.plain + i.statements]
    notes = [
        "(i) CPU ms per 1000 rows (this process, postgres):",
        _cpu_line("rewrap", [x.cpu for x in i.rewrap], rows, kinds),
        _cpu_line("plain", [x.cpu for x in i.plain], rows, kinds),
        _cpu_line("statements", [x.cpu for x in i.statements], rows, kinds),
        f"    other processes on the machine meanwhile: {_background(every)} cores (median)",
    ]
    return out, notes


def accept_rows(ii: AcceptResult, count: int) -> tuple[list[Row], list[str]]:
    paired = [d.rate / b.rate for b, d in zip(ii.before, ii.during, strict=True)]
    out: list[Row] = [
        (
            "(ii)",
            f"accepted/s, role receiver, {count} signed POSTs, before rotation",
            _rate([x.rate for x in ii.before]),
        ),
        (
            "(ii)",
            "accepted/s, same, while `pcns keys rewrap` runs",
            _rate([x.rate for x in ii.during]),
        ),
        ("(ii)", "accept rate during / before, per round", _ratio(paired, ">= 0.7x")),
        (
            "(ii)",
            "  info: whole rewrap's rate while the load ran",
            _rows_rate(ii.rewrap_rate),
        ),
    ]
    kinds = ("server", "client", "postgres", "rewrap")
    notes = [
        "(ii) CPU ms per 1000 requests (server process, load generator, postgres, rewrap process):",
        _cpu_line("before", [x.cpu for x in ii.before], count, kinds),
        _cpu_line("during", [x.cpu for x in ii.during], count, kinds),
        f"    other processes on the machine meanwhile: "
        f"{_background([x.cpu for x in ii.before + ii.during])} cores (median)",
        f"    rows rewrapped inside the timed windows: {', '.join(map(str, ii.in_window))}; "
        f"still under the old key when they ended: {', '.join(map(str, ii.left_at_end))}",
        f"    the rewrap reported: {'; '.join(sorted(set(ii.summaries)))}",
    ]
    return out, notes + answers_warning("(ii)", ii.before + ii.during)


async def main(args: argparse.Namespace) -> None:
    made: list[str] = []

    async def template(dbs: Databases, files: ServiceFiles) -> str:
        """The backlog both parts copy, made once."""
        if not made:
            started = time.perf_counter()
            _progress(f"  queueing {args.rows:,} sealed ciphertexts (template database)")
            made.append(await backlog_template(dbs, files, args.rows))
            print(f"  queued in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        return made[0]

    async def rewrap(dbs: Databases, files: ServiceFiles) -> tuple[list[Row], list[str]]:
        source = await template(dbs, files)
        i = await bench_rewrap(dbs, files, source, rows=args.rows, rounds=args.rounds)
        return rewrap_rows(i, args.rows)

    async def accept(dbs: Databases, files: ServiceFiles) -> tuple[list[Row], list[str]]:
        source = await template(dbs, files)
        ii = await bench_accept(dbs, files, source, count=args.changes, rounds=args.rounds)
        return accept_rows(ii, args.changes)

    await run_parts(
        args,
        [
            ("1", "(i) rewrap vs plain batched UPDATE", rewrap),
            ("2", "(ii) accept rate before and during a rewrap", accept),
        ],
        f"medians of {args.rounds} round(s) [min..max].",
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = benchmark_parser(__doc__)
    p.add_argument("--parts", default="12", help="1: rewrap rate, 2: accept rate (default: 12)")
    p.add_argument("--quick", action="store_true", help="1 round over 20,000 rows")
    p.add_argument("--rows", type=int, help="queued ciphertexts to rewrap (100000)")
    p.add_argument("--rounds", type=int, help="rounds of each part, median reported (3)")
    p.add_argument("--changes", type=int, help="(ii) signed POSTs per timed run (5000)")
    args = p.parse_args(argv)
    defaults = {
        "rows": 20_000 if args.quick else 100_000,
        "rounds": 1 if args.quick else 3,
        "changes": 1000 if args.quick else 5000,
    }
    return with_defaults(args, defaults)


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
