"""Contention: intake latency while a hashing target delivers at full speed, and the scenario
that once collapsed (three hashing targets, 300 changes from 8 senders, two workers).

    .venv/bin/python -m bench.contention [--quick] [--rounds 3] [--parts hx]
        [--rate 200] [--duration 10] [--changes 300] [--mysql-url URL]

(h) HTTP 202 p99 at ``--rate`` changes/s offered (open loop) to ``pcns serve`` (role ``all``,
one process), while its argon2id ``sql`` target drains a queued backlog at full speed, against
the same load to a ``noop`` target of the same name on an empty queue (nothing hashes): the
receiver's share of the CPU against the hashing pool's (target: <= 2x).

(x) One receiver and two worker processes (``delivery.workers = 16``), three targets with their
production hashing (htpasswd bcrypt cost 12, ``sql`` on PostgreSQL argon2id, ``sql`` on MariaDB
bcrypt): ``--changes`` changes sent by 8 closed-loop senders, the time until every delivery
has ended, against the time the same hashes take alone on the same pools (two processes, each
its hashing pool, 16 at a time). Target: <= 1.2x, every delivery delivered at attempt 1.

Nothing here asserts a timing. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from typing import Any

from bench.contention_scenario import bench_scenario, scenario_rows
from bench.harness.backlog import backlog_template
from bench.harness.databases import Databases, fetch_count
from bench.harness.loadgen import HttpRun, run_loadgen
from bench.harness.report import PartResult, Row, median_background, median_ratio
from bench.harness.run import Part, benchmark_parser, run_parts, selected, with_defaults
from bench.harness.service import ServiceFiles, free_port, in_process_service, settings_of
from bench.targets_delivery import TARGET, sql_target, users_database

BACKLOG = 20_000  # more than the target can hash in a run: it hashes throughout the window
FINISHED = "SELECT count(*) FROM pcns_deliveries WHERE state NOT IN ('pending', 'in_flight')"


async def intake_run(
    dbs: Databases, files: ServiceFiles, template: str, *, busy: bool, rate: float, duration: float
) -> tuple[HttpRun, float]:
    """One open-loop run; the 202 latencies and the deliveries/s the worker made meanwhile."""
    app_url = await users_database(dbs, BACKLOG if busy else 1)
    url = await dbs.create("intake", template=template if busy else None)
    target = sql_target(app_url) if busy else {"name": TARGET, "type": "noop"}
    port = free_port()
    settings = settings_of(files.document(url, port, targets=[target]))
    spec = {
        "url": f"http://127.0.0.1:{port}",
        "secret_file": str(files.secret_file),
        "senders": 32,
        "count": round(rate * duration),
        "mode": "open",
        "rate": rate,
        "prefix": f"lat-{'busy' if busy else 'idle'}-",
    }
    async with in_process_service(settings, "all"):
        await asyncio.sleep(3.0)  # the worker is hashing at full speed before the clock starts
        before = await fetch_count(url, FINISHED)
        # Checkpointed right before the clock starts, as bench.latency does: the scratch
        # databases just created would otherwise flush their WAL inside the timed window.
        http = await run_loadgen(spec, lambda: dbs.quiesce(url, analyze=False))
        delivered = (await fetch_count(url, FINISHED) - before) / http.elapsed
    await dbs.drop(url)
    await dbs.drop(app_url)
    return http, delivered


async def bench_intake(
    dbs: Databases, files: ServiceFiles, *, rounds: int, rate: float, duration: float
) -> PartResult:
    template = await backlog_template(
        dbs, files, BACKLOG, label="contention", target=TARGET, due="now"
    )
    idle: list[HttpRun] = []
    busy: list[tuple[HttpRun, float]] = []
    for r in range(rounds):
        await dbs.quiesce(dbs.server_url, analyze=False)
        idle.append(
            (await intake_run(dbs, files, template, busy=False, rate=rate, duration=duration))[0]
        )
        await dbs.quiesce(dbs.server_url, analyze=False)
        busy.append(await intake_run(dbs, files, template, busy=True, rate=rate, duration=duration))
        print(
            f"  (h) round {r + 1}/{rounds}: p99 {idle[-1].p99_ms:.1f} ms idle, "
            f"{busy[-1][0].p99_ms:.1f} ms while hashing ({busy[-1][1]:.1f} deliveries/s)",
            file=sys.stderr,
            flush=True,
        )
    ratios = [b.p99_ms / i.p99_ms for (b, _), i in zip(busy, idle, strict=True)]
    rows: list[Row] = [
        (
            "(h)",
            f"HTTP 202 p50 / p99 at {rate:.0f}/s offered, noop target, empty queue (idle)",
            f"{statistics.median(i.p50_ms for i in idle):8.1f} / "
            f"{statistics.median(i.p99_ms for i in idle):.1f} ms",
        ),
        (
            "(h)",
            f"HTTP 202 p50 / p99 at {rate:.0f}/s offered, argon2id target delivering",
            f"{statistics.median(b.p50_ms for b, _ in busy):8.1f} / "
            f"{statistics.median(b.p99_ms for b, _ in busy):.1f} ms",
        ),
        (
            "(h)",
            "  info: argon2id deliveries/s meanwhile (the pool at full speed)",
            f"{statistics.median(d for _, d in busy):8.1f} /s",
        ),
        ("(h)", "p99 while hashing / p99 idle, per round", median_ratio(ratios, "<= 2x")),
    ]
    achieved = [round(b.rate) for b, _ in busy] + [round(i.rate) for i in idle]
    notes = [
        f"(h) achieved rates {achieved} /s; other processes meanwhile: "
        f"{median_background([i.cpu for i in idle] + [b.cpu for b, _ in busy])} cores"
    ]
    return rows, notes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = benchmark_parser("bench.contention", __doc__)
    p.add_argument("--quick", action="store_true", help="1 round, 3 s of load, 60 changes")
    p.add_argument("--rounds", type=int, help="interleaved rounds, median reported (3)")
    p.add_argument("--parts", default="hx", help="which parts: h, x (default: hx)")
    p.add_argument("--rate", type=float, default=200.0, help="(h) offered changes/s (200)")
    p.add_argument("--duration", type=float, help="(h) seconds of offered load (10)")
    p.add_argument("--changes", type=int, help="(x) changes sent (300)")
    p.add_argument(
        "--mysql-url",
        default="mysql://root@127.0.0.1:3306/test",
        help="(x) the MariaDB the third target writes to (default: the machine's)",
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    quick: dict[str, Any] = {"rounds": 1, "duration": 3.0, "changes": 60}
    full: dict[str, Any] = {"rounds": 3, "duration": 10.0, "changes": 300}
    return with_defaults(args, quick if args.quick else full)


def main() -> None:
    args = parse_args()

    async def intake(dbs: Databases, files: ServiceFiles) -> PartResult:
        return await bench_intake(
            dbs, files, rounds=args.rounds, rate=args.rate, duration=args.duration
        )

    async def scenario(dbs: Databases, files: ServiceFiles) -> PartResult:
        results = [
            await bench_scenario(dbs, files, changes=args.changes, mysql_url=args.mysql_url)
            for _ in range(args.rounds)
        ]
        return scenario_rows(results, args.changes)

    parts: list[Part] = [
        ("h", "(h) intake latency while a hashing target delivers", intake),
        ("x", "(x) three hashing targets, two workers: the scenario that collapsed", scenario),
    ]
    how = f"medians of {args.rounds} round(s) [min..max]."
    asyncio.run(run_parts(args, selected(parts, args.parts), how))


if __name__ == "__main__":
    main()
