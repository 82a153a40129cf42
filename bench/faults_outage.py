"""Part (o) of ``python -m bench.faults``: the delivery rate across a database outage.

``pcns serve`` (role ``all``, a ``noop`` target) on a private PostgreSQL cluster started for
the run (:mod:`bench.harness.pgcluster`), under a steady signed load (``RATE`` changes/s for
``DURATION`` s, each change resent, same webhook-id, after a 503 or a connection error as a
hook does). In the outage run the cluster is crashed (``pg_ctl stop -m immediate``) a third of
the way in and started again ``outage`` s later; the same process rides it out. The rate is
every acknowledged change handled (delivered, or superseded by a newer change of its account
that was), over the time from the first change accepted to the last one finished; the run
without an outage is the baseline.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from dataclasses import dataclass

import asyncpg

from bench.harness.fleet import Member, wait_drained
from bench.harness.pgcluster import PgCluster, find_bin_dir, server_user
from bench.harness.report import PartResult, Row, median_ratio
from bench.harness.service import ServiceFiles, free_port, write_config
from bench.harness.signed_load import SignedLoad

RATE = 50.0
DURATION = 30.0
ACCOUNTS = 200
_SPAN = """
SELECT count(*) FILTER (WHERE state = 'delivered') AS delivered,
       count(*) FILTER (WHERE state = 'superseded') AS superseded, count(*) AS total,
       extract(epoch FROM max(finished_at) - min(created_at))::float8 AS span
FROM pcns_deliveries
"""


@dataclass(frozen=True)
class OutageRun:
    outage: float
    acknowledged: int
    delivered: int
    superseded: int
    other: int  # rows neither delivered nor superseded by a newer delivered change
    rate: float
    resent_503: int
    worst_ack_s: float


async def outage_run(files: ServiceFiles, outage: float, tag: str) -> OutageRun:
    from pcns.secret_files import read_webhook_secret

    bin_dir, user = find_bin_dir(), server_user()
    if bin_dir is None:
        raise RuntimeError("(o) needs PostgreSQL's server binaries (initdb, pg_ctl)")
    cluster = PgCluster(bin_dir, user)
    await asyncio.to_thread(cluster.__enter__)
    port = free_port()
    try:
        url = cluster.primary.url
        doc = files.document(url, port, targets=[{"name": "app", "type": "noop"}])
        config = write_config(files.root / f"outage-{tag}.toml", doc)
        service = Member(f"outage-{tag}", "all", config, port, files.root / f"outage-{tag}.log")
        await service.start()
        accounts = [f"out-{i}" for i in range(ACCOUNTS)]
        load = SignedLoad(
            [f"http://127.0.0.1:{port}"],
            read_webhook_secret(files.secret_file),
            accounts,
            RATE,
            random.Random(7),
        )
        stop, give_up = asyncio.Event(), asyncio.Event()
        sending = asyncio.create_task(load.run(stop, give_up))
        try:
            await asyncio.sleep(DURATION / 3)
            if outage:
                await asyncio.to_thread(cluster.primary.stop, "immediate")
                await asyncio.sleep(outage)
                await asyncio.to_thread(cluster.primary.start)
            await asyncio.sleep(DURATION - DURATION / 3 - outage)
        finally:
            stop.set()
            asyncio.get_running_loop().call_later(60, give_up.set)
            await sending
        await wait_drained(url, timeout=120)
        await service.stop()
        conn = await asyncpg.connect(url)
        try:
            row = await conn.fetchrow(_SPAN)
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(cluster.__exit__, None, None, None)
    assert row is not None
    return OutageRun(
        outage=outage,
        acknowledged=len(load.acks),
        delivered=row["delivered"],
        superseded=row["superseded"],
        other=row["total"] - row["delivered"] - row["superseded"],
        rate=(row["delivered"] + row["superseded"]) / row["span"] if row["span"] else 0.0,
        resent_503=load.retries.get("503", 0),
        worst_ack_s=max((a.latency for a in load.acks), default=0.0),
    )


async def bench_outage(files: ServiceFiles, *, rounds: int, outage: float) -> PartResult:
    calm: list[OutageRun] = []
    hit: list[OutageRun] = []
    for r in range(rounds):
        started = time.monotonic()
        calm.append(await outage_run(files, 0.0, f"calm-{r}"))
        hit.append(await outage_run(files, outage, f"hit-{r}"))
        print(
            f"  (o) round {r + 1}/{rounds}: {calm[-1].rate:.1f} delivered/s without an outage, "
            f"{hit[-1].rate:.1f} with {outage:.0f} s of outage "
            f"({hit[-1].delivered} delivered + {hit[-1].superseded} superseded of "
            f"{hit[-1].acknowledged} acknowledged, "
            f"{time.monotonic() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    rows: list[Row] = [
        (
            "(o)",
            f"delivered/s, {RATE:.0f}/s offered for {DURATION:.0f} s, no outage",
            f"{statistics.median(c.rate for c in calm):8.1f} /s",
        ),
        (
            "(o)",
            f"delivered/s, the same with {outage:.0f} s of database outage (crash, restart)",
            f"{statistics.median(h.rate for h in hit):8.1f} /s",
        ),
        (
            "(o)",
            "acknowledged / delivered + superseded / anything else, outage runs",
            f"{sum(h.acknowledged for h in hit):8d} / "
            f"{sum(h.delivered + h.superseded for h in hit)} / {sum(h.other for h in hit)}",
        ),
        (
            "(o)",
            "rate with the outage / rate without, per round (reported)",
            median_ratio([h.rate / c.rate for h, c in zip(hit, calm, strict=True)], "reported"),
        ),
    ]
    notes = [
        f"(o) 503s answered during the outage runs (each resent): {[h.resent_503 for h in hit]}; "
        f"slowest acknowledgement {max(h.worst_ack_s for h in hit):.1f} s"
    ]
    return rows, notes
