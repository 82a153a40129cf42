"""``pcns``: serve, db, keys, hook, targets, notify, status, cancel, deliveries, audit.

This package is the CLI layer: it parses arguments, calls the composition root
(:mod:`pcns.app`) or a client, and prints. Each command's module is imported only when that
command runs, so a hook's ``pcns hook ...`` or ``pcns notify`` does not load the service.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pcns.cli.parser import build_parser
from pcns.config import load_settings
from pcns.errors import DatabaseUnavailable, PcnsError
from pcns.hooks import cli as hooks_cli
from pcns.logging import configure_logging
from vault import VaultError

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(level=args.log_level)
    try:
        return _run(args)
    except DatabaseUnavailable as exc:
        print(f"pcns: {exc}; check database.url", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (PcnsError, VaultError) as exc:
        print(f"pcns: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from pcns.cli.serve import serve

        return serve(args)
    if args.command in ("deliveries", "audit") or (
        args.command == "targets" and args.targets_command != "check"
    ):
        from pcns.cli import operators

        return asyncio.run(operators.run(args))
    if args.command in ("db", "targets"):
        from pcns.cli import db

        settings = load_settings(args.config)
        if args.command == "targets":
            return asyncio.run(db.targets_check(settings, args.name))
        if args.db_command == "prune":
            return asyncio.run(db.prune(settings, args.older_than, args.batch))
        return asyncio.run(db.migrate(settings))
    if args.command == "config":
        from pcns.cli import config

        return config.run(args)
    if args.command == "keys":
        from pcns.cli import keys

        return asyncio.run(keys.run(args))
    if args.command == "hook":
        return asyncio.run(hooks_cli.run(args))
    from pcns.cli import remote

    if args.command == "notify":
        return asyncio.run(remote.notify(args))
    return asyncio.run(remote.status(args))
