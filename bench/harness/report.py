"""The report: one table of rows (part, measurement, value) and notes below it; values are
medians with ``[min..max]`` over rounds, ratios are taken per round."""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from typing import TYPE_CHECKING

from bench.harness.cpu import background_cores

if TYPE_CHECKING:
    from bench.harness.loadgen import HttpRun

Row = tuple[str, str, str]
PartResult = tuple[list[Row], list[str]]  # a part's rows of the table, and its notes


def progress(message: str) -> None:
    print(message + " ...", file=sys.stderr, flush=True)


def median_rate(values: list[float], unit: str = "") -> str:
    """Median per second, with ``[min..max]`` over more than one round; ``unit``: what is
    counted ("rows", "hashes"), nothing for requests or deliveries."""
    spread = f"  [{min(values):.0f}..{max(values):.0f}]" if len(values) > 1 else ""
    per_s = f" {unit}/s" if unit else " /s"
    return f"{statistics.median(values):8.0f}{per_s}{spread}"


def median_ratio(values: list[float], target: str) -> str:
    spread = f"  [{min(values):.2f}..{max(values):.2f}]" if len(values) > 1 else ""
    return f"{statistics.median(values):8.2f} x{spread}   (target {target})"


def cpu_line(
    label: str,
    cpus: list[dict[str, float | None]],
    n: int,
    kinds: tuple[str, ...] = ("server", "client", "postgres"),
) -> str:
    """Median CPU milliseconds per 1000 items, per process kind."""
    parts = []
    for key in kinds:
        values = [v for c in cpus if (v := c.get(key)) is not None]
        if values:
            parts.append(f"{key} {statistics.median(values) * 1e6 / n:4.0f}")
    return f"      {label:<11}: " + ", ".join(parts)


def median_background(cpus: list[dict[str, float | None]]) -> str:
    """Median cores other processes used over the windows, for a note."""
    values = [v for c in cpus if (v := background_cores(c)) is not None]
    return f"{statistics.median(values):.2f}" if values else "n/a"


def answers_warning(part: str, runs: list[HttpRun], whose: str = "") -> list[str]:
    """A report note for every answer other than 202 over ``runs``, if there was any."""
    bad: Counter[str] = Counter()
    for r in runs:
        bad.update({k: v for k, v in r.statuses.items() if k != "202"})
    return [f"{part} WARNING: answers other than 202{whose}: {dict(bad)}"] if bad else []


def print_table(rows: list[Row], notes: list[str]) -> None:
    width = max(len(r[1]) for r in rows)
    print()
    print(f"{'part':<5} {'measurement':<{width}}  value")
    print(f"{'-' * 5} {'-' * width}  {'-' * 36}")
    for part, name, value in rows:
        print(f"{part:<5} {name:<{width}}  {value}")
    print()
    for note in notes:
        print(note)
