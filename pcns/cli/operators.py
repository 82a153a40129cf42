"""``pcns deliveries list|show|retry|cancel``, ``pcns targets hold|release|holds``, ``pcns audit``:
the operators' commands, clients of a running receiver's admin API.

Like ``pcns status``, each reads the admin token from the configuration's ``admin.token_file``
and the URL from ``server.listen`` (or ``--url``), and exits 0 (done), 1 (refused by pcns, or a
confirmation answered no), 2 (usage: a bad option, or an action that needs ``--yes``) or 3 (pcns
unreachable, or its database unavailable). Parsing stays cheap: the HTTP client and the
configuration are imported when a command runs.

A retry or cancel first asks pcns for a dry-run count and, on a terminal, asks to confirm it.
Where nobody can answer (stdin or stdout is not a terminal) it acts only with ``--yes``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pcns.cli.admin_api import AdminApi

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
MAX_PAGE = 500  # the admin API's largest page
_RELATIVE = re.compile(r"^([+-]?)(\d+(?:\.\d+)?(?:ms|s|m|h|d))$")
TIME_HELP = "ISO 8601 with a zone (2026-12-05T18:00:00Z), or relative to now: -2h, +30m"


class UsageError(Exception):
    """An option's value cannot be sent; the message names the option."""


def add_operator_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    targets_sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """``pcns deliveries ...`` and ``pcns audit`` under ``sub``; ``hold``, ``release`` and
    ``holds`` under the existing ``pcns targets`` (``targets_sub``)."""
    deliveries = sub.add_parser("deliveries", help="find, retry and cancel deliveries")
    dsub = deliveries.add_subparsers(dest="deliveries_command", required=True)
    ls = _client(dsub.add_parser("list", help="deliveries a filter selects, newest first"))
    _filters(ls)
    ls.add_argument("--limit", metavar="N", help="deliveries per page, 1 to 500 (default 50)")
    ls.add_argument("--before", metavar="ID", help="the page after this id (from the last page)")
    ls.add_argument("--all-pages", action="store_true", help="follow every page to the end")
    _output(ls)
    show = _client(dsub.add_parser("show", help="one delivery in full"))
    show.add_argument("id", help="delivery id (from `pcns deliveries list`)")
    _output(show)
    for action, help_text in (
        ("retry", "parked deliveries (and pending ones backing off) become due now"),
        ("cancel", "pending and parked deliveries end cancelled, their ciphertexts deleted"),
    ):
        bulk = _client(dsub.add_parser(action, help=help_text))
        _filters(bulk)
        bulk.add_argument("--all", action="store_true", help=f"{action} every delivery")
        bulk.add_argument("--yes", action="store_true", help="act without asking to confirm")
        bulk.add_argument("--dry-run", action="store_true", help="only count; change nothing")
        _output(bulk)

    hold = _client(targets_sub.add_parser("hold", help="hold a target: its deliveries wait"))
    hold.add_argument("name")
    hold.add_argument(
        "--until",
        metavar="TIME",
        help="planned end, announced only: an alert fires past it; the hold lasts until "
        f"released. {TIME_HELP} (a bare 2h: from now)",
    )
    hold.add_argument("--reason", help="why, for the holds list and the audit trail")
    release = _client(targets_sub.add_parser("release", help="end a hold: deliveries go out"))
    release.add_argument("name")
    _output(_client(targets_sub.add_parser("holds", help="the held targets")))

    audit = _client(sub.add_parser("audit", help="operators' actions (retry, cancel, hold)"))
    audit.add_argument("--limit", metavar="N", help="newest N actions, 1 to 1000 (default 50)")
    _output(audit)


def _client(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--url", help="receiver base URL (default: from the config)")
    p.add_argument("--ca-file", type=Path, help="CA bundle to verify the receiver")
    p.add_argument("--cert", type=Path, help="client certificate (when mTLS is on)")
    p.add_argument("--key", type=Path, help="client certificate's private key")
    p.add_argument("--actor", help="who acts, for the audit trail (default user@host)")
    return p


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state",
        action="append",
        metavar="STATE",
        help="pending, in_flight, parked, delivered, failed, superseded, expired, cancelled; "
        "repeat or comma-separate",
    )
    p.add_argument("--target", metavar="NAME")
    p.add_argument("--account", metavar="NAME", help="exact, or a glob with * and ?")
    p.add_argument("--source", metavar="ID")
    p.add_argument("--change-id", metavar="ID")
    p.add_argument("--since", metavar="TIME", help=f"created at or after: {TIME_HELP}")
    p.add_argument("--until", metavar="TIME", help=f"created before: {TIME_HELP}")


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output",
        choices=("table", "json"),
        default="table",
        help="table (default), or json: one API document per line",
    )


def command_name(args: argparse.Namespace) -> str:
    if args.command == "deliveries":
        return f"pcns deliveries {args.deliveries_command}"
    if args.command == "targets":
        return f"pcns targets {args.targets_command}"
    return f"pcns {args.command}"


def parse_time(text: str, option: str, *, bare: str = "ago") -> str:
    """``text`` as an ISO 8601 time with a zone, for the API. A duration is relative to now:
    ``-2h`` ago, ``+2h`` ahead, a bare ``2h`` as ``bare`` says (``ago`` or ``ahead``)."""
    from pcns.config import parse_duration

    text = text.strip()
    if m := _RELATIVE.match(text):
        try:
            seconds = parse_duration(m[2])
        except ValueError as exc:
            raise UsageError(f"{option}: {exc}") from None
        ahead = m[1] == "+" or (not m[1] and bare == "ahead")
        at = datetime.now(UTC) + timedelta(seconds=seconds if ahead else -seconds)
        return at.replace(microsecond=0).isoformat()
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option}: expected {TIME_HELP}") from None
    if at.tzinfo is None:
        raise UsageError(f"{option}: give the time zone, e.g. 2026-12-05T18:00:00Z or +01:00")
    return at.isoformat()


def _uuid(text: str, option: str, what: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise UsageError(f"{option}: not {what} (a UUID)") from None


def _count(text: str | None, option: str, default: int, most: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise UsageError(f"{option}: must be a whole number from 1 to {most}")
    return int(text)


def filter_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The filter options as the API's fields; :class:`UsageError` names a bad option."""
    from pcns.queue.records import DELIVERY_STATES

    out: dict[str, Any] = {}
    states = [s.strip() for value in args.state or () for s in value.split(",") if s.strip()]
    for state in states:
        if state not in DELIVERY_STATES:
            raise UsageError(f"--state: {state!r} is not one of {', '.join(DELIVERY_STATES)}")
    if states:
        out["state"] = list(dict.fromkeys(states))
    for name in ("target", "account", "source"):
        value = getattr(args, name)
        if value is not None:
            if not value or not value.isprintable():
                raise UsageError(f"--{name}: must be printable text")
            out[name] = value
    if args.change_id is not None:
        out["change_id"] = _uuid(args.change_id, "--change-id", "a change id")
    for name in ("since", "until"):
        if getattr(args, name) is not None:
            out[name] = parse_time(getattr(args, name), f"--{name}")
    return out


def actor(args: argparse.Namespace) -> str:
    import getpass
    import socket

    given = args.actor if args.actor is not None else f"{getpass.getuser()}@{socket.gethostname()}"
    if not given.strip() or len(given) > 200 or not given.isprintable():
        raise UsageError("--actor: 1 to 200 printable characters")
    return str(given)


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _width() -> int | None:
    """The terminal's width when stdout is one; otherwise None (nothing is cut)."""
    import shutil

    return shutil.get_terminal_size((120, 24)).columns if sys.stdout.isatty() else None


def _print(lines: list[str]) -> None:
    for line in lines:
        print(line)


async def run(args: argparse.Namespace) -> int:
    """Run one operators' command; returns the exit code."""
    from pcns.cli.admin_api import ApiError, open_api

    name = command_name(args)
    try:
        async with open_api(args, actor(args)) as api:
            return await _dispatch(args, api, name)
    except UsageError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as exc:
        print(f"{name}: {exc.message}", file=sys.stderr)
        return exc.exit_code


async def _dispatch(args: argparse.Namespace, api: AdminApi, name: str) -> int:
    if args.command == "audit":
        return await _audit(args, api)
    if args.command == "targets":
        return await _targets(args, api)
    if args.deliveries_command == "list":
        return await _list(args, api, name)
    if args.deliveries_command == "show":
        return await _show(args, api)
    return await _bulk(args, api, name, args.deliveries_command)


async def _list(args: argparse.Namespace, api: AdminApi, name: str) -> int:
    from pcns.cli import tables

    query = {k: ",".join(v) if isinstance(v, list) else v for k, v in filter_fields(args).items()}
    default = MAX_PAGE if args.all_pages else 50
    query["limit"] = str(_count(args.limit, "--limit", default, MAX_PAGE))
    before = _uuid(args.before, "--before", "a delivery id") if args.before else None
    found: list[dict[str, Any]] = []
    while True:
        page = await api.call("GET", "/v1/deliveries", query={**query, "before": before})
        if args.output == "json":
            _print(tables.json_lines(page["deliveries"]))
        else:
            found += page["deliveries"]
        before = page["next"]
        if before is None or not args.all_pages:
            break
    if args.output == "table":
        _print(tables.deliveries_table(found, _width()) if found else ["no deliveries match"])
    if before is not None:
        print(f"more: {name} ... --before {before} (or --all-pages)", file=sys.stderr)
    return EXIT_OK


async def _show(args: argparse.Namespace, api: AdminApi) -> int:
    from pcns.cli import tables

    delivery_id = _uuid(args.id, "ID", "a delivery id")
    doc = await api.call("GET", f"/v1/deliveries/{delivery_id}")
    _print(tables.json_lines([doc]) if args.output == "json" else tables.delivery_detail(doc))
    return EXIT_OK


async def _bulk(args: argparse.Namespace, api: AdminApi, name: str, action: str) -> int:
    """Count (dry run), confirm on a terminal unless ``--yes``, then act; print what was done."""
    from pcns.cli import tables

    body = filter_fields(args)
    if not body and not args.all:
        raise UsageError(
            "give a filter (--state, --target, --account, --source, --change-id, --since, "
            f"--until), or --all to {action} every delivery"
        )
    if not (args.dry_run or args.yes or _interactive()):
        raise UsageError(
            f"not on a terminal, so nobody can confirm: add --yes to {action} without asking "
            "(--dry-run to count first)"
        )
    body["all"] = args.all
    path = f"/v1/deliveries/{action}"
    json_out = args.output == "json"
    if args.dry_run or not args.yes:
        preview = await api.call("POST", path, body={**body, "dry_run": True})
        if args.dry_run or preview["count"] == 0:
            would = f"would {action} {tables.counted(preview)}; nothing changed (dry run)"
            _print(
                tables.json_lines([preview])
                if json_out
                else [would if args.dry_run else f"nothing to {action}"]
            )
            return EXIT_OK
        if not await _confirm(f"{action} {tables.counted(preview)}? [y/N] "):
            print(f"{name}: not confirmed; nothing changed", file=sys.stderr)
            return EXIT_REJECTED
    done = await api.call("POST", path, body={**body, "dry_run": False})
    past = "retried" if action == "retry" else "cancelled"
    _print(tables.json_lines([done]) if json_out else [f"{past} {tables.counted(done)}"])
    return EXIT_OK


async def _confirm(prompt: str) -> bool:
    print(prompt, end="", file=sys.stderr, flush=True)
    answer = await asyncio.to_thread(sys.stdin.readline)
    return answer.strip().lower() in ("y", "yes")


async def _targets(args: argparse.Namespace, api: AdminApi) -> int:
    from urllib.parse import quote

    from pcns.cli import tables

    if args.targets_command == "holds":
        holds = (await api.call("GET", "/v1/targets/holds"))["holds"]
        if args.output == "json":
            _print(tables.json_lines(holds))
        else:
            _print(tables.holds_table(holds, datetime.now(UTC)) if holds else ["no target is held"])
        return EXIT_OK
    path = f"/v1/targets/{quote(args.name, safe='')}/hold"
    if args.targets_command == "release":
        await api.call("DELETE", path)
        print(f"released {args.name}: its pending deliveries are due now")
        return EXIT_OK
    body: dict[str, Any] = {}
    if args.until is not None:
        body["until"] = parse_time(args.until, "--until", bare="ahead")
    if args.reason is not None:
        body["reason"] = args.reason
    held = await api.call("PUT", path, body=body)
    until = f" (announced until {tables.moment(held['until'])})" if held.get("until") else ""
    print(
        f"held {held['target']}{until}: its deliveries wait until "
        f"`pcns targets release {held['target']}`"
    )
    if held.get("until") and datetime.fromisoformat(held["until"]) < datetime.now(UTC):
        print("note: --until has passed; the held-past-until alert will fire", file=sys.stderr)
    return EXIT_OK


async def _audit(args: argparse.Namespace, api: AdminApi) -> int:
    from pcns.cli import tables

    limit = _count(args.limit, "--limit", 50, 1000)
    actions = (await api.call("GET", "/v1/audit", query={"limit": str(limit)}))["actions"]
    if args.output == "json":
        _print(tables.json_lines(actions))
    else:
        _print(tables.audit_table(actions, _width()) if actions else ["no operator actions yet"])
    return EXIT_OK
