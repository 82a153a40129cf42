"""Part (ii) of ``python -m bench.keys``: accepted changes/s through the signed HTTP API (role
``receiver``, the load of ``bench.intake``) over a copy of the backlog, before a rotation, and
while ``pcns keys rewrap`` runs as its own process against the same database."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness.cpu import proc_cpu
from bench.harness.databases import Databases, fetch_count, wait_until
from bench.harness.loadgen import HttpRun, closed_loop_spec, run_loadgen
from bench.harness.report import (
    PartResult,
    Row,
    answers_warning,
    cpu_line,
    median_background,
    median_rate,
    median_ratio,
)
from bench.harness.service import (
    ServiceFiles,
    free_port,
    in_process_service,
    settings_of,
    write_config,
)
from bench.keys_rewrap import ACTOR, UNDER_OLD_KEYS, rotated

_REWRAP_STARTED = "SELECT count(*) FROM pcns_key_audit WHERE action = 'rewrap-start'"
_SEALED_BY = "SELECT count(*) FROM pcns_deliveries WHERE ciphertext IS NOT NULL AND key_id = $1"


async def start_rewrap(url: str, config: Path) -> asyncio.subprocess.Process:
    """``pcns keys rewrap`` as its own process, as an operator runs it; returns once it has
    loaded the keys, counted its work and audited ``rewrap-start``, i.e. its batches begin."""
    command = ["-m", "pcns", "keys", "rewrap", "--config", str(config), "--actor", ACTOR]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )

    async def started() -> bool:
        return proc.returncode is not None or await fetch_count(url, _REWRAP_STARTED) > 0

    await wait_until(started, timeout=60, interval=0.01)
    return proc


@dataclass
class AcceptResult:
    before: list[HttpRun] = field(default_factory=list)
    during: list[HttpRun] = field(default_factory=list)
    rewrap_rate: list[float] = field(default_factory=list)  # rows/s of the whole rewrap, loaded
    in_window: list[int] = field(default_factory=list)  # rows rewrapped inside the timed window
    left_at_end: list[int] = field(default_factory=list)  # rows still under the old key then
    summaries: list[str] = field(default_factory=list)


async def accept_round(
    dbs: Databases, files: ServiceFiles, template: str, *, count: int, r: int, out: AcceptResult
) -> None:
    url = await dbs.create("accept", template=template)
    port = free_port()
    doc = files.document(url, port)
    config = write_config(files.root / "keys-accept.toml", doc)
    spec = closed_loop_spec(files, port, count)
    rewrap: list[tuple[asyncio.subprocess.Process, float, int, float]] = []

    async def quiesce() -> None:
        await dbs.quiesce(url, analyze=True)

    async def rewrap_under_way() -> None:
        await quiesce()
        started = time.perf_counter()
        proc = await start_rewrap(url, config)
        left = await fetch_count(url, _SEALED_BY, old)
        rewrap.append((proc, started, left, proc_cpu(proc.pid)))

    async with in_process_service(settings_of(doc), "receiver"):
        out.before.append(await run_loadgen({**spec, "prefix": f"kb{r}-"}, quiesce))
        # The CLI's default propagation is refresh_interval + 1 s; the service also reloads on
        # the NOTIFY at once, so 2 s is ample here.
        old, _ = await rotated(url, files, propagation=2.0)
        during = await run_loadgen({**spec, "prefix": f"kd{r}-"}, rewrap_under_way)
        proc, started, left_at_go, cpu_at_go = rewrap[0]
        running = proc.returncode is None
        left = await fetch_count(url, _SEALED_BY, old)
        if running:  # the rewrap process's CPU over the window (once it exits, it is gone)
            during.cpu["rewrap"] = proc_cpu(proc.pid) - cpu_at_go
        assert proc.stdout is not None
        summary = (await proc.stdout.read()).decode().strip()
        await proc.wait()
        elapsed = time.perf_counter() - started
    out.during.append(during)
    out.in_window.append(left_at_go - left)
    out.left_at_end.append(left)
    total = int(m[1]) if (m := re.search(r"rewrapped (\d+)", summary)) else 0
    out.rewrap_rate.append(total / elapsed)
    out.summaries.append(summary)
    unwrapped = await fetch_count(url, UNDER_OLD_KEYS)
    if unwrapped or not running or not left:
        print(
            f"  (ii) WARNING: the rewrap did not cover the whole window ({left} rows left at "
            f"its end, process running: {running}), or left {unwrapped} under an old key",
            file=sys.stderr,
        )
    await dbs.drop(url)


async def bench_accept(
    dbs: Databases, files: ServiceFiles, template: str, *, count: int, rounds: int
) -> AcceptResult:
    out = AcceptResult()
    for r in range(rounds):
        await accept_round(dbs, files, template, count=count, r=r, out=out)
        print(
            f"  (ii) round {r + 1}/{rounds}: accepted {out.before[-1].rate:.0f}/s before, "
            f"{out.during[-1].rate:.0f}/s during the rewrap ({out.summaries[-1]})",
            file=sys.stderr,
            flush=True,
        )
    return out


def accept_rows(ii: AcceptResult, count: int) -> PartResult:
    paired = [d.rate / b.rate for b, d in zip(ii.before, ii.during, strict=True)]
    out: list[Row] = [
        (
            "(ii)",
            f"accepted/s, role receiver, {count} signed POSTs, before rotation",
            median_rate([x.rate for x in ii.before]),
        ),
        (
            "(ii)",
            "accepted/s, same, while `pcns keys rewrap` runs",
            median_rate([x.rate for x in ii.during]),
        ),
        ("(ii)", "accept rate during / before, per round", median_ratio(paired, ">= 0.7x")),
        (
            "(ii)",
            "  info: whole rewrap's rate while the load ran",
            median_rate(ii.rewrap_rate, "rows"),
        ),
    ]
    kinds = ("server", "client", "postgres", "rewrap")
    notes = [
        "(ii) CPU ms per 1000 requests (server process, load generator, postgres, rewrap process):",
        cpu_line("before", [x.cpu for x in ii.before], count, kinds),
        cpu_line("during", [x.cpu for x in ii.during], count, kinds),
        f"    other processes on the machine meanwhile: "
        f"{median_background([x.cpu for x in ii.before + ii.during])} cores (median)",
        f"    rows rewrapped inside the timed windows: {', '.join(map(str, ii.in_window))}; "
        f"still under the old key when they ended: {', '.join(map(str, ii.left_at_end))}",
        f"    the rewrap reported: {'; '.join(sorted(set(ii.summaries)))}",
    ]
    return out, notes + answers_warning("(ii)", ii.before + ii.during)
