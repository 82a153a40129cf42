"""Kill -9 soak (issue 12): receivers and workers on one PostgreSQL queue under a steady signed
load, a random one of them SIGKILLed every few seconds and started again; then the history is
checked against what the service acknowledged.

    .venv/bin/python -m bench.soak --kills 200 [--receivers 2] [--workers 2] [--accounts 50]
        [--rate 20] [--interval 3] [--seed N] [--mysql-url mysql://root@127.0.0.1:3306/test]
        [--delivery KEY=VALUE ...] [--json PATH] [--keep] [--database-url URL]

A fresh queue database and an application database are created on ``--database-url``'s
server; the targets are an htpasswd file (read back with ``htpasswd -v``), a ``soak_users``
table in PostgreSQL and, with ``--mysql-url``, one in MariaDB (hashes read back and verified
with ``targets.hashing``; every write logged by a trigger). The load (bench/harness/
signed_load.py) counts a change only once a receiver answered 202. After the last kill the load
stops, the queue drains, the processes stop, and bench/harness/soak_history.py judges:

- LOST: an acknowledged change not delivered to every target, nor superseded by a newer
  delivered one, nor in a recorded non-delivered state with a reason;
- OUT OF ORDER: a target whose password for an account is not the newest acknowledged one, or
  whose write history shows an older password written after a newer one;
- duplicates (at-least-once): deliveries attempted more than once, changes written twice.

Prints a summary (``--json``: also as JSON) and exits 1 on anything lost or out of order, or
if the kills did not all happen. The run's files and databases are kept when it fails, when a
process logged an error or a traceback, and with ``--keep``, for a post-mortem. See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.harness.cpu import wait_for_quiet_machine
from bench.harness.databases import Databases
from bench.harness.fleet import Fleet, Kill, kill_and_restart, wait_drained
from bench.harness.run import benchmark_parser
from bench.harness.service import ServiceFiles, settings_of
from bench.harness.signed_load import Ack, SignedLoad
from bench.harness.soak_history import Change, Delivery, Verdict, check_history, identify_writes
from bench.harness.soak_report import log_events, print_summary, spread
from bench.harness.soak_targets import (
    HtpasswdFile,
    MariadbTable,
    PostgresTable,
    SoakTarget,
    held_seq,
)

# Every delivery timing of the run, in one place. A killed worker's deliveries come back to the
# queue when their lease runs out, so leases are short here; once DeliverySettings has worker
# heartbeats, a dead worker's deliveries come back after worker_timeout instead (HEARTBEATS).
DELIVERY: dict[str, Any] = {
    "lease": "6s",
    "attempt_timeout": "3s",
    "poll_interval": "200ms",
    "backoff_initial": "200ms",
    "backoff_max": "2s",
}
HEARTBEATS: dict[str, Any] = {"heartbeat_interval": "1s", "worker_timeout": "5s"}
POOL_SIZE = 4  # per process: N receivers and M workers share the server's max_connections
HELD_CANDIDATES = 50  # acknowledged passwords tried, newest first, to name what a target holds


def delivery_settings(overrides: list[str]) -> dict[str, Any]:
    """:data:`DELIVERY`, :data:`HEARTBEATS` if this checkout has them, then ``KEY=VALUE``s."""
    from pcns.config import DeliverySettings

    out = dict(DELIVERY)
    if "worker_timeout" in DeliverySettings.model_fields:
        out |= HEARTBEATS
    for item in overrides:
        key, _, value = item.partition("=")
        out[key.strip()] = int(value) if value.strip().isdigit() else value.strip()
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = benchmark_parser("bench.soak", __doc__)
    p.add_argument("--kills", type=int, default=200, help="SIGKILLs before the check (200)")
    p.add_argument("--receivers", type=int, default=2, help="receiver processes (2)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    p.add_argument("--accounts", type=int, default=50, help="accounts the load changes (50)")
    p.add_argument("--rate", type=float, default=20.0, help="changes sent per second (20)")
    p.add_argument("--interval", type=float, default=3.0, help="mean s between kills (3)")
    p.add_argument("--seed", type=int, help="seed of the kills and accounts (default: random)")
    p.add_argument(
        "--bcrypt-cost", type=int, default=8, help="the htpasswd target's bcrypt cost (8)"
    )
    p.add_argument("--mysql-url", help="also a sql target on this MariaDB/MySQL database")
    p.add_argument(
        "--delivery",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a delivery setting of the run (repeatable), e.g. lease=60s",
    )
    p.add_argument("--settle", type=float, default=60.0, help="s to get the last 202s (60)")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="s to drain (120)")
    p.add_argument("--json", type=Path, help="also write the summary as JSON here")
    p.add_argument("--keep", action="store_true", help="keep files and databases")
    return p.parse_args(argv)


async def late_acks(url: str, load: SignedLoad) -> list[Ack]:
    """Changes the load gave up on that the queue committed all the same: they count."""
    if not load.unsettled:
        return []
    by_id = {s.webhook_id: s for s in load.unsettled}
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT id::text, webhook_id FROM pcns_changes WHERE webhook_id = ANY($1)", list(by_id)
        )
    finally:
        await conn.close()
    return [Ack(by_id[r["webhook_id"]], r["id"], 0, float("nan")) for r in rows]


async def queue_history(
    url: str,
) -> tuple[dict[tuple[str, str], Delivery], dict[str, str], tuple[list[float], list[float]]]:
    """Every delivery row, every change's webhook id, and the accept-to-delivered seconds of
    every delivered row and of those delivered after more than one attempt."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT change_id::text AS change, target, state, attempts, last_error,"
            " extract(epoch FROM finished_at - created_at)::float8 AS took FROM pcns_deliveries"
        )
        changes = await conn.fetch("SELECT id::text, webhook_id FROM pcns_changes")
    finally:
        await conn.close()
    deliveries = {
        (r["change"], r["target"]): Delivery(r["state"], r["attempts"], r["last_error"])
        for r in rows
    }
    took = [r["took"] for r in rows if r["state"] == "delivered"]
    again = [r["took"] for r in rows if r["state"] == "delivered" and r["attempts"] > 1]
    return deliveries, {r["id"]: r["webhook_id"] for r in changes}, (took, again)


async def application_state(
    targets: list[SoakTarget], changes: list[Change]
) -> tuple[
    dict[tuple[str, str], int | None], dict[str, list[tuple[str, int | None]]], dict[str, Any]
]:
    """What each target holds per account, its identified write history, and its write counts."""
    newest_first: dict[str, list[tuple[int, str]]] = {}
    for c in sorted(changes, key=lambda c: -c.seq):
        newest_first.setdefault(c.account, []).append((c.seq, c.password))
    held: dict[tuple[str, str], int | None] = {}
    writes: dict[str, list[tuple[str, int | None]]] = {}
    counts: dict[str, Any] = {}
    for t in targets:
        for account, candidates in newest_first.items():
            held[(t.name, account)] = await held_seq(t, account, candidates[:HELD_CANDIDATES])
        log = await t.writes()
        if log is not None:
            writes[t.name] = identify_writes(log.entries, changes, t.matches)
            counts[t.name] = {"logged": len(log.entries), "counted": log.counted}
    return held, writes, counts


@dataclass
class Run:
    """Everything one soak works with: its files and databases, targets, processes and load."""

    seed: int
    root: Path
    dbs: Databases
    queue_url: str
    delivery: dict[str, Any]
    targets: list[SoakTarget]
    fleet: Fleet
    load: SignedLoad
    rng: random.Random


async def prepare(args: argparse.Namespace) -> Run:
    """Fresh databases, the targets' tables and file, the service's files and one config per
    process (validated here, not in every process's log)."""
    from pcns.secret_files import read_webhook_secret

    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="pcns-soak-"))
    dbs = Databases(args.database_url)
    queue_url, app_url = await dbs.create("soak"), await dbs.create("app")
    accounts = [f"soak{n:03d}" for n in range(args.accounts)]
    app = PostgresTable("app", app_url)
    await app.create(accounts)
    wiki = HtpasswdFile("wiki", root / "wiki.htpasswd", bcrypt_cost=args.bcrypt_cost)
    targets: list[SoakTarget] = [wiki, app]
    if args.mysql_url:
        maria = MariadbTable("mariadb", args.mysql_url)
        await maria.create(accounts)
        targets.append(maria)
    files = ServiceFiles(root)
    delivery = delivery_settings(args.delivery)
    doc = files.document(queue_url, 0, delivery=delivery, targets=[t.document() for t in targets])
    doc["database"]["pool_size"] = POOL_SIZE
    settings_of(doc)
    fleet = Fleet(root, doc, args.receivers, args.workers)
    secret = read_webhook_secret(files.secret_file)
    load = SignedLoad(fleet.receiver_urls, secret, accounts, args.rate, rng)
    return Run(seed, root, dbs, queue_url, delivery, targets, fleet, load, rng)


@dataclass
class Driven:
    kills: list[Kill]
    recoveries: list[float | None]
    load_s: float
    drain_s: float
    open_left: int


async def drive(run: Run, args: argparse.Namespace) -> Driven:
    """Start the processes and the load, kill and restart ``args.kills`` times, stop the load
    (its last changes get ``args.settle`` s to be acknowledged), drain, stop the processes."""
    try:
        await run.fleet.start()
        stop, give_up = asyncio.Event(), asyncio.Event()
        load_task = asyncio.create_task(run.load.run(stop, give_up))
        started = time.monotonic()
        try:
            kills, recoveries = await kill_and_restart(
                run.fleet,
                run.queue_url,
                kills=args.kills,
                interval=args.interval,
                rng=run.rng,
                began=started,
                recovery_timeout=args.drain_timeout,
            )
        finally:
            stop.set()
            asyncio.get_running_loop().call_later(args.settle, give_up.set)
            await load_task
        load_s = time.monotonic() - started
        open_left = await wait_drained(run.queue_url, timeout=args.drain_timeout)
        drain_s = time.monotonic() - started - load_s
    finally:
        await run.fleet.stop()
    return Driven(kills, recoveries, load_s, drain_s, open_left)


async def judge(run: Run) -> tuple[Verdict, dict[str, Any]]:
    """The history check over what the load acknowledged, the queue and the targets; the
    duplicate and latency figures beside it."""
    load = run.load
    acks = load.acks + await late_acks(run.queue_url, load)
    changes = [Change(a.sent.account, a.sent.seq, a.sent.password, a.change_id) for a in acks]
    deliveries, recorded, (took, again) = await queue_history(run.queue_url)
    held, writes, write_counts = await application_state(run.targets, changes)
    verdict = check_history(changes, deliveries, [t.name for t in run.targets], held, writes)
    for a in acks:
        if recorded.get(a.change_id) != a.sent.webhook_id:
            verdict.lost.append(f"seq {a.sent.seq}: acknowledged id {a.change_id} not recorded")
    late = len(acks) - len(load.acks)
    return verdict, {
        "acknowledged_late": late,
        "never_acknowledged": len(load.unsettled) - late,
        "writes": write_counts,
        "ack_latency": spread([a.latency for a in load.acks]),
        "delivery_latency": spread(took),
        "redelivered_latency": spread(again),
    }


def summarize(
    run: Run, args: argparse.Namespace, d: Driven, v: Verdict, figures: dict[str, Any]
) -> dict[str, Any]:
    errors, noted = log_events(run.fleet.logs())
    return {
        "seed": run.seed,
        "load_s": round(d.load_s, 1),
        "drain_s": round(d.drain_s, 1),
        "processes": {"receivers": args.receivers, "workers": args.workers},
        "delivery": run.delivery,
        "kills": len(d.kills),
        "kills_by_role": dict(Counter(k.role for k in d.kills)),
        "acknowledged": v.acknowledged,
        "acknowledged_late": figures["acknowledged_late"],
        "never_acknowledged": figures["never_acknowledged"],
        "refused": dict(run.load.refused),
        "resends": dict(run.load.retries),
        "states": dict(v.states),
        "lost": len(v.lost),
        "out_of_order": len(v.out_of_order),
        "not_delivered_explained": len(v.not_delivered),
        "open_after_drain": d.open_left,
        "duplicates": {
            "delivered_after_more_than_one_attempt": v.attempted_again,
            "changes_written_more_than_once": v.written_again,
            "extra_writes": v.extra_writes,
            "written_then_superseded": v.written_then_superseded,
            "unknown_writes": v.unknown_writes,
        },
        "writes": figures["writes"],
        "recovery": {
            "restart": spread([k.restart_s for k in d.kills]),
            "killed_workers_in_flight_settled": spread([r for r in d.recoveries if r is not None]),
            "killed_workers_not_settled": sum(r is None for r in d.recoveries),
            "ack_latency": figures["ack_latency"],
            "delivery_latency": figures["delivery_latency"],
            "redelivered_latency": figures["redelivered_latency"],
        },
        "log_errors": dict(errors),
        "log_noted": dict(noted),
        "details": {
            "lost": v.lost[:20],
            "out_of_order": v.out_of_order[:20],
            "not_delivered": v.not_delivered[:20],
        },
    }


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run; its summary, with ``ok``. Files and databases are removed when it passed
    with clean logs (unless ``--keep``), kept for a post-mortem otherwise."""
    began = time.monotonic()
    run = await prepare(args)
    print(f"soak: seed {run.seed}, files in {run.root}, delivery {run.delivery}", file=sys.stderr)
    if args.max_background is not None:
        await wait_for_quiet_machine(args.max_background, timeout=60)
    driven = await drive(run, args)
    verdict, figures = await judge(run)
    summary = summarize(run, args, driven, verdict, figures)
    summary["ok"] = verdict.ok and len(driven.kills) == args.kills
    summary["duration_s"] = round(time.monotonic() - began, 1)
    # An error event or a traceback in a process's log does not fail the run (nothing was
    # lost), but its logs are kept: they are the only account of it.
    if summary["ok"] and not args.keep and not summary["log_errors"]:
        for t in run.targets:
            await t.close()
        await run.dbs.drop_all()
        shutil.rmtree(run.root, ignore_errors=True)
    else:
        summary["kept"] = {"files": str(run.root), "databases": run.dbs.names}
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    summary = asyncio.run(soak(args))
    print_summary(summary)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
