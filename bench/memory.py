"""(d) RSS of a ``pcns serve`` subprocess with an empty queue vs. a queue of 100,000 deliveries
(not due, or due behind a stalled target).

    .venv/bin/python -m bench.memory [--quick] [--backlog 100000] [--settle 8]
        [--max-background CORES]

Part (d) of ``python -m bench.core``: one fresh database and one fresh process per queue state;
VmRSS and VmHWM are read from ``/proc/<pid>/status`` after ``--settle`` seconds of serving.
Nothing here asserts a timing. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncpg

from bench.harness.backlog import queue_backlog
from bench.harness.databases import Databases, fetch_count
from bench.harness.report import PartResult, Row
from bench.harness.run import Part, run_one_part
from bench.harness.service import ServiceFiles, free_port, pcns_serve, write_config


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM) of ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@dataclass
class MemorySample:
    label: str
    rss_kb: int
    hwm_kb: int
    open_rows: int


async def serve_and_measure(
    label: str, config: Path, port: int, url: str, settle: float, log: Path
) -> MemorySample:
    """Run ``pcns serve`` (role all), let it work for ``settle`` s, read its VmRSS and VmHWM."""
    async with pcns_serve(config, port, log) as proc:
        await asyncio.sleep(settle)
        rss = status_kb(proc.pid, "VmRSS")
        hwm = status_kb(proc.pid, "VmHWM")
    open_rows = await fetch_count(
        url, "SELECT count(*) FROM pcns_deliveries WHERE state IN ('pending', 'in_flight')"
    )
    return MemorySample(label, rss, hwm, open_rows)


async def bench_memory(
    dbs: Databases, files: ServiceFiles, *, backlog: int, settle: float
) -> list[MemorySample]:
    from pcns.queue.migrate import migrate

    targets: list[dict[str, Any]] = [
        {"name": "noop", "type": "noop"},
        # A target that never answers within the sample window: due rows stay queued behind it.
        {"name": "slow", "type": "noop", "delay": 3600.0},
    ]
    delivery = {"shutdown_grace": "1s"}
    samples: list[MemorySample] = []
    states: list[tuple[str, Literal["now", "later"] | None, str | None]] = [
        ("empty queue", None, None),
        (f"{backlog:,} queued, not due (retry in 1 day)", "later", "noop"),
        (f"{backlog:,} queued, due, behind a stalled target", "now", "slow"),
    ]
    for label, due, target in states:
        url = await dbs.create(f"mem{len(samples)}")
        port = free_port()
        doc = files.document(url, port, delivery=delivery, targets=targets)
        config = write_config(files.root / f"memory-{len(samples)}.toml", doc)
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        if due is not None:
            assert target is not None
            await queue_backlog(url, files, backlog, target=target, due=due)
        await dbs.quiesce(url, analyze=True)
        sample = await serve_and_measure(label, config, port, url, settle, files.root / "serve.log")
        await dbs.drop(url)
        samples.append(sample)
        print(
            f"  (d) {label}: VmRSS {sample.rss_kb / 1024:.1f} MiB "
            f"(VmHWM {sample.hwm_kb / 1024:.1f} MiB, {sample.open_rows} open rows)",
            file=sys.stderr,
            flush=True,
        )
    return samples


def memory_rows(mem: list[MemorySample]) -> PartResult:
    base = mem[0].rss_kb
    rows: list[Row] = [
        (
            "(d)",
            f"pcns serve VmRSS, {s.label}",
            f"{s.rss_kb / 1024:8.1f} MiB  ({s.rss_kb / base:.2f}x; VmHWM {s.hwm_kb / 1024:.1f})",
        )
        for s in mem
    ]
    worst = max(s.rss_kb for s in mem[1:]) if len(mem) > 1 else base
    rows.append(
        ("(d)", "worst backlog RSS / empty-queue RSS", f"{worst / base:8.2f} x   (target <= 1.2x)")
    )
    return rows, []


# --------------------------------------------------------------------------------------------
# Command line (this part alone, or in bench.core)
# --------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backlog", type=int, help="(d) queued deliveries (100000)")
    p.add_argument("--settle", type=float, help="(d) seconds served before reading RSS (8)")


def defaults(quick: bool) -> dict[str, Any]:
    return {"backlog": 20_000 if quick else 100_000, "settle": 6.0 if quick else 8.0}


def part(args: argparse.Namespace) -> Part:
    async def memory(dbs: Databases, files: ServiceFiles) -> PartResult:
        return memory_rows(await bench_memory(dbs, files, backlog=args.backlog, settle=args.settle))

    return ("d", "(d) memory", memory)


if __name__ == "__main__":
    run_one_part(
        "bench.memory",
        __doc__,
        quick_help="a 20,000-row backlog, 6 s of serving",
        add_arguments=add_arguments,
        defaults=defaults,
        part=part,
        rounds=False,
        how="one process per queue state.",
    )
