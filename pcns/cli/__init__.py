"""``pcns``: serve, db, keys, hook, targets, notify, status, cancel.

This package is the CLI layer: it parses arguments, calls the composition root
(:mod:`pcns.app`) or a client, and prints. Each command's module is imported only when that
command runs, so a hook's ``pcns hook ...`` or ``pcns notify`` does not load the service.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from pcns.cli import keys as keys_cli
from pcns.config import load_settings
from pcns.errors import DatabaseUnavailable, PcnsError
from pcns.hooks import cli as hooks_cli
from pcns.logging import configure_logging
from vault import VaultError

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pcns", description="Password change notification service")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the receiver and/or delivery workers")
    serve.add_argument("--config", type=Path, required=True)
    serve.add_argument("--role", choices=["all", "receiver", "worker"], default="all")
    serve.add_argument(
        "--init",
        action="store_true",
        help="first run: create the keyring, admin token and source secrets that are missing",
    )

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    migrate = db_sub.add_parser("migrate", help="apply pending schema migrations")
    migrate.add_argument("--config", type=Path, required=True)
    prune = db_sub.add_parser(
        "prune",
        help="delete finished deliveries and changes older than a duration "
        "(pending ones and each account's newest delivered one are kept)",
    )
    prune.add_argument("--config", type=Path, required=True)
    prune.add_argument(
        "--older-than",
        required=True,
        metavar="DURATION",
        help="for example 90d; at least 1h",
    )
    prune.add_argument("--batch", type=int, default=5000, help="rows per statement (5000)")

    keys_cli.add_parser(sub)
    hooks_cli.add_parser(sub)

    targets = sub.add_parser("targets", help="target applications")
    targets_sub = targets.add_subparsers(dest="targets_command", required=True)
    check = targets_sub.add_parser(
        "check", help="probe connectivity and credentials of targets, changing no password"
    )
    check.add_argument("name", nargs="*", help="target names (default: all)")
    check.add_argument("--config", type=Path, required=True)

    notify = sub.add_parser(
        "notify", help="sign and send one password change; the password is read from stdin"
    )
    notify.add_argument("--config", type=Path, help="take url and secret file from this config")
    notify.add_argument("--url", help="receiver base URL, e.g. https://pcns.corp.example:8443")
    notify.add_argument("--source", required=True, help="source id (pcns-source header)")
    notify.add_argument("--secret-file", type=Path, help="the source's whsec_ secret file")
    notify.add_argument("--ca-file", type=Path, help="CA bundle to verify the receiver")
    notify.add_argument("--cert", type=Path, help="client certificate (when mTLS is on)")
    notify.add_argument("--key", type=Path, help="client certificate's private key")
    notify.add_argument("--user", required=True)
    notify.add_argument("--domain")
    notify.add_argument("--upn")
    notify.add_argument("--sid")
    notify.add_argument("--changed-at", help="ISO 8601 time of the change at the source")
    notify.add_argument("--webhook-id", help="stable id of this change (default: random)")
    notify.add_argument(
        "--seal",
        action="store_true",
        help="seal the password to a hook key (needs --recipient-key-id, --recipient-key-file)",
    )
    notify.add_argument("--recipient-key-id", help="hook key id (pcns keys hook list)")
    notify.add_argument(
        "--recipient-key-file", type=Path, help="its public half (pcns keys hook export)"
    )
    notify.add_argument(
        "--retry-for",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="keep retrying an unreachable or busy receiver this long (default 60)",
    )

    for name, help_text in (
        ("status", "per-target delivery state of one change"),
        ("cancel", "cancel a change's pending deliveries (they end cancelled)"),
    ):
        admin = sub.add_parser(name, help=help_text)
        admin.add_argument("id")
        admin.add_argument("--config", type=Path, required=True)
        admin.add_argument("--url", help="receiver base URL (default: from the config)")
        admin.add_argument("--ca-file", type=Path, help="CA bundle to verify the receiver")
        admin.add_argument("--cert", type=Path, help="client certificate (when mTLS is on)")
        admin.add_argument("--key", type=Path, help="client certificate's private key")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(level=args.log_level)
    try:
        return _run(args)
    except DatabaseUnavailable as exc:
        print(f"pcns: {exc}; check database.url", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except keys_cli.KeyAdminError as exc:
        print(f"pcns keys: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except (PcnsError, VaultError) as exc:
        print(f"pcns: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from pcns.cli.serve import serve

        return serve(args)
    if args.command in ("db", "targets"):
        from pcns.cli import db

        settings = load_settings(args.config)
        if args.command == "targets":
            return asyncio.run(db.targets_check(settings, args.name))
        if args.db_command == "prune":
            return asyncio.run(db.prune(settings, args.older_than, args.batch))
        return asyncio.run(db.migrate(settings))
    if args.command == "keys":
        return asyncio.run(keys_cli.run(args))
    if args.command == "hook":
        return asyncio.run(hooks_cli.run(args))
    from pcns.cli import remote

    if args.command == "notify":
        return asyncio.run(remote.notify(args))
    return asyncio.run(remote.status(args))
