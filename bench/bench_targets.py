"""Hashing-target benchmarks of pcns (issue 4), each a ratio to a baseline measured in the same run.

    .venv/bin/python bench/bench_targets.py [--quick] [--deliveries N] [--max-background CORES]

(i)  deliveries/s draining N queued changes to an argon2id ``sql`` target (a real PostgreSQL
     ``users`` table in a scratch database, ``UPDATE users SET pw = :hash WHERE login =
     :account``) with the service's default delivery settings (role ``worker``), against N
     argon2id hashes computed alone with the same parallelism: ``delivery.workers`` (8)
     coroutines, each awaiting ``targets.hashing.hash_password_async`` on the same event loop
     and so the same hashing pool (all cores but one, at nice 19). A
     single thread's rate is shown too.
(ii) accepted changes/s through the signed HTTP API (the load of bench_core (a)) while that target
     is busy hashing a backlog (role ``all``), against the rate with nothing being delivered
     (role ``receiver``, same configuration and queue). For information: role ``all`` with the
     target replaced by a ``noop`` that waits 0.1 s, i.e. deliveries flowing at about the same
     rate, but without the hashing.

Uses bench_core's scratch databases, service start-up, load generator, CPU accounting and table.
Nothing here asserts a timing. See docs/benchmarks.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` as a package

import argparse
import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench.bench_core import (
    PASSWORD,
    CpuWindow,
    Databases,
    Drain,
    HttpRun,
    Row,
    ServiceFiles,
    _background,
    _cpu_line,
    _rate,
    _ratio,
    _wait_until,
    answers_warning,
    benchmark_parser,
    closed_loop_spec,
    delivered_count,
    free_port,
    in_process_service,
    pcns_drain,
    queue_backlog,
    run_loadgen,
    run_parts,
    settings_of,
    with_defaults,
)
from targets.hashing import hashing_threads

WORKERS = 8  # DeliverySettings().workers, the default the service runs with


TARGET = "app"
QUERY = "UPDATE users SET pw = :hash WHERE login = :account"
NOOP_DELAY = 0.1  # (ii) control: 8 workers x 0.1 s ~ 80 deliveries/s, about argon2id's rate here
# (ii) second control: a process unrelated to pcns that only burns CPU, at the lowest priority
# the kernel offers (nice 19, and SCHED_IDLE where allowed), beside an idle receiver.
BUSY_LOOP = (
    "import contextlib, os\n"
    "os.nice(19)\n"
    "with contextlib.suppress(OSError, AttributeError):\n"
    "    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
    "while True:\n"
    "    pass\n"
)


def sql_target(app_url: str) -> dict[str, Any]:
    return {"name": TARGET, "type": "sql", "dsn": app_url, "query": QUERY, "hash": "argon2id"}


async def users_database(dbs: Databases, accounts: int) -> str:
    """The application's own database: a ``users`` table with ``mem-0 .. mem-<accounts-1>``,
    the accounts ``queue_backlog`` queues changes for."""
    url = await dbs.create("app")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE users (login text PRIMARY KEY, pw text)")
        await conn.execute(
            "INSERT INTO users SELECT 'mem-' || g, NULL FROM generate_series(0, $1 - 1) g",
            accounts,
        )
        await conn.execute("VACUUM ANALYZE users")
    finally:
        await conn.close()
    return url


async def backlog_template(dbs: Databases, files: ServiceFiles, n: int, label: str) -> str:
    """``n`` changes for the target, due now; each run gets an identical copy of it."""
    url = await dbs.create(label)
    await queue_backlog(url, files, n, target=TARGET, due="now")
    await dbs.quiesce(url, analyze=True)
    return url


# --------------------------------------------------------------------------------------------
# (i) deliveries/s to the argon2id sql target against hashes/s alone
# --------------------------------------------------------------------------------------------


async def hashes_alone(n: int, concurrency: int, *, own_thread: bool = False) -> Drain:
    """``n`` argon2id hashes of the benchmark's passwords, ``concurrency`` at a time, each through
    ``hash_password_async`` (the service's hashing pool), or, with
    ``own_thread``, all on a single thread: one core's rate."""
    from concurrent.futures import ThreadPoolExecutor

    from targets.base import Password
    from targets.hashing import hash_password, hash_password_async

    passwords = iter(range(n))
    single = ThreadPoolExecutor(max_workers=1) if own_thread else None
    loop = asyncio.get_running_loop()

    async def hasher() -> None:
        for i in passwords:
            password = Password(f"{PASSWORD}{i}")
            if single is None:
                await hash_password_async("argon2id", password)
            else:
                await loop.run_in_executor(single, hash_password, "argon2id", password)

    window = CpuWindow()
    window.begin()
    started = time.perf_counter()
    await asyncio.gather(*(hasher() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    window.end()
    if single is not None:
        single.shutdown()
    return Drain(n / elapsed, window.used)


async def check_target_hashes(app_url: str, n: int) -> None:
    """Every account got a hash, and the first one verifies with the library's own check."""
    from targets.base import Password
    from targets.hashing import verify_password

    conn = await asyncpg.connect(app_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM users WHERE pw LIKE '$argon2id$%'")
        first = await conn.fetchval("SELECT pw FROM users WHERE login = 'mem-0'")
    finally:
        await conn.close()
    ok = first is not None and verify_password("argon2id", Password(f"{PASSWORD}0"), first)
    if stored != n or not ok:
        print(
            f"  (i) WARNING: {stored} argon2id hashes stored, mem-0 verifies: {ok}", file=sys.stderr
        )


@dataclass
class HashingResult:
    deliveries: list[Drain] = field(default_factory=list)
    alone: list[Drain] = field(default_factory=list)
    one_thread: list[Drain] = field(default_factory=list)


async def bench_hashing_target(
    dbs: Databases, files: ServiceFiles, *, n: int, rounds: int
) -> HashingResult:
    from targets.base import load_target_types

    load_target_types()  # adapter modules imported once, as in a running worker
    template = await backlog_template(dbs, files, n, "hash_template")
    out = HashingResult()
    for r in range(rounds):
        app_url = await users_database(dbs, n)
        url = await dbs.create("deliver", template=template)
        settings = settings_of(files.document(url, free_port(), targets=[sql_target(app_url)]))
        out.deliveries.append(await pcns_drain(dbs, url, settings, n, target=TARGET, part="(i)"))
        await check_target_hashes(app_url, n)
        await dbs.drop(url)
        await dbs.drop(app_url)
        await dbs.quiesce(dbs.server_url, analyze=False)
        out.alone.append(await hashes_alone(n, WORKERS))
        out.one_thread.append(await hashes_alone(max(1, n // 4), 1, own_thread=True))
        print(
            f"  (i) round {r + 1}/{rounds}: {out.deliveries[-1].rate:.1f} deliveries/s, "
            f"{out.alone[-1].rate:.1f} hashes/s alone ({WORKERS} in flight), "
            f"{out.one_thread[-1].rate:.1f} hashes/s on one thread",
            file=sys.stderr,
            flush=True,
        )
    return out


# --------------------------------------------------------------------------------------------
# (ii) accept rate while the target hashes, against idle
# --------------------------------------------------------------------------------------------


@dataclass
class Accepting:
    http: HttpRun
    loop_cpu: float  # CPU seconds of the event-loop thread over the timed window
    delivered: float  # deliveries completed over the timed window


async def accept_while(
    dbs: Databases,
    files: ServiceFiles,
    template: str,
    target: dict[str, Any],
    *,
    role: str,
    count: int,
    prefix: str,
    busy_loop: bool = False,
) -> Accepting:
    """Accept rate of a service in ``role`` over a copy of the backlog; with role ``all`` the
    window opens once the worker is delivering. ``busy_loop`` runs :data:`BUSY_LOOP` in its own
    process over the window."""
    url = await dbs.create("accept", template=template)
    port = free_port()
    settings = settings_of(files.document(url, port, targets=[target]))
    marks: dict[str, float] = {}
    spinner: list[asyncio.subprocess.Process] = []
    # Before the service starts: once the worker runs, this process itself keeps the machine
    # busy, and a wait for a quiet machine would only let it drain the backlog.
    await dbs.quiesce(url, analyze=True)
    async with in_process_service(settings, role) as service:

        async def go() -> None:
            if role == "all":
                await _wait_until(
                    lambda: delivered_count(service, TARGET) >= WORKERS, timeout=60, interval=0.01
                )
            if busy_loop:
                proc = await asyncio.create_subprocess_exec(sys.executable, "-c", BUSY_LOOP)
                spinner.append(proc)
                await asyncio.sleep(0.2)
            marks["delivered"] = delivered_count(service, TARGET)
            marks["loop"] = time.thread_time()  # this thread runs the service's event loop

        try:
            spec = {**closed_loop_spec(files, port, count), "prefix": prefix}
            http = await run_loadgen(spec, go)
        finally:
            for proc in spinner:
                proc.kill()
                await proc.wait()
        loop_cpu = time.thread_time() - marks["loop"]
        delivered = delivered_count(service, TARGET) - marks["delivered"]
    if role == "all" and not delivered:
        print("  (ii) WARNING: nothing was delivered during the window", file=sys.stderr)
    await dbs.drop(url)
    return Accepting(http, loop_cpu, delivered)


@dataclass
class AcceptResult:
    idle: list[Accepting] = field(default_factory=list)
    busy: list[Accepting] = field(default_factory=list)
    control: list[Accepting] = field(default_factory=list)
    spinning: list[Accepting] = field(default_factory=list)


async def bench_accept(
    dbs: Databases, files: ServiceFiles, *, count: int, backlog: int, rounds: int
) -> AcceptResult:
    template = await backlog_template(dbs, files, backlog, "busy_template")
    app_url = await users_database(dbs, backlog)
    hashing = sql_target(app_url)
    waiting = {"name": TARGET, "type": "noop", "delay": NOOP_DELAY}
    out = AcceptResult()
    for r in range(rounds):
        for runs, target, role, label in (
            (out.idle, hashing, "receiver", "idle"),
            (out.busy, hashing, "all", "busy"),
            (out.control, waiting, "all", "noop"),
            (out.spinning, hashing, "receiver", "spin"),
        ):
            prefix = f"t{r}{label}-"
            runs.append(
                await accept_while(
                    dbs,
                    files,
                    template,
                    target,
                    role=role,
                    count=count,
                    prefix=prefix,
                    busy_loop=label == "spin",
                )
            )
        print(
            f"  (ii) round {r + 1}/{rounds}: accepted {out.idle[-1].http.rate:.0f}/s idle, "
            f"{out.busy[-1].http.rate:.0f}/s while hashing "
            f"({out.busy[-1].delivered / out.busy[-1].http.elapsed:.0f} deliveries/s), "
            f"{out.control[-1].http.rate:.0f}/s with a 0.1-s noop target "
            f"({out.control[-1].delivered / out.control[-1].http.elapsed:.0f} deliveries/s), "
            f"{out.spinning[-1].http.rate:.0f}/s idle beside a lowest-priority busy loop",
            file=sys.stderr,
            flush=True,
        )
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _per_s(values: list[float], unit: str) -> str:
    return _rate(values).replace(" /s", f" {unit}/s", 1)


def hashing_rows(i: HashingResult, n: int) -> tuple[list[Row], list[str]]:
    paired = [d.rate / a.rate for d, a in zip(i.deliveries, i.alone, strict=True)]
    out: list[Row] = [
        (
            "(i)",
            f"deliveries/s, argon2id sql target, {n} changes, delivery defaults",
            _per_s([d.rate for d in i.deliveries], "deliveries"),
        ),
        (
            "(i)",
            f"argon2id hashes/s alone, {WORKERS} in flight, pool of {hashing_threads()} threads",
            _per_s([a.rate for a in i.alone], "hashes"),
        ),
        (
            "(i)",
            "  info: argon2id hashes/s on a single thread (one core)",
            _per_s([a.rate for a in i.one_thread], "hashes"),
        ),
        ("(i)", "deliveries/s / hashes/s alone, per round", _ratio(paired, ">= 0.8x")),
    ]
    kinds = ("server", "postgres")
    every = [d.cpu for d in i.deliveries + i.alone + i.one_thread]
    notes = [
        "(i) CPU ms per delivery or hash (this process, its hashing threads included; postgres):",
        _cpu_line("deliveries", [d.cpu for d in i.deliveries], n * 1000, kinds),
        _cpu_line("hash alone", [a.cpu for a in i.alone], n * 1000, kinds),
        _cpu_line("one thread", [a.cpu for a in i.one_thread], max(1, n // 4) * 1000, kinds),
        f"    other processes on the machine meanwhile: {_background(every)} cores (median)",
    ]
    return out, notes


def accept_rows(ii: AcceptResult, count: int) -> tuple[list[Row], list[str]]:
    def rates(runs: list[Accepting]) -> list[float]:
        return [a.http.rate for a in runs]

    def flowing(runs: list[Accepting]) -> str:
        median = sorted(a.delivered / a.http.elapsed for a in runs)[len(runs) // 2]
        return f"{median:.0f} deliveries/s meanwhile"

    paired = [b.http.rate / a.http.rate for a, b in zip(ii.idle, ii.busy, strict=True)]
    control = [c.http.rate / a.http.rate for a, c in zip(ii.idle, ii.control, strict=True)]
    spinning = [c.http.rate / a.http.rate for a, c in zip(ii.idle, ii.spinning, strict=True)]
    out: list[Row] = [
        (
            "(ii)",
            f"accepted/s, {count} signed POSTs, idle (role receiver, backlog waiting)",
            _rate(rates(ii.idle)),
        ),
        (
            "(ii)",
            f"accepted/s, same, role all, target busy hashing ({flowing(ii.busy)})",
            _rate(rates(ii.busy)),
        ),
        ("(ii)", "accept rate busy / idle, per round", _ratio(paired, ">= 0.9x")),
        (
            "(ii)",
            f"  info: role all, {NOOP_DELAY:g}-s noop target instead ({flowing(ii.control)})",
            _rate(rates(ii.control)),
        ),
        ("(ii)", "  info: noop-target rate / idle, per round", _ratio(control, "none")),
        (
            "(ii)",
            "  info: role receiver beside a busy loop in another process (nice 19, SCHED_IDLE)",
            _rate(rates(ii.spinning)),
        ),
        ("(ii)", "  info: busy-loop rate / idle, per round", _ratio(spinning, "none")),
    ]
    every = [a.http.cpu for a in ii.idle + ii.busy + ii.control]

    def loop_line(label: str, runs: list[Accepting]) -> str:
        ms = sorted(a.loop_cpu * 1e6 / count for a in runs)[len(runs) // 2]
        cores = sorted(a.loop_cpu / a.http.elapsed for a in runs)[len(runs) // 2]
        return f"      {label:<11}: {ms:4.0f} ms per 1000 requests, {cores:.2f} cores"

    notes = [
        "(ii) CPU ms per 1000 requests (server process with its hashing threads, load generator, "
        "postgres):",
        _cpu_line("idle", [a.http.cpu for a in ii.idle], count),
        _cpu_line("busy", [a.http.cpu for a in ii.busy], count),
        _cpu_line("noop 0.1 s", [a.http.cpu for a in ii.control], count),
        _cpu_line("busy loop", [a.http.cpu for a in ii.spinning], count),
        "    of which the event-loop thread (HTTP, intake, worker loop):",
        loop_line("idle", ii.idle),
        loop_line("busy", ii.busy),
        loop_line("noop 0.1 s", ii.control),
        loop_line("busy loop", ii.spinning),
        f"    other processes on the machine meanwhile: {_background(every)} cores (median)",
    ]
    runs = ii.idle + ii.busy + ii.control + ii.spinning
    return out, notes + answers_warning("(ii)", [a.http for a in runs])


async def main(args: argparse.Namespace) -> None:
    async def deliveries(dbs: Databases, files: ServiceFiles) -> tuple[list[Row], list[str]]:
        i = await bench_hashing_target(dbs, files, n=args.deliveries, rounds=args.rounds)
        return hashing_rows(i, args.deliveries)

    async def accepting(dbs: Databases, files: ServiceFiles) -> tuple[list[Row], list[str]]:
        ii = await bench_accept(
            dbs, files, count=args.changes, backlog=args.backlog, rounds=args.rounds
        )
        return accept_rows(ii, args.changes)

    await run_parts(
        args,
        [
            ("1", "(i) deliveries to an argon2id sql target vs hashes alone", deliveries),
            ("2", "(ii) accept rate while the target hashes vs idle", accepting),
        ],
        f"medians of {args.rounds} round(s) [min..max]. Hashing parallelism: {WORKERS} attempts "
        f"in flight (delivery.workers), {hashing_threads()} threads in the hashing pool "
        f"(nice 19), {os.cpu_count()} cores; argon2id m=19 MiB, t=2, p=1.",
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = benchmark_parser(__doc__)
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
