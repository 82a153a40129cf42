"""Key-rotation benchmarks of pcns (issue 3), each a ratio to a baseline measured in the same run.

    .venv/bin/python -m bench.keys [--quick] [--rows N] [--max-background CORES]

(i)  ``pcns keys rewrap`` rows/s: ``pcns.keys.admin.rewrap`` (what the CLI runs, batch 1000)
     over N queued ciphertexts sealed under the first data key, after ``rotate``, against a
     plain batched UPDATE of the same N rows on a copy of the same database, with the same batch
     size: per transaction ``SELECT id ... FOR UPDATE SKIP LOCKED LIMIT 1000`` (the rewrap's own
     WHERE clause and index), then ``UPDATE ... SET key_id = <new>, ciphertext = ciphertext ||
     ''`` on those ids. Shown for information: pcns's own two statements (fetch the rows, write
     back through ``unnest``) with the same bytes written back, i.e. the rewrap minus the crypto.
     (bench/keys_rewrap.py)
(ii) accepted changes/s through the signed HTTP API (role ``receiver``, the load of bench.core
     (a)) over that backlog, before a rotation, and while ``pcns keys rewrap`` runs as its own
     process against the same database. (bench/keys_accept.py)

Uses bench.harness's scratch databases, service start-up, load generator, CPU accounting and
table. Nothing here asserts a timing. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bench.harness.backlog import backlog_template
from bench.harness.databases import Databases
from bench.harness.report import PartResult, progress
from bench.harness.run import Part, benchmark_parser, run_parts, selected, with_defaults
from bench.harness.service import ServiceFiles
from bench.keys_accept import accept_rows, bench_accept
from bench.keys_rewrap import bench_rewrap, rewrap_rows


async def main(args: argparse.Namespace) -> None:
    made: list[str] = []

    async def template(dbs: Databases, files: ServiceFiles) -> str:
        """The backlog both parts copy, made once. Not due for a day: nothing would deliver
        them even if a worker ran."""
        if not made:
            started = time.perf_counter()
            progress(f"  queueing {args.rows:,} sealed ciphertexts (template database)")
            url = await backlog_template(
                dbs, files, args.rows, label="template", target="noop", due="later"
            )
            made.append(url)
            print(f"  queued in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        return made[0]

    async def rewrap(dbs: Databases, files: ServiceFiles) -> PartResult:
        source = await template(dbs, files)
        i = await bench_rewrap(dbs, files, source, rows=args.rows, rounds=args.rounds)
        return rewrap_rows(i, args.rows)

    async def accept(dbs: Databases, files: ServiceFiles) -> PartResult:
        source = await template(dbs, files)
        ii = await bench_accept(dbs, files, source, count=args.changes, rounds=args.rounds)
        return accept_rows(ii, args.changes)

    parts: list[Part] = [
        ("1", "(i) rewrap vs plain batched UPDATE", rewrap),
        ("2", "(ii) accept rate before and during a rewrap", accept),
    ]
    await run_parts(
        args, selected(parts, args.parts), f"medians of {args.rounds} round(s) [min..max]."
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = benchmark_parser("bench.keys", __doc__)
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
