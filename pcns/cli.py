"""``pcns``: serve, db migrate, keys, hook, notify, status."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from pcns.config import Settings, load_settings
from pcns.database import UNAVAILABLE_ERRORS
from pcns.errors import ConfigError, PcnsError
from pcns.hooks import cli as hooks_cli
from pcns.keys import cli as keys_cli
from pcns.keys.admin import KeyAdminError
from pcns.logging import configure_logging
from pcns.client import client_ssl_context
from pcns.secret_files import (
    new_admin_token,
    new_webhook_secret,
    read_private_file,
    read_webhook_secret,
    write_private_file,
)
from vault import VaultError, create_keyring_file

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
        if args.command == "serve":
            return _serve(args)
        if args.command == "db" and args.db_command == "prune":
            return asyncio.run(_prune(load_settings(args.config), args.older_than, args.batch))
        if args.command == "db":
            return asyncio.run(_migrate(load_settings(args.config)))
        if args.command == "keys":
            return asyncio.run(keys_cli.run(args))
        if args.command == "hook":
            return asyncio.run(hooks_cli.run(args))
        if args.command == "targets":
            return asyncio.run(_targets_check(load_settings(args.config), args.name))
        if args.command == "notify":
            return asyncio.run(_notify(args))
        if args.command in ("status", "cancel"):
            return asyncio.run(_status(args))
    except KeyAdminError as exc:
        print(f"pcns keys: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except (PcnsError, VaultError) as exc:
        print(f"pcns: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UNAVAILABLE_ERRORS as exc:
        print(
            f"pcns: PostgreSQL is unreachable ({type(exc).__name__}); check database.url",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    return EXIT_USAGE


def _init_files(settings: Settings) -> None:
    """Create whichever of the keyring, admin token and source secrets does not exist yet."""
    if settings.vault.kek == "file" and not settings.vault.keyring.exists():
        kek_id = create_keyring_file(settings.vault.keyring)
        print(f"created key-encryption key {kek_id} in {settings.vault.keyring}")
    if write_private_file(settings.admin.token_file, new_admin_token()):
        print(f"created admin token {settings.admin.token_file}")
    for source in settings.sources:
        if write_private_file(source.secret_file, new_webhook_secret()):
            print(f"created secret for source {source.id!r} in {source.secret_file}")


def _serve(args: argparse.Namespace) -> int:
    from pcns.app import RunningService, run_service

    settings = load_settings(args.config)
    if args.init:
        _init_files(settings)

    def started(service: RunningService) -> None:
        if not args.init or not settings.sources:
            return
        source = settings.sources[0]
        target = next((t for t in settings.targets if t.type == "htpasswd"), None)
        print(
            f"\npcns is running at {service.url} (role {args.role}); stop it with Ctrl-C.\n"
            "Send a test change from another shell:\n"
            f"  echo -n 'N3w-Passw0rd!' | .venv/bin/pcns notify --config {args.config}"
            f" --source {source.id} --user alice\n",
            flush=True,
        )
        if target is not None:
            path = target.adapter_fields().get("path")
            print(
                f"then check it at the target:\n  htpasswd -vb {path} alice 'N3w-Passw0rd!'\n",
                flush=True,
            )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_service(settings, role=args.role, stop=stop, on_started=started)

    asyncio.run(run())
    return EXIT_OK


async def _targets_check(settings: Settings, names: list[str]) -> int:
    """Run each target's own check(); one line per target, exit 1 if any fails."""
    from pcns.app import build_targets
    from targets.base import TargetError

    targets = build_targets(settings)
    unknown = sorted(set(names) - set(targets))
    if unknown:
        print(
            f"pcns targets check: no such target {unknown}; configured: {sorted(targets)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    failed = 0
    for name, target in targets.items():
        if names and name not in names:
            continue
        try:
            await asyncio.wait_for(target.check(), timeout=30)
            print(f"{name}: ok")
        except (TargetError, TimeoutError) as exc:
            failed += 1
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            print(f"{name}: FAILED ({type(exc).__name__}): {reason}")
        finally:
            await target.close()
    return EXIT_REJECTED if failed else EXIT_OK


async def _migrate(settings: Settings) -> int:
    from pcns.database import connect, database_url
    from pcns.queue.migrate import migrate

    async with database_url(settings.database) as url:
        conn = await connect(url)
        try:
            applied = await migrate(conn)
        finally:
            await conn.close()
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return EXIT_OK


async def _prune(settings: Settings, older_than: str, batch: int) -> int:
    from pcns.config import MIN_RETENTION_SECONDS, parse_duration
    from pcns.database import create_pool, database_url
    from pcns.queue.retention import prune_finished

    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        raise ConfigError(f"--older-than: {exc}") from None
    if seconds < MIN_RETENTION_SECONDS:
        raise ConfigError("--older-than: must be at least 1h")
    if not 1 <= batch <= 100_000:
        raise ConfigError("--batch: must be between 1 and 100000")
    async with (
        database_url(settings.database) as url,
        create_pool(url, size=2, wait=settings.database.connect_wait) as pool,
    ):
        pruned = await prune_finished(pool, older_than=seconds, batch=batch)
    if pruned.skipped:
        print("pcns db prune: another prune is running; nothing more was deleted", file=sys.stderr)
    print(
        f"deleted {pruned.deliveries} finished deliveries and {pruned.changes} changes "
        f"older than {older_than}"
    )
    return EXIT_REJECTED if pruned.skipped else EXIT_OK


def _receiver_url(settings: Settings) -> str:
    scheme = "https" if settings.server.tls_cert else "http"
    host = settings.server.host
    if host in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard listen is reached via loopback
        host = "127.0.0.1"
    return f"{scheme}://{host}:{settings.server.port}"


def _ssl_context(args: argparse.Namespace) -> Any:
    return client_ssl_context(args.ca_file, args.cert, args.key)


async def _notify(args: argparse.Namespace) -> int:
    from pcns.client import NotifyFailed, Sender, load_recipient

    settings = load_settings(args.config) if args.config else None
    url = args.url or (_receiver_url(settings) if settings else None)
    secret_file = args.secret_file
    if secret_file is None and settings is not None:
        match = next((s for s in settings.sources if s.id == args.source), None)
        secret_file = match.secret_file if match else None
    if url is None or secret_file is None:
        print("pcns notify: give --config, or --url and --secret-file", file=sys.stderr)
        return EXIT_USAGE
    recipient = None
    if args.seal or args.recipient_key_id or args.recipient_key_file:
        if not (args.seal and args.recipient_key_id and args.recipient_key_file):
            print(
                "pcns notify: --seal, --recipient-key-id and --recipient-key-file go together",
                file=sys.stderr,
            )
            return EXIT_USAGE
        recipient = load_recipient(args.recipient_key_id, args.recipient_key_file)
    if sys.stdin.isatty():
        print("pcns notify: type the new password, then Ctrl-D", file=sys.stderr)
    password = sys.stdin.read().removesuffix("\n")
    if not password:
        print("pcns notify: no password on stdin", file=sys.stderr)
        return EXIT_USAGE
    change: dict[str, Any] = {"user": args.user, "password": password}
    for field in ("domain", "upn", "sid"):
        if getattr(args, field):
            change[field] = getattr(args, field)
    if args.changed_at:
        try:
            datetime.fromisoformat(args.changed_at)
        except ValueError:
            print("pcns notify: --changed-at is not an ISO 8601 time", file=sys.stderr)
            return EXIT_USAGE
        change["changed_at"] = args.changed_at
    sender = Sender(
        url=url,
        source=args.source,
        secret=read_webhook_secret(secret_file),
        ssl_context=_ssl_context(args),
        max_delay=args.retry_for,
        recipient=recipient,
    )
    try:
        result = await sender.send(change, webhook_id=args.webhook_id)
    except NotifyFailed as exc:
        print(f"pcns notify: not accepted: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        del password, change
    print(json.dumps(result.body, indent=2))
    return EXIT_OK if result.accepted else EXIT_REJECTED


async def _status(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    token = read_private_file(settings.admin.token_file, "admin token")
    url = (args.url or _receiver_url(settings)).rstrip("/") + f"/v1/password-changes/{args.id}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.request(
                "DELETE" if args.command == "cancel" else "GET",
                url,
                headers={"Authorization": f"Bearer {token}"},
                ssl=_ssl_context(args) or True,
            ) as resp,
        ):
            body = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"pcns {args.command}: cannot reach {url}: {type(exc).__name__}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        print(json.dumps(json.loads(body), indent=2))
    except json.JSONDecodeError:
        print(body)
    return EXIT_OK if status == 200 else EXIT_REJECTED
