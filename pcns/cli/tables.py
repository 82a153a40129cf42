"""How the operators' commands print the admin API's documents: tables for people, one JSON
document per line for scripts. Pure functions of the documents; nothing here does I/O."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

# The narrowest a truncated last column gets, however narrow the terminal.
MIN_FLEX = 20


def json_lines(docs: Sequence[Any]) -> list[str]:
    """One compact JSON document per line (JSON Lines), as the API gave each."""
    return [json.dumps(doc, ensure_ascii=False) for doc in docs]


def moment(value: object) -> str:
    """An API timestamp in UTC to the second (``2026-11-29T04:40:48Z``); ``-`` for none."""
    if not isinstance(value, str) or not value:
        return "-"
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return value
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int | None) -> list[str]:
    """Left-aligned columns as wide as their widest cell; the last column is cut (ending in
    ``…``) to fit ``width`` characters, or left whole when ``width`` is None."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    room: int | None = None
    if width is not None:
        room = max(width - sum(w + 2 for w in widths[:-1]), MIN_FLEX)

    def line(cells: Sequence[str]) -> str:
        head = "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True))
        last = cells[-1] if room is None else _clip(cells[-1], room)
        return f"{head}  {last}".rstrip() if head else last

    return [line(headers), *(line(r) for r in rows)]


def state_of(doc: Mapping[str, Any]) -> str:
    """A delivery's state, marked ``(held)`` while its target is held."""
    state = str(doc.get("state"))
    return f"{state} (held)" if doc.get("held") else state


def deliveries_table(docs: Sequence[Mapping[str, Any]], width: int | None) -> list[str]:
    headers = ("id", "state", "target", "account", "attempts", "updated", "last_error")
    rows = [
        (
            str(d["id"]),
            state_of(d),
            str(d["target"]),
            str(d["account"]),
            str(d["attempts"]),
            moment(d.get("updated_at")),
            " ".join(str(d.get("last_error") or "").split()),
        )
        for d in docs
    ]
    return table(headers, rows, width)


def delivery_detail(doc: Mapping[str, Any]) -> list[str]:
    """One delivery, a field per line, every value in full."""
    fields: list[tuple[str, str]] = [
        ("id", str(doc["id"])),
        ("change", str(doc["change_id"])),
        ("source", str(doc["source"])),
        ("user", str(doc["user"])),
        ("target", str(doc["target"])),
        ("account", str(doc["account"])),
        ("state", state_of(doc)),
        ("attempts", str(doc["attempts"])),
        ("last error", str(doc.get("last_error") or "-")),
        ("created", moment(doc.get("created_at"))),
        ("updated", moment(doc.get("updated_at"))),
        ("next attempt", moment(doc.get("next_attempt_at"))),
        ("finished", moment(doc.get("finished_at"))),
    ]
    label = max(len(k) for k, _ in fields) + 1
    return [f"{(k + ':').ljust(label)} {v}" for k, v in fields]


def holds_table(docs: Sequence[Mapping[str, Any]], now: datetime) -> list[str]:
    """Held targets; an announced end already behind ``now`` is marked ``(past)``."""

    def until(value: object) -> str:
        shown = moment(value)
        with contextlib.suppress(TypeError, ValueError):
            if datetime.fromisoformat(str(value)) < now:
                shown += " (past)"
        return shown

    rows = [
        (
            str(h["target"]),
            moment(h.get("held_at")),
            until(h.get("until")),
            str(h.get("actor")),
            str(h.get("reason") or ""),
        )
        for h in docs
    ]
    return table(("target", "held since", "until", "by", "reason"), rows, None)


def filter_text(filter_: Mapping[str, Any]) -> str:
    """An audited filter as ``key=value`` pairs (lists comma-joined); ``(all)`` when empty."""
    parts = []
    for key, value in filter_.items():
        shown = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
        parts.append(f"{key}={shown}")
    return " ".join(parts) or "(all)"


def audit_table(docs: Sequence[Mapping[str, Any]], width: int | None) -> list[str]:
    rows = [
        (
            moment(a.get("at")),
            str(a["actor"]),
            str(a["action"]),
            str(a["count"]),
            filter_text(a.get("filter") or {}),
        )
        for a in docs
    ]
    return table(("at", "actor", "action", "count", "filter"), rows, width)


def counted(answer: Mapping[str, Any]) -> str:
    """A bulk action's answer as ``14 deliveries (wiki: 12, erp: 2)``."""
    count = int(answer["count"])
    noun = "delivery" if count == 1 else "deliveries"
    per_target = ", ".join(f"{t}: {n}" for t, n in dict(answer.get("targets") or {}).items())
    return f"{count} {noun}" + (f" ({per_target})" if per_target else "")
