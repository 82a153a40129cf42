"""What every benchmark runs in: the flags they all take, scratch databases and service files
set up once, the parts run in order and one table printed at the end."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from bench.harness.cpu import find_postmaster
from bench.harness.databases import Databases
from bench.harness.report import PartResult, Row, print_table, progress
from bench.harness.service import ServiceFiles

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# (key for --parts, title for the progress line, the part itself)
Part = tuple[str, str, Callable[[Databases, ServiceFiles], Awaitable[PartResult]]]


def benchmark_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser for ``python -m <module>`` with the flags every benchmark takes:
    ``--database-url`` and ``--max-background``."""
    p = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("PCNS_BENCH_DATABASE_URL", DEFAULT_URL),
        help="a server where scratch databases may be created (default: $PCNS_BENCH_DATABASE_URL "
        f"or {DEFAULT_URL})",
    )
    p.add_argument(
        "--max-background",
        type=float,
        metavar="CORES",
        help="before each timed window, wait (up to 60 s) until other processes use less than "
        "CORES of CPU; for shared machines (default: do not wait)",
    )
    return p


def with_defaults(args: argparse.Namespace, defaults: dict[str, Any]) -> argparse.Namespace:
    """Fill in every option left unset (None) from ``defaults``, which may depend on --quick."""
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def selected(parts: list[Part], keys: str) -> list[Part]:
    """The parts whose key is in ``keys`` (the ``--parts`` flag), in their order."""
    return [part for part in parts if part[0] in keys]


@contextlib.asynccontextmanager
async def bench_environment(
    args: argparse.Namespace,
) -> AsyncIterator[tuple[Databases, ServiceFiles, str]]:
    """What every benchmark runs in: scratch databases on ``args.database_url`` (all dropped on
    exit), the service's files in a temporary directory, the service's JSON log lines going to
    a file there, and the PostgreSQL server found for CPU accounting. Yields the databases, the
    files and one line of machine facts for the report."""
    from pcns.logging import configure_logging

    dbs = Databases(args.database_url, max_background=args.max_background)
    with tempfile.TemporaryDirectory(prefix="pcns-bench-") as tmp:
        files = ServiceFiles(Path(tmp))
        with (Path(tmp) / "service.log").open("w", encoding="utf-8") as log_fh:
            # As `pcns serve` logs to a non-terminal: one JSON line per request and attempt.
            configure_logging(level="info", stream=log_fh)
            conn = await asyncpg.connect(args.database_url)
            try:
                pg_version = await conn.fetchval("SHOW server_version")
            finally:
                await conn.close()
            await find_postmaster(args.database_url)
            facts = (
                f"PostgreSQL {pg_version}, {os.cpu_count()} CPUs, Python "
                f"{sys.version.split()[0]}, load average at start {os.getloadavg()[0]:.2f}"
            )
            try:
                yield dbs, files, facts
            finally:
                await dbs.drop_all()


async def run_parts(args: argparse.Namespace, parts: list[Part], how: str) -> None:
    """Run every ``(key, title, part)`` of ``parts`` inside one :func:`bench_environment`, then
    print their rows and notes as one table, headed by the machine facts and ``how`` (how the
    values were aggregated)."""
    rows: list[Row] = []
    notes: list[str] = []
    async with bench_environment(args) as (dbs, files, facts):
        notes.append(f"{facts}; {how}")
        for _, title, part in parts:
            progress(title)
            part_rows, part_notes = await part(dbs, files)
            rows += part_rows
            notes += part_notes
    print_table(rows, notes)


def run_one_part(
    module: str,
    doc: str | None,
    *,
    quick_help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    defaults: Callable[[bool], dict[str, Any]],
    part: Callable[[argparse.Namespace], Part],
    rounds: bool,
    how: str | None = None,
    argv: list[str] | None = None,
) -> None:
    """The command line of a benchmark that is one part of ``bench.core`` (``--quick``, the
    part's own flags, ``--rounds`` when it has rounds), then the part alone."""
    p = benchmark_parser(module, doc)
    p.add_argument("--quick", action="store_true", help=quick_help)
    if rounds:
        p.add_argument("--rounds", type=int, help="interleaved rounds, median reported (3)")
    add_arguments(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    extra = {"rounds": 1 if args.quick else 3} if rounds else {}
    args = with_defaults(args, {**extra, **defaults(args.quick)})
    if how is None:
        how = f"medians of {args.rounds} interleaved round(s) [min..max]." if rounds else "one run."
    asyncio.run(run_parts(args, [part(args)], how))
