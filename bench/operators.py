"""Operators' queries on a queue of a million deliveries (issue 11), each beside a baseline
measured in the same run.

    .venv/bin/python -m bench.operators [--quick] [--parts 12] [--changes N] [--parked N]
        [--calls N] [--rounds N] [--load N] [--max-background CORES]

(i)  ``deliveries list`` latency: p50/p99 over N sequential calls of
     ``GET /v1/deliveries?account=<one account>`` (its 40 deliveries on eight targets), of one
     page (limit 50) of ``?target=T&state=parked``, and of that page a page deep (``before``),
     through the admin API of an in-process service (role ``receiver``), against as many
     ``GET /healthz`` (the HTTP floor) and the same statements through asyncpg directly (the
     database floor), interleaved call by call; with the scan nodes of each statement's plan.
(ii) accepted changes/s while one ``POST /v1/deliveries/retry {"target": T}`` retries the
     target's 100,000 parked deliveries, against the rate over the seconds just before it, in
     one run of the closed-loop load of ``bench.intake`` against the same service (role
     ``receiver``: no worker runs, so the retried rows become pending and stay so, and what is
     measured is the retry statement beside the intake, not deliveries).

Both parts work on one history built once (bench/harness/history.py): 125,000 changes to eight
``noop`` targets, mostly delivered, the newest 100,000 of target T parked. Nothing here asserts
a timing. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg

from bench.harness.cpu import CpuWindow, background_cores
from bench.harness.databases import Databases, fetch_count
from bench.harness.history import TARGETS, History, build_history, history_copy
from bench.harness.loadgen import RawConnection, closed_loop_spec
from bench.harness.plans import scan_nodes
from bench.harness.report import (
    PartResult,
    Row,
    cpu_line,
    median_background,
    median_rate,
    median_ratio,
    progress,
)
from bench.harness.run import Part, benchmark_parser, run_parts, selected, with_defaults
from bench.harness.service import ServiceFiles, free_port, in_process_service, settings_of
from bench.harness.sustained import Watch, Window, sustained_load, watching

TARGET_DOCS = [{"name": t, "type": "noop"} for t in TARGETS]
ACCOUNT = "user4321"  # five changes, each delivered to every target
PAGE = 50
WARMUP_CALLS = 20  # past the five custom plans after which a statement may go generic
WARM_SECONDS = 1.0  # of load before the idle window opens


def ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


# --- (i) list latency ---------------------------------------------------------------------


async def _page_ids(url: str, h: History) -> tuple[str, str, int]:
    """The ``before`` of the parked list's second page (the last id of the first), and of a
    page deep in it (the 1000th, or the last there is), with that page's number."""
    deep = min(1000, h.parked // PAGE)
    nth = (
        "SELECT id::text FROM pcns_deliveries WHERE target = $1 AND state = 'parked'"
        " ORDER BY id DESC OFFSET $2 LIMIT 1"
    )
    conn = await asyncpg.connect(url)
    try:
        second = await conn.fetchval(nth, h.parked_target, PAGE - 1)
        deeper = await conn.fetchval(nth, h.parked_target, (deep - 1) * PAGE - 1)
    finally:
        await conn.close()
    return second, deeper, deep


def _queries(h: History, second: str, deep: str, pages: int) -> dict[str, dict[str, str]]:
    parked = {"target": h.parked_target, "state": "parked", "limit": str(PAGE)}
    return {
        f"?account={ACCOUNT}": {"account": ACCOUNT},
        f"?target={h.parked_target}&state=parked&limit={PAGE}": parked,
        "  same, before = a page deep (page 2)": {**parked, "before": second},
        f"  info: same, page {pages}": {**parked, "before": deep},
    }


@dataclass
class ListResult:
    http: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    sql: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    found: dict[str, int] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    background: float | None = None


async def bench_list(files: ServiceFiles, url: str, h: History, calls: int) -> ListResult:
    from pcns.queue.operations import list_sql
    from pcns.receiver.admin_models import list_query

    out = ListResult()
    second, deep, pages = await _page_ids(url, h)
    queries = _queries(h, second, deep, pages)
    port = free_port()
    token = files.token_file.read_text(encoding="utf-8").strip()
    auth = {"Authorization": f"Bearer {token}"}

    def request(path: str) -> bytes:
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}"
        return (head + "\r\n\r\n").encode()

    paths = {label: "/v1/deliveries?" + urlencode(q) for label, q in queries.items()}
    wire = {"/healthz": request("/healthz")} | {k: request(p) for k, p in paths.items()}
    statements = {}
    for label, q in queries.items():
        page = list_query(q, [q["state"]] if "state" in q else [])  # as the API parses it
        statements[label] = list_sql(page.to_filter(), page.limit, page.before)
    settings = settings_of(files.document(url, port, targets=TARGET_DOCS))
    async with in_process_service(settings, "receiver"), aiohttp.ClientSession() as session:
        for label, path in paths.items():  # what the API answers, once, before the clock
            async with session.get(f"http://127.0.0.1:{port}{path}", headers=auth) as resp:
                out.found[label] = len((await resp.json())["deliveries"])
        _, raw = await asyncio.get_running_loop().create_connection(
            RawConnection, "127.0.0.1", port
        )
        conn = await asyncpg.connect(url)
        try:
            cpu = CpuWindow()
            for i in range(WARMUP_CALLS + calls):
                if i == WARMUP_CALLS:
                    cpu.begin()
                timed = i >= WARMUP_CALLS
                for label, data in wire.items():
                    started = time.perf_counter()
                    status = await raw.send(data)
                    if timed:
                        out.http[label].append(time.perf_counter() - started)
                        out.statuses[status] += 1
                for label, (sql, args) in statements.items():
                    started = time.perf_counter()
                    await conn.fetch(sql, *args)
                    if timed:
                        out.sql[label].append(time.perf_counter() - started)
            cpu.end()
            out.background = background_cores(cpu.used)
            for label, (sql, args) in statements.items():
                out.plans[label] = await scan_nodes(conn, sql, args)
        finally:
            await conn.close()
            assert raw.transport is not None
            raw.transport.close()
    return out


def list_rows(i: ListResult, calls: int) -> PartResult:
    def p(values: list[float]) -> str:
        return f"{ms(values, 0.5):8.2f} / {ms(values, 0.99):.2f} ms"

    rows: list[Row] = [("(i)", "GET /healthz (the HTTP floor)", p(i.http["/healthz"]))]
    notes = [f"(i) {calls} calls of each, interleaved call by call; p50 / p99. Plans:"]
    for label in i.sql:
        name = label if label.startswith(" ") else f"GET /v1/deliveries{label}"
        rows.append(("(i)", f"{name} ({i.found[label]} found)", p(i.http[label]) + "  (< 10 ms)"))
        rows.append(
            ("(i)", "    same statement through asyncpg (the database floor)", p(i.sql[label]))
        )
        own = ms(i.http[label], 0.5) - ms(i.http["/healthz"], 0.5) - ms(i.sql[label], 0.5)
        notes.append(f"    {label.strip()}: {i.plans[label]}; the service's own p50 {own:.2f} ms")
    bad = {k: v for k, v in i.statuses.items() if k != 200}
    background = "n/a" if i.background is None else f"{i.background:.2f}"
    notes.append(f"    other processes on the machine meanwhile: {background} cores")
    if bad:
        notes.append(f"(i) WARNING: answers other than 200: {bad}")
    return rows, notes


# --- (ii) intake during a bulk retry --------------------------------------------------------


@dataclass
class RetryResult:
    idle: list[Window] = field(default_factory=list)
    during: list[Window] = field(default_factory=list)
    watches: list[tuple[Watch, Watch]] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    load: int = 0  # signed POSTs the next round's load may send


async def retry_round(
    dbs: Databases,
    files: ServiceFiles,
    template: str,
    h: History,
    idle: float,
    r: int,
    out: RetryResult,
) -> None:
    url = await history_copy(dbs, template, "retry")
    port = free_port()
    settings = settings_of(files.document(url, port, targets=TARGET_DOCS))
    spec = {**closed_loop_spec(files, port, out.load), "prefix": f"op{r}-"}
    token = files.token_file.read_text(encoding="utf-8").strip()
    headers = {"Authorization": f"Bearer {token}", "pcns-actor": "bench"}
    retry_url = f"http://127.0.0.1:{port}/v1/deliveries/retry"

    async def quiesce() -> None:
        await dbs.quiesce(url, analyze=False)  # the copy keeps the template's statistics

    async with (
        in_process_service(settings, "receiver") as service,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session,
        sustained_load(spec, quiesce) as gen,
    ):
        await asyncio.sleep(WARM_SECONDS)
        async with gen.window(service) as before, watching(url, service) as idle_watch:
            await asyncio.sleep(idle)
        async with (
            gen.window(service) as during,
            watching(url, service) as retry_watch,
            session.post(retry_url, json={"target": h.parked_target}, headers=headers) as resp,
        ):
            status, body = resp.status, await resp.json()
        if not gen.running:
            out.warnings.append(f"round {r + 1}: the load ended before the retry; raise --load")
    if status != 200:
        out.warnings.append(f"round {r + 1}: the retry answered {status}: {body}")
    left = await fetch_count(
        url,
        "SELECT count(*) FROM pcns_deliveries WHERE target = $1 AND state = 'parked'",
        h.parked_target,
    )
    if left:
        out.warnings.append(f"round {r + 1}: {left} deliveries still parked after the retry")
    await dbs.drop(url)
    out.idle.append(before)
    out.during.append(during)
    out.watches.append((idle_watch, retry_watch))
    out.retried.append(int(body.get("count", 0)) if status == 200 else 0)


async def bench_retry(
    dbs: Databases, files: ServiceFiles, template: str, h: History, args: argparse.Namespace
) -> RetryResult:
    out, rounds = RetryResult(load=args.load), args.rounds
    for r in range(rounds):
        await retry_round(dbs, files, template, h, args.idle, r, out)
        # The next round's load: twice what this one needed (requests are signed up front).
        used = out.idle[-1].rate * (WARM_SECONDS + args.idle) + out.during[-1].changes
        out.load = max(out.load, int(2 * used))
        print(
            f"  (ii) round {r + 1}/{rounds}: accepted {out.idle[-1].rate:.0f}/s idle, "
            f"{out.during[-1].rate:.0f}/s during the retry of {out.retried[-1]} rows "
            f"({out.during[-1].seconds:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    return out


def _waits(watches: list[Watch]) -> str:
    total: Counter[str] = Counter()
    for w in watches:
        total.update(w.waits)
    return ", ".join(f"{k} {v}" for k, v in total.most_common(5)) or "none"


def retry_rows(ii: RetryResult) -> PartResult:
    paired = [d.rate / i.rate for i, d in zip(ii.idle, ii.during, strict=True) if i.rate]
    retried = statistics.median(ii.retried)
    seconds = [d.seconds for d in ii.during]
    rows: list[Row] = [
        (
            "(ii)",
            "accepted/s, role receiver, 8 noop targets, idle (just before)",
            median_rate([w.rate for w in ii.idle]),
        ),
        (
            "(ii)",
            f"accepted/s while POST /v1/deliveries/retry retries {retried:,.0f} rows",
            median_rate([w.rate for w in ii.during]),
        ),
        ("(ii)", "accept rate during the retry / idle, per round", median_ratio(paired, ">= 0.7x")),
        (
            "(ii)",
            "  info: the retry's answer time under that load",
            f"{statistics.median(seconds):8.2f} s  [{min(seconds):.2f}..{max(seconds):.2f}]",
        ),
        (
            "(ii)",
            "  info: longest stretch with no change accepted, idle / during",
            f"{statistics.median(w[0].longest_stall for w in ii.watches) * 1000:8.0f} / "
            f"{statistics.median(w[1].longest_stall for w in ii.watches) * 1000:.0f} ms",
        ),
    ]
    n_idle = statistics.median(w.changes for w in ii.idle)
    n_during = statistics.median(w.changes for w in ii.during)
    wal = statistics.median(w[1].wal_bytes for w in ii.watches) / 2**20
    notes = [
        "(ii) CPU ms per 1000 accepted changes (this process: service and retry request, "
        "load generator, postgres):",
        cpu_line("idle", [w.cpu for w in ii.idle], int(n_idle)),
        cpu_line("retry", [w.cpu for w in ii.during], int(n_during)),
        f"    waits of the database's active client backends (samples every 0.1 s): idle "
        f"{_waits([w[0] for w in ii.watches])}; retry {_waits([w[1] for w in ii.watches])}",
        f"    WAL written during the retry window: {wal:.0f} MiB (median)",
        f"    other processes on the machine meanwhile: "
        f"{median_background([w.cpu for w in ii.idle + ii.during])} cores (median)",
    ]
    return rows, notes + [f"(ii) WARNING: {w}" for w in ii.warnings]


# --- command line -----------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    h = History(changes=args.changes, parked=args.parked)
    made: list[str] = []

    async def template(dbs: Databases, files: ServiceFiles) -> str:
        if not made:
            started = time.perf_counter()
            progress(f"  building {h.rows:,} deliveries, {h.parked:,} parked (template database)")
            url = await dbs.create("history")
            await build_history(url, files.keyring, h)
            await dbs.quiesce(url, analyze=True)
            made.append(url)
            print(f"  built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        return made[0]

    async def lists(dbs: Databases, files: ServiceFiles) -> PartResult:
        url = await history_copy(dbs, await template(dbs, files), "lists")
        await dbs.quiesce(url, analyze=False)
        i = await bench_list(files, url, h, args.calls)
        await dbs.drop(url)
        return list_rows(i, args.calls)

    async def retry(dbs: Databases, files: ServiceFiles) -> PartResult:
        source = await template(dbs, files)
        ii = await bench_retry(dbs, files, source, h, args)
        return retry_rows(ii)

    parts: list[Part] = [
        ("1", "(i) deliveries list latency", lists),
        ("2", "(ii) intake during a bulk retry", retry),
    ]
    how = f"(ii): medians of {args.rounds} round(s) [min..max]."
    await run_parts(args, selected(parts, args.parts), how)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = benchmark_parser("bench.operators", __doc__)
    p.add_argument("--parts", default="12", help="1: list latency, 2: intake during a retry")
    p.add_argument("--quick", action="store_true", help="a quarter of the history, 1 round")
    p.add_argument("--changes", type=int, help="changes in the history, x8 deliveries (125000)")
    p.add_argument("--parked", type=int, help="parked deliveries of the broken target (100000)")
    p.add_argument("--calls", type=int, help="(i) calls of each query and floor (1000)")
    p.add_argument("--rounds", type=int, help="(ii) rounds, median reported (3)")
    p.add_argument(
        "--load",
        type=int,
        help="(ii) signed POSTs the first round's load may send"
        " (60000), raised for later rounds to twice what a round used",
    )
    p.add_argument("--idle", type=float, help="(ii) seconds of the idle window (5)")
    args = p.parse_args(argv)
    quick = args.quick
    defaults: dict[str, Any] = {
        "changes": 31_250 if quick else 125_000,
        "parked": 25_000 if quick else 100_000,
        "calls": 200 if quick else 1000,
        "rounds": 1 if quick else 3,
        "load": 20_000 if quick else 60_000,
        "idle": 3.0 if quick else 5.0,
    }
    return with_defaults(args, defaults)


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
