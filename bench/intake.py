"""(a) Accepted changes/s through the signed HTTP API (role ``receiver``), 32 concurrent senders,
against two ceilings: the same load on a no-op aiohttp handler answering 202, and raw asyncpg
single-row-commit INSERTs (32 tasks over a pool the size of the service's).

    .venv/bin/python -m bench.intake [--quick] [--rounds 3] [--changes 5000]
        [--max-background CORES]

Part (a) of ``python -m bench.core``; rounds of pcns and its ceilings are interleaved and the
ratio is taken per round. Nothing here asserts a timing. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bench.harness.cpu import CpuWindow
from bench.harness.databases import Databases, fetch_count
from bench.harness.loadgen import PASSWORD, SENDERS, WARMUP, HttpRun, closed_loop_spec, run_loadgen
from bench.harness.report import (
    PartResult,
    Row,
    answers_warning,
    cpu_line,
    median_background,
    median_rate,
    median_ratio,
)
from bench.harness.run import Part, run_one_part
from bench.harness.service import (
    POOL_SIZE,
    ServiceFiles,
    free_port,
    in_process_service,
    settings_of,
)


async def noop_http_server(port: int) -> web.AppRunner:
    """The HTTP ceiling: aiohttp reading the body and answering 202, nothing else."""

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202, text='{"id":"x"}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/password-changes", accept)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    return runner


_RAW_TABLE = """
CREATE TABLE bench_raw (
    id uuid PRIMARY KEY, change_id uuid NOT NULL, target text NOT NULL, account text NOT NULL,
    state text NOT NULL, key_id text, nonce bytea, ciphertext bytea,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
_RAW_INSERT = (
    "INSERT INTO bench_raw (id, change_id, target, account, state, key_id, nonce, ciphertext)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)


async def raw_insert_ceiling(
    dbs: Databases, url: str, count: int
) -> tuple[float, dict[str, float | None]]:
    """``SENDERS`` tasks over a pool of ``POOL_SIZE``, one row per implicit transaction.

    The pool comes from the service's own factory, so both sides release connections the same
    way (without asyncpg's default reset round trip).
    """
    from pcns.database import create_pool

    async with create_pool(url, size=POOL_SIZE) as db:
        pool = db.pool
        await pool.execute(_RAW_TABLE)

        async def insert(n: int) -> None:
            for _ in range(n):
                async with pool.acquire() as conn:
                    await conn.execute(
                        _RAW_INSERT,
                        uuid.uuid4(),
                        uuid.uuid4(),
                        "noop",
                        f"user-{uuid.uuid4().hex[:8]}",
                        "pending",
                        "k20250101-abcdef01",
                        os.urandom(12),
                        os.urandom(len(PASSWORD) + 4 + 16),
                    )

        await asyncio.gather(*(insert(WARMUP // SENDERS) for _ in range(SENDERS)))
        await dbs.quiesce(url, analyze=False)
        window = CpuWindow()
        window.begin()
        started = time.perf_counter()
        per_task, extra = divmod(count, SENDERS)
        await asyncio.gather(*(insert(per_task + (i < extra)) for i in range(SENDERS)))
        elapsed = time.perf_counter() - started
        window.end()
    return count / elapsed, window.used


@dataclass
class IntakeResult:
    service: list[HttpRun] = field(default_factory=list)
    noop: list[HttpRun] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    raw_cpu: list[dict[str, float | None]] = field(default_factory=list)


async def bench_intake(
    dbs: Databases, files: ServiceFiles, *, count: int, rounds: int
) -> IntakeResult:
    out = IntakeResult()
    for r in range(rounds):
        url = await dbs.create("intake")
        port = free_port()
        settings = settings_of(files.document(url, port))
        spec = closed_loop_spec(files, port, count)
        async with in_process_service(settings, "receiver"):

            async def quiesce(url: str = url) -> None:
                await dbs.quiesce(url, analyze=False)

            out.service.append(await run_loadgen({**spec, "prefix": f"a{r}-"}, quiesce))
        stored = await fetch_count(url, "SELECT count(*) FROM pcns_changes")
        if stored != count + WARMUP:
            print(f"  (a) WARNING: {stored} changes stored, not {count + WARMUP}", file=sys.stderr)
        await dbs.drop(url)

        port = free_port()
        runner = await noop_http_server(port)
        try:
            noop_spec = {**spec, "url": f"http://127.0.0.1:{port}", "prefix": f"n{r}-"}
            out.noop.append(await run_loadgen(noop_spec))
        finally:
            await runner.cleanup()

        url = await dbs.create("raw")
        rate, cpu = await raw_insert_ceiling(dbs, url, count)
        await dbs.drop(url)
        out.raw.append(rate)
        out.raw_cpu.append(cpu)
        print(
            f"  (a) round {r + 1}/{rounds}: pcns {out.service[-1].rate:.0f}/s, "
            f"no-op HTTP {out.noop[-1].rate:.0f}/s, raw INSERT {rate:.0f}/s",
            file=sys.stderr,
            flush=True,
        )
    return out


def intake_rows(a: IntakeResult, n: int) -> PartResult:
    paired = [s.rate / min(h.rate, r) for s, h, r in zip(a.service, a.noop, a.raw, strict=True)]
    rows: list[Row] = [
        (
            "(a)",
            f"pcns accepted/s, role receiver, {n} signed POSTs",
            median_rate([r.rate for r in a.service]),
        ),
        ("(a)", "ceiling: no-op aiohttp 202, same client", median_rate([r.rate for r in a.noop])),
        (
            "(a)",
            f"ceiling: asyncpg 1-row commits, {SENDERS} tasks / pool {POOL_SIZE}",
            median_rate(a.raw),
        ),
        ("(a)", "accept rate / min(ceilings), per round", median_ratio(paired, ">= 0.8x")),
        (
            "(a)",
            "pcns HTTP 202 latency p50 / p99 (client side)",
            f"{statistics.median(r.p50_ms for r in a.service):8.1f} / "
            f"{statistics.median(r.p99_ms for r in a.service):.1f} ms",
        ),
    ]
    every = [r.cpu for r in a.service] + [r.cpu for r in a.noop] + a.raw_cpu
    notes = [
        "(a) CPU ms per 1000 requests (server process, load generator, postgres):",
        cpu_line("pcns", [r.cpu for r in a.service], n),
        cpu_line("no-op HTTP", [r.cpu for r in a.noop], n),
        cpu_line("raw INSERT", a.raw_cpu, n) + "  (server = the asyncpg client)",
        f"    other processes on the machine meanwhile: {median_background(every)} cores (median)",
    ]
    notes += answers_warning("(a)", a.service, " from pcns")
    return rows, notes


# --------------------------------------------------------------------------------------------
# Command line (this part alone, or in bench.core)
# --------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--changes", type=int, help="(a) signed POSTs per timed run (5000)")


def defaults(quick: bool) -> dict[str, Any]:
    return {"changes": 1000 if quick else 5000}


def part(args: argparse.Namespace) -> Part:
    async def intake(dbs: Databases, files: ServiceFiles) -> PartResult:
        a = await bench_intake(dbs, files, count=args.changes, rounds=args.rounds)
        return intake_rows(a, args.changes)

    return ("a", "(a) intake throughput", intake)


if __name__ == "__main__":
    run_one_part(
        "bench.intake",
        __doc__,
        quick_help="1 round of 1000 changes",
        add_arguments=add_arguments,
        defaults=defaults,
        part=part,
        rounds=True,
    )
