"""``pcns notify``, ``pcns status``, ``pcns cancel``: clients of a running receiver."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

import aiohttp

from pcns.cli.admin_api import receiver_url
from pcns.client import NotifyFailed, Sender, client_ssl_context, load_recipient
from pcns.config import load_settings
from pcns.secret_files import read_private_file, read_webhook_secret

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def _ssl_context(args: argparse.Namespace) -> Any:
    return client_ssl_context(args.ca_file, args.cert, args.key)


async def notify(args: argparse.Namespace) -> int:
    settings = load_settings(args.config) if args.config else None
    url = args.url or (receiver_url(settings) if settings else None)
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
    print(json.dumps(result.body, indent=2))
    return EXIT_OK if result.accepted else EXIT_REJECTED


async def status(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    token = read_private_file(settings.admin.token_file, "admin token")
    url = (args.url or receiver_url(settings)).rstrip("/") + f"/v1/password-changes/{args.id}"
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
