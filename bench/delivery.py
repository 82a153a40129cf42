"""(b) Deliveries/s draining a backlog to the ``noop`` target (role ``worker``), against
pgqueuer draining as many no-op jobs on the same server, with the same batch size and
concurrency; pcns with its delivery defaults is shown for information.

    .venv/bin/python -m bench.delivery [--quick] [--rounds 3] [--deliveries 5000]
        [--workers 32] [--batch 16] [--max-background CORES]

Part (b) of ``python -m bench.core``; every drain gets a fresh database, rounds are interleaved
and the ratio is taken per round. Nothing here asserts a timing. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg

from bench.harness.backlog import prefill_through_intake
from bench.harness.cpu import CpuWindow
from bench.harness.databases import Databases, fetch_count, wait_until
from bench.harness.loadgen import PASSWORD
from bench.harness.report import (
    PartResult,
    Row,
    cpu_line,
    median_background,
    median_rate,
    median_ratio,
)
from bench.harness.run import Part, run_one_part
from bench.harness.service import (
    ServiceFiles,
    delivered_count,
    free_port,
    in_process_service,
    settings_of,
)

if TYPE_CHECKING:
    from pcns.config import Settings


@dataclass
class Drain:
    rate: float
    cpu: dict[str, float | None]


async def pcns_drain(
    dbs: Databases, url: str, settings: Settings, n: int, *, target: str = "noop", part: str = "(b)"
) -> Drain:
    """Start a ``worker`` and time it until ``n`` deliveries to ``target`` are delivered."""

    await dbs.quiesce(url, analyze=True)
    window = CpuWindow()
    window.begin()
    started = time.perf_counter()
    async with in_process_service(settings, "worker") as service:
        await wait_until(lambda: delivered_count(service, target) >= n, timeout=300, interval=0.002)
        elapsed = time.perf_counter() - started
        window.end()
    left = await fetch_count(
        url, "SELECT count(*) FROM pcns_deliveries WHERE state IN ('pending', 'in_flight')"
    )
    if left:
        print(f"  {part} WARNING: {left} deliveries still open after the drain", file=sys.stderr)
    return Drain(n / elapsed, window.used)


async def pgqueuer_drain(
    dbs: Databases, url: str, n: int, *, batch: int, concurrency: int
) -> Drain:
    """Time pgqueuer's QueueManager (drain mode, until ``run`` returns) over ``n`` no-op jobs."""
    from pgqueuer import Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(url)
    try:
        queries = Queries.from_asyncpg_connection(conn)
        await queries.install()
        payload = os.urandom(12 + len(PASSWORD) + 4 + 16)  # as wide as a nonce + ciphertext
        await queries.enqueue(["noop"] * n, [payload] * n, [0] * n)
    finally:
        await conn.close()
    await dbs.quiesce(url, analyze=True)
    window = CpuWindow()
    window.begin()
    started = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        qm = QueueManager(Queries.from_asyncpg_connection(conn))

        @qm.entrypoint("noop")
        async def noop(job: Any) -> None:
            return None

        await qm.run(
            batch_size=batch,
            max_concurrent_tasks=concurrency,
            mode=QueueExecutionMode.drain,
        )
        elapsed = time.perf_counter() - started
        window.end()
    finally:
        await conn.close()
    left = await fetch_count(url, "SELECT count(*) FROM pgqueuer")
    if left:
        print(f"  (b) WARNING: {left} pgqueuer jobs left after the drain", file=sys.stderr)
    return Drain(n / elapsed, window.used)


@dataclass
class DeliveryResult:
    pcns: list[Drain] = field(default_factory=list)
    pcns_default: list[Drain] = field(default_factory=list)
    pgqueuer: list[Drain] = field(default_factory=list)


async def bench_delivery(
    dbs: Databases,
    files: ServiceFiles,
    *,
    count: int,
    rounds: int,
    workers: int,
    batch: int,
) -> DeliveryResult:
    from targets.base import load_target_types

    # Import every adapter module once, as a long-running worker already has: the first timed
    # start-up would otherwise pay ~0.4 s of one-off imports.
    load_target_types()
    comparable = {"workers": workers, "claim_batch": batch}
    out = DeliveryResult()
    for r in range(rounds):
        for label, delivery, drains in (
            ("comparable", comparable, out.pcns),
            ("defaults", {}, out.pcns_default),
        ):
            url = await dbs.create("delivery")
            settings = settings_of(files.document(url, free_port(), delivery=delivery))
            await prefill_through_intake(url, settings, count, f"b{r}{label[0]}-")
            drains.append(await pcns_drain(dbs, url, settings, count))
            await dbs.drop(url)
        url = await dbs.create("pgqueuer")
        out.pgqueuer.append(await pgqueuer_drain(dbs, url, count, batch=batch, concurrency=workers))
        await dbs.drop(url)
        print(
            f"  (b) round {r + 1}/{rounds}: pcns {out.pcns[-1].rate:.0f}/s "
            f"(defaults {out.pcns_default[-1].rate:.0f}/s), "
            f"pgqueuer {out.pgqueuer[-1].rate:.0f}/s",
            file=sys.stderr,
            flush=True,
        )
    return out


def _pgqueuer_version() -> str:
    try:
        from importlib.metadata import version

        return version("pgqueuer")
    except Exception:  # only a label in the table
        return "?"


def delivery_rows(b: DeliveryResult, args: argparse.Namespace) -> PartResult:
    n = args.deliveries
    paired = [p.rate / q.rate for p, q in zip(b.pcns, b.pgqueuer, strict=True)]
    rows: list[Row] = [
        (
            "(b)",
            f"pcns deliveries/s, noop, workers {args.workers}, claim_batch {args.batch}",
            median_rate([d.rate for d in b.pcns]),
        ),
        (
            "(b)",
            "pcns deliveries/s, noop, delivery defaults (workers 8, claim_batch 64)",
            median_rate([d.rate for d in b.pcns_default]),
        ),
        (
            "(b)",
            f"pgqueuer {_pgqueuer_version()} jobs/s, batch_size {args.batch}, "
            f"max_concurrent_tasks {args.workers}",
            median_rate([d.rate for d in b.pgqueuer]),
        ),
        ("(b)", "pcns / pgqueuer (same settings), per round", median_ratio(paired, ">= 1.0x")),
    ]
    every = [d.cpu for d in b.pcns + b.pcns_default + b.pgqueuer]
    notes = [
        "(b) CPU ms per 1000 deliveries or jobs (worker process, postgres):",
        cpu_line("pcns", [d.cpu for d in b.pcns], n),
        cpu_line("pcns dflt", [d.cpu for d in b.pcns_default], n),
        cpu_line("pgqueuer", [d.cpu for d in b.pgqueuer], n),
        f"    other processes on the machine meanwhile: {median_background(every)} cores (median)",
    ]
    return rows, notes


# --------------------------------------------------------------------------------------------
# Command line (this part alone, or in bench.core)
# --------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--deliveries", type=int, help="(b) deliveries drained per run (5000)")
    p.add_argument("--workers", type=int, default=32, help="(b) concurrency of both queues (32)")
    p.add_argument("--batch", type=int, default=16, help="(b) claim/dequeue batch of both (16)")


def defaults(quick: bool) -> dict[str, Any]:
    return {"deliveries": 1000 if quick else 5000}


def part(args: argparse.Namespace) -> Part:
    async def delivery(dbs: Databases, files: ServiceFiles) -> PartResult:
        b = await bench_delivery(
            dbs,
            files,
            count=args.deliveries,
            rounds=args.rounds,
            workers=args.workers,
            batch=args.batch,
        )
        return delivery_rows(b, args)

    return ("b", "(b) delivery throughput", delivery)


if __name__ == "__main__":
    run_one_part(
        "bench.delivery",
        __doc__,
        quick_help="1 round of 1000 deliveries",
        add_arguments=add_arguments,
        defaults=defaults,
        part=part,
        rounds=True,
    )
