"""Recovery from faults: how long in-flight passwords wait after a worker dies or hangs, and the
delivery rate across a database outage.

    .venv/bin/python -m bench.faults [--quick] [--rounds 3] [--parts kwso]

Each kill part queues a batch of changes to a worker whose target hangs (a ``noop`` target
with a 60 s delay stands in for an application mid-write), waits until they are in flight, and
kills it; the clock runs from the signal until every one of them has been delivered by a
healthy worker (``recovered_after``), with the default ``delivery.heartbeat_interval`` (2 s)
and ``worker_timeout`` (10 s):

(k) the only process (``pcns serve``, role ``all``) SIGKILLed, then started again on a healthy
    target: the restart is inside the clock (target <= 10 s);
(w) one of two worker processes SIGKILLed on this host; the other takes over (target <= 20 s);
(s) one of two worker processes SIGSTOPped (its process exists but is hung, or cut off: what a
    worker on another host looks like once killed); the other takes over by the heartbeat.
(o) the delivery rate of a steady load with a 10-second outage of its PostgreSQL in the middle,
    against the same load with none (see :mod:`bench.faults_outage`).

Nothing here asserts a timing. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import time
from typing import Any

import asyncpg

from bench.harness.databases import Databases, fetch_count, wait_until
from bench.harness.fleet import Member, open_delivery_ids, recovered_after
from bench.harness.loadgen import run_loadgen
from bench.harness.report import PartResult, Row
from bench.harness.run import Part, benchmark_parser, run_parts, selected, with_defaults
from bench.harness.service import ServiceFiles, free_port, write_config

BATCH = 8  # changes in flight at the kill
HUNG = [{"name": "app", "type": "noop", "delay": 60.0}]
HEALTHY = [{"name": "app", "type": "noop"}]
DELIVERY = {"workers": BATCH, "attempt_timeout": "90s", "lease": "180s"}


def member(files: ServiceFiles, url: str, name: str, role: Any, targets: Any, port: int) -> Member:
    doc = files.document(url, port, delivery=DELIVERY, targets=targets)
    config = write_config(files.root / f"{name}.toml", doc)
    return Member(name, role, config, port, files.root / f"{name}.log")


async def queue_in_flight(files: ServiceFiles, url: str, receiver_port: int, tag: str) -> list[Any]:
    """Send ``BATCH`` changes and wait until all are in flight; their delivery ids."""
    spec = {
        "url": f"http://127.0.0.1:{receiver_port}",
        "secret_file": str(files.secret_file),
        "senders": BATCH,
        "count": BATCH,
        "mode": "closed",
        "prefix": f"{tag}-",
        "warmup": 0,
    }
    await run_loadgen(spec)

    async def all_in_flight() -> bool:
        n = await fetch_count(url, "SELECT count(*) FROM pcns_deliveries WHERE state = 'in_flight'")
        return n == BATCH

    await wait_until(all_in_flight, timeout=30, interval=0.05)
    conn = await asyncpg.connect(url)
    try:
        return await open_delivery_ids(conn)
    finally:
        await conn.close()


async def only_process(dbs: Databases, files: ServiceFiles) -> tuple[float, float]:
    """(k): seconds from SIGKILL to every in-flight delivery delivered, and the restart's share."""
    url = await dbs.create("kill_only")
    port = free_port()
    hung = member(files, url, "only-hung", "all", HUNG, port)
    healthy = member(files, url, "only-healthy", "all", HEALTHY, port)
    await hung.start()
    try:
        ids = await queue_in_flight(files, url, port, "only")
        await hung.kill()
        killed = time.monotonic()
        restart = await healthy.start()
        took = await recovered_after(url, ids, killed, timeout=120)
    finally:
        await hung.stop()
        await healthy.stop()
    await dbs.drop(url)
    return (took if took is not None else float("inf")), restart


async def one_of_two(dbs: Databases, files: ServiceFiles, sig: signal.Signals) -> float:
    """(w), (s): seconds from ``sig`` to one of two workers until its deliveries are delivered."""
    url = await dbs.create("kill_one")
    rx_port = free_port()
    receiver = member(files, url, "rx", "receiver", HEALTHY, rx_port)
    hung = member(files, url, "worker-hung", "worker", HUNG, free_port())
    healthy = member(files, url, "worker-healthy", "worker", HEALTHY, free_port())
    await receiver.start()
    await hung.start()
    try:
        ids = await queue_in_flight(files, url, rx_port, "two")
        await healthy.start()
        assert hung.proc is not None
        hung.proc.send_signal(sig)
        killed = time.monotonic()
        took = await recovered_after(url, ids, killed, timeout=120)
        if sig == signal.SIGSTOP:
            hung.proc.send_signal(signal.SIGCONT)  # it finds itself declared dead, and fences
    finally:
        for m in (hung, healthy, receiver):
            await m.stop()
    await dbs.drop(url)
    return took if took is not None else float("inf")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} s [{min(values):.2f}..{max(values):.2f}]"


async def bench_kills(dbs: Databases, files: ServiceFiles, rounds: int, keys: str) -> PartResult:
    only: list[tuple[float, float]] = []
    killed: list[float] = []
    stopped: list[float] = []
    for r in range(rounds):
        if "k" in keys:
            only.append(await only_process(dbs, files))
        if "w" in keys:
            killed.append(await one_of_two(dbs, files, signal.SIGKILL))
        if "s" in keys:
            stopped.append(await one_of_two(dbs, files, signal.SIGSTOP))
        print(
            f"  round {r + 1}/{rounds}: only {only[-1:]}, one of two killed {killed[-1:]}, "
            f"stopped {stopped[-1:]}",
            file=sys.stderr,
            flush=True,
        )
    rows: list[Row] = []
    if only:
        rows += [
            (
                "(k)",
                f"kill -9 of the only process: {BATCH} in flight delivered after, restart "
                "included (target <= 10 s)",
                _spread([t for t, _ in only]),
            ),
            ("(k)", "  info: of which the restart until /readyz", _spread([s for _, s in only])),
        ]
    if killed:
        rows.append(
            (
                "(w)",
                f"kill -9 of one of two workers: {BATCH} in flight delivered after "
                "(target <= 20 s)",
                _spread(killed),
            )
        )
    if stopped:
        rows.append(
            (
                "(s)",
                f"SIGSTOP of one of two workers (heartbeat): {BATCH} delivered after",
                _spread(stopped),
            )
        )
    return rows, ["(k, w, s) delivery.heartbeat_interval 2 s, worker_timeout 10 s (defaults)"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = benchmark_parser("bench.faults", __doc__)
    p.add_argument("--quick", action="store_true", help="1 round")
    p.add_argument("--rounds", type=int, help="rounds, median reported (3)")
    p.add_argument("--parts", default="kwso", help="which parts: k, w, s, o (default: kwso)")
    p.add_argument("--outage", type=float, default=10.0, help="(o) seconds of outage (10)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return with_defaults(args, {"rounds": 1 if args.quick else 3})


def main() -> None:
    args = parse_args()

    async def kills(dbs: Databases, files: ServiceFiles) -> PartResult:
        return await bench_kills(dbs, files, args.rounds, args.parts)

    async def outage(dbs: Databases, files: ServiceFiles) -> PartResult:
        from bench.faults_outage import bench_outage

        return await bench_outage(files, rounds=args.rounds, outage=args.outage)

    parts: list[Part] = []
    if set("kws") & set(args.parts):
        parts.append(("k", "(k, w, s) in-flight deliveries after a worker dies or hangs", kills))
    parts += selected([("o", "(o) delivery rate across a database outage", outage)], args.parts)
    asyncio.run(run_parts(args, parts, f"medians of {args.rounds} round(s) [min..max]."))


if __name__ == "__main__":
    main()
