"""(c) p50/p99 accept-to-delivered latency at a fixed offered rate (role ``all``), taken from the
database: ``pcns_deliveries.finished_at - created_at``.

    .venv/bin/python -m bench.latency [--quick] [--rate 200] [--duration 10]
        [--max-background CORES]

Part (c) of ``python -m bench.core``: an open-loop load generator sends change ``i`` at
``start + i / rate`` whether or not earlier ones were answered. Nothing here asserts a timing.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench.harness.databases import Databases, fetch_count, wait_until
from bench.harness.loadgen import SENDERS, HttpRun, run_loadgen
from bench.harness.report import PartResult, Row, median_background
from bench.harness.run import Part, run_one_part
from bench.harness.service import ServiceFiles, free_port, in_process_service, settings_of

_LATENCY = """
SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM d.finished_at - d.created_at)) AS p,
       max(extract(epoch FROM d.finished_at - d.created_at)) AS worst,
       count(*) FILTER (WHERE d.state = 'delivered') AS delivered,
       count(*) AS total
FROM pcns_deliveries d JOIN pcns_changes c ON c.id = d.change_id
WHERE c.user_name LIKE 'lat-%' AND c.user_name NOT LIKE 'lat-warm-%'
"""


@dataclass
class LatencyResult:
    offered: float
    achieved: float
    p50: float
    p99: float
    worst: float
    delivered: int
    total: int
    http: HttpRun


async def bench_latency(
    dbs: Databases, files: ServiceFiles, *, rate: float, duration: float
) -> LatencyResult:
    url = await dbs.create("latency")
    port = free_port()
    settings = settings_of(files.document(url, port))
    count = round(rate * duration)
    spec = {
        "url": f"http://127.0.0.1:{port}",
        "secret_file": str(files.secret_file),
        "senders": SENDERS,
        "count": count,
        "mode": "open",
        "rate": rate,
        "prefix": "lat-",
    }
    open_rows = "SELECT count(*) FROM pcns_deliveries WHERE state IN ('pending', 'in_flight')"
    async with in_process_service(settings, "all"):
        http = await run_loadgen(spec, lambda: dbs.quiesce(url, analyze=False))

        async def drained() -> bool:
            return await fetch_count(url, open_rows) == 0

        await wait_until(drained, timeout=120, interval=0.1)
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(_LATENCY)
    finally:
        await conn.close()
    await dbs.drop(url)
    assert row is not None
    return LatencyResult(
        offered=rate,
        achieved=count / http.elapsed,
        p50=row["p"][0],
        p99=row["p"][1],
        worst=row["worst"],
        delivered=row["delivered"],
        total=row["total"],
        http=http,
    )


def latency_rows(c: LatencyResult) -> PartResult:
    rows: list[Row] = [
        (
            "(c)",
            f"offered / achieved rate, role all, {c.total} changes",
            f"{c.offered:8.0f} / {c.achieved:.0f} /s ({c.delivered} delivered)",
        ),
        (
            "(c)",
            "accept-to-delivered p50 / p99 / max (finished_at - created_at)",
            f"{c.p50 * 1000:8.1f} / {c.p99 * 1000:.1f} / {c.worst * 1000:.1f} ms",
        ),
        (
            "(c)",
            "HTTP 202 latency p50 / p99 (client side)",
            f"{c.http.p50_ms:8.1f} / {c.http.p99_ms:.1f} ms",
        ),
    ]
    notes = [
        f"(c) other processes on the machine meanwhile: {median_background([c.http.cpu])} cores"
    ]
    return rows, notes


# --------------------------------------------------------------------------------------------
# Command line (this part alone, or in bench.core)
# --------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=200.0, help="(c) offered changes/s (200)")
    p.add_argument("--duration", type=float, help="(c) seconds of offered load (10)")


def defaults(quick: bool) -> dict[str, Any]:
    return {"duration": 3.0 if quick else 10.0}


def part(args: argparse.Namespace) -> Part:
    async def latency(dbs: Databases, files: ServiceFiles) -> PartResult:
        return latency_rows(await bench_latency(dbs, files, rate=args.rate, duration=args.duration))

    return ("c", "(c) accept-to-delivered latency", latency)


if __name__ == "__main__":
    run_one_part(
        "bench.latency",
        __doc__,
        quick_help="3 s of offered load",
        add_arguments=add_arguments,
        defaults=defaults,
        part=part,
        rounds=False,
    )
