"""Core benchmarks of pcns, each reported as a ratio to a baseline measured in the same run.

    .venv/bin/python -m bench.core [--quick] [--parts abcd] [--max-background CORES]

(a) accepted changes/s through the signed HTTP API (role ``receiver``), 32 concurrent senders,
    against two ceilings: the same load on a no-op aiohttp handler answering 202, and raw asyncpg
    single-row-commit INSERTs (32 tasks over a pool the size of the service's).
(b) deliveries/s draining a backlog to the ``noop`` target (role ``worker``), against pgqueuer
    draining as many no-op jobs on the same server, with the same batch size and concurrency.
(c) p50/p99 accept-to-delivered latency at a fixed offered rate (role ``all``), taken from the
    database: ``pcns_deliveries.finished_at - created_at``.
(d) RSS of a ``pcns serve`` subprocess with an empty queue vs. a queue of 100,000 deliveries.

Each part is a module of its own and runs alone too, with the flags it uses:
``python -m bench.intake`` (a), ``bench.delivery`` (b), ``bench.latency`` (c), ``bench.memory`` (d).

The service under test runs in this process through the composition root (``running_service``),
logging JSON lines at info level to a file as ``pcns serve`` does to a non-terminal. The HTTP load
generator always runs in a subprocess (``python -m bench.harness.loadgen``), so that on a small
machine it does not share an event loop or a GIL with the server it measures. Every timed run gets
a fresh database (created for it, checkpointed, dropped after it), rounds of the measurement and
its baselines are interleaved, and ratios are taken per round. CPU time of the server, the load
generator and PostgreSQL is reported per item, with what other processes used meanwhile.
Nothing here asserts a timing. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from bench import delivery, intake, latency, memory
from bench.harness.run import benchmark_parser, run_parts, selected, with_defaults

PARTS = (intake, delivery, latency, memory)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = benchmark_parser("bench.core", __doc__)
    p.add_argument("--parts", default="abcd", help="which parts to run (default: abcd)")
    p.add_argument("--quick", action="store_true", help="a short smoke run of every part")
    p.add_argument("--rounds", type=int, help="rounds of (a) and (b), median reported (3)")
    for module in PARTS:
        module.add_arguments(p)
    args = p.parse_args(argv)
    defaults: dict[str, Any] = {"rounds": 1 if args.quick else 3}
    for module in PARTS:
        defaults.update(module.defaults(args.quick))
    return with_defaults(args, defaults)


async def main(args: argparse.Namespace) -> None:
    await run_parts(
        args,
        selected([module.part(args) for module in PARTS], args.parts),
        f"medians of {args.rounds} interleaved round(s) [min..max].",
    )


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
