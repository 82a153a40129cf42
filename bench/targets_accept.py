"""Part (ii) of ``python -m bench.targets``: accepted changes/s through the signed HTTP API (the
load of ``bench.intake``) while the argon2id target is busy hashing a backlog (role ``all``),
against the rate with nothing being delivered (role ``receiver``, same configuration and
queue). For information: role ``all`` with the target replaced by a ``noop`` that waits 0.1 s,
i.e. deliveries flowing at about the same rate, but without the hashing; and role ``receiver``
beside a lowest-priority busy loop in another process."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.harness.backlog import backlog_template
from bench.harness.databases import Databases, wait_until
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
    delivered_count,
    free_port,
    in_process_service,
    settings_of,
)
from bench.targets_delivery import TARGET, WORKERS, sql_target, users_database

if TYPE_CHECKING:
    from pcns.config import Role

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
    role: Role,
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
                await wait_until(
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
    template = await backlog_template(
        dbs, files, backlog, label="busy_template", target=TARGET, due="now"
    )
    app_url = await users_database(dbs, backlog)
    hashing = sql_target(app_url)
    waiting = {"name": TARGET, "type": "noop", "delay": NOOP_DELAY}
    out = AcceptResult()
    runs: list[tuple[list[Accepting], dict[str, Any], Role, str]] = [
        (out.idle, hashing, "receiver", "idle"),
        (out.busy, hashing, "all", "busy"),
        (out.control, waiting, "all", "noop"),
        (out.spinning, hashing, "receiver", "spin"),
    ]
    for r in range(rounds):
        for results, target, role, label in runs:
            results.append(
                await accept_while(
                    dbs,
                    files,
                    template,
                    target,
                    role=role,
                    count=count,
                    prefix=f"t{r}{label}-",
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


def accept_rows(ii: AcceptResult, count: int) -> PartResult:
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
            median_rate(rates(ii.idle)),
        ),
        (
            "(ii)",
            f"accepted/s, same, role all, target busy hashing ({flowing(ii.busy)})",
            median_rate(rates(ii.busy)),
        ),
        ("(ii)", "accept rate busy / idle, per round", median_ratio(paired, ">= 0.9x")),
        (
            "(ii)",
            f"  info: role all, {NOOP_DELAY:g}-s noop target instead ({flowing(ii.control)})",
            median_rate(rates(ii.control)),
        ),
        ("(ii)", "  info: noop-target rate / idle, per round", median_ratio(control, "none")),
        (
            "(ii)",
            "  info: role receiver beside a busy loop in another process (nice 19, SCHED_IDLE)",
            median_rate(rates(ii.spinning)),
        ),
        ("(ii)", "  info: busy-loop rate / idle, per round", median_ratio(spinning, "none")),
    ]
    every = [a.http.cpu for a in ii.idle + ii.busy + ii.control]

    def loop_line(label: str, runs: list[Accepting]) -> str:
        ms = sorted(a.loop_cpu * 1e6 / count for a in runs)[len(runs) // 2]
        cores = sorted(a.loop_cpu / a.http.elapsed for a in runs)[len(runs) // 2]
        return f"      {label:<11}: {ms:4.0f} ms per 1000 requests, {cores:.2f} cores"

    notes = [
        "(ii) CPU ms per 1000 requests (server process with its hashing threads, load generator, "
        "postgres):",
        cpu_line("idle", [a.http.cpu for a in ii.idle], count),
        cpu_line("busy", [a.http.cpu for a in ii.busy], count),
        cpu_line("noop 0.1 s", [a.http.cpu for a in ii.control], count),
        cpu_line("busy loop", [a.http.cpu for a in ii.spinning], count),
        "    of which the event-loop thread (HTTP, intake, worker loop):",
        loop_line("idle", ii.idle),
        loop_line("busy", ii.busy),
        loop_line("noop 0.1 s", ii.control),
        loop_line("busy loop", ii.spinning),
        f"    other processes on the machine meanwhile: {median_background(every)} cores (median)",
    ]
    runs = ii.idle + ii.busy + ii.control + ii.spinning
    return out, notes + answers_warning("(ii)", [a.http for a in runs])
