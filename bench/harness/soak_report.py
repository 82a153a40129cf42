"""The soak's report: figures from the processes' logs, latency spreads, the printed summary."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

# Log events counted for the report: the queue taking a dead worker's deliveries back.
NOTED = frozenset(
    {"delivery_lease_expired", "deliveries_released", "dead_workers_taken_over", "worker_fenced"}
)


def log_events(paths: list[Path]) -> tuple[Counter[str], Counter[str]]:
    """Error events (and tracebacks) in the processes' JSON logs by event name, and how often
    the events of :data:`NOTED` (the queue taking a dead worker's deliveries back) occur."""
    errors: Counter[str] = Counter()
    noted: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if "Traceback" in line:
                errors["Traceback"] += 1
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("level") in ("error", "critical"):
                errors[str(event.get("event"))] += 1
            if event.get("event") in NOTED:
                noted[str(event["event"])] += 1
    return errors, noted


def spread(values: list[float]) -> str:
    """Median, p99 and maximum, in seconds."""
    if not values:
        return "n/a"
    q = sorted(values)
    p99 = q[min(len(q) - 1, round(0.99 * (len(q) - 1)))]
    return f"median {statistics.median(q):.2f}s, p99 {p99:.2f}s, max {q[-1]:.2f}s"


def print_summary(s: dict[str, Any]) -> None:
    dup = s["duplicates"]
    lines = [
        f"kills            {s['kills']} {s['kills_by_role']} over {s['load_s']}s of load",
        f"acknowledged     {s['acknowledged']} (late {s['acknowledged_late']}, never "
        f"{s['never_acknowledged']}, refused {sum(s['refused'].values())}, resends "
        f"{s['resends']})",
        f"deliveries       {s['states']}",
        f"LOST             {s['lost']}",
        f"OUT OF ORDER     {s['out_of_order']}",
        f"not delivered    {s['not_delivered_explained']} (recorded state and reason)",
        f"duplicates       {dup['delivered_after_more_than_one_attempt']} delivered after >1 "
        f"attempt; {dup['changes_written_more_than_once']} changes written twice or more "
        f"({dup['extra_writes']} extra writes); {dup['written_then_superseded']} written, then "
        f"superseded; {dup['unknown_writes']} unknown writes",
        f"writes           {s['writes']}",
        *(f"{k:<16} {v}" for k, v in s["recovery"].items()),
        f"log errors       {s['log_errors']}; noted {s['log_noted']}",
        f"drained          {s['open_after_drain']} open after {s['drain_s']}s; total "
        f"{s['duration_s']}s, seed {s['seed']}",
    ]
    for kind, items in s["details"].items():
        lines += [f"{kind}: {item}" for item in items]
    if "kept" in s:
        lines.append(f"kept for a post-mortem: {s['kept']}")
    print("\n".join(lines))
