"""Hashing-target benchmarks of pcns (issue 4), each a ratio to a baseline measured in the same run.

    .venv/bin/python -m bench.targets [--quick] [--deliveries N] [--max-background CORES]

(i)  deliveries/s draining N queued changes to an argon2id ``sql`` target (a real PostgreSQL
     ``users`` table in a scratch database, ``UPDATE users SET pw = :hash WHERE login =
     :account``) with the service's default delivery settings (role ``worker``), against N
     argon2id hashes computed alone with the same parallelism: ``delivery.workers`` (8)
     coroutines, each awaiting ``targets.hashing.hash_password_async`` on the same event loop
     and so the same hashing pool (all cores but one, at nice 19). A
     single thread's rate is shown too. (bench/targets_delivery.py)
(ii) accepted changes/s through the signed HTTP API (the load of bench.core (a)) while that target
     is busy hashing a backlog (role ``all``), against the rate with nothing being delivered
     (role ``receiver``, same configuration and queue). For information: role ``all`` with the
     target replaced by a ``noop`` that waits 0.1 s, i.e. deliveries flowing at about the same
     rate, but without the hashing. (bench/targets_accept.py)

Uses bench.harness's scratch databases, service start-up, load generator, CPU accounting and
table. Nothing here asserts a timing. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from bench.harness.databases import Databases
from bench.harness.report import PartResult
from bench.harness.run import Part, benchmark_parser, run_parts, selected, with_defaults
from bench.harness.service import ServiceFiles
from bench.targets_accept import accept_rows, bench_accept
from bench.targets_delivery import WORKERS, bench_hashing_target, hashing_rows
from targets.hashing import hashing_threads


async def main(args: argparse.Namespace) -> None:
    async def deliveries(dbs: Databases, files: ServiceFiles) -> PartResult:
        i = await bench_hashing_target(dbs, files, n=args.deliveries, rounds=args.rounds)
        return hashing_rows(i, args.deliveries)

    async def accepting(dbs: Databases, files: ServiceFiles) -> PartResult:
        ii = await bench_accept(
            dbs, files, count=args.changes, backlog=args.backlog, rounds=args.rounds
        )
        return accept_rows(ii, args.changes)

    parts: list[Part] = [
        ("1", "(i) deliveries to an argon2id sql target vs hashes alone", deliveries),
        ("2", "(ii) accept rate while the target hashes vs idle", accepting),
    ]
    await run_parts(
        args,
        selected(parts, args.parts),
        f"medians of {args.rounds} round(s) [min..max]. Hashing parallelism: {WORKERS} attempts "
        f"in flight (delivery.workers), {hashing_threads()} threads in the hashing pool "
        f"(nice 19), {os.cpu_count()} cores; argon2id m=19 MiB, t=2, p=1.",
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = benchmark_parser("bench.targets", __doc__)
    p.add_argument("--parts", default="12", help="1: delivery rate, 2: accept rate (default: 12)")
    p.add_argument("--quick", action="store_true", help="1 round, 150 deliveries, 1000 POSTs")
    p.add_argument("--deliveries", type=int, help="(i) changes delivered per timed drain (600)")
    p.add_argument("--rounds", type=int, help="rounds of each part, median reported (3)")
    p.add_argument("--changes", type=int, help="(ii) signed POSTs per timed run (5000)")
    p.add_argument("--backlog", type=int, help="(ii) changes queued for the target (2000)")
    args = p.parse_args(argv)
    defaults = {
        "deliveries": 150 if args.quick else 600,
        "rounds": 1 if args.quick else 3,
        "changes": 1000 if args.quick else 5000,
        "backlog": 1000 if args.quick else 2000,
    }
    return with_defaults(args, defaults)


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
