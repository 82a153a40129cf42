"""Every ``pcns`` command's arguments. Nothing here imports the service: parsing the command
line of ``pcns hook ...`` (run once per password change) or ``pcns notify`` stays cheap."""

from __future__ import annotations

import argparse
from pathlib import Path

from pcns import __version__
from pcns.cli.config import add_config_parser
from pcns.cli.operators import add_operator_parsers
from pcns.hooks import cli as hooks_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pcns", description="Password change notification service")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"pcns {__version__}")
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

    _add_keys_parser(sub)
    add_config_parser(sub)
    hooks_cli.add_parser(sub)

    targets = sub.add_parser("targets", help="target applications")
    targets_sub = targets.add_subparsers(dest="targets_command", required=True)
    check = targets_sub.add_parser(
        "check", help="probe connectivity and credentials of targets, changing no password"
    )
    check.add_argument("name", nargs="*", help="target names (default: all)")
    check.add_argument("--config", type=Path, required=True)
    add_operator_parsers(sub, targets_sub)  # deliveries, audit; targets hold, release, holds

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


def _add_keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="data keys and key-encryption keys (security team)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)

    def command(
        name: str, help_text: str, into: argparse._SubParsersAction[argparse.ArgumentParser]
    ) -> argparse.ArgumentParser:
        p = into.add_parser(name, help=help_text)
        p.add_argument("--config", type=Path, required=True)
        p.add_argument(
            "--actor", default=None, help="who runs this, for the audit log (default user@host)"
        )
        return p

    hook = keys_sub.add_parser(
        "hook", help="hook keys: the P-256 recipients hooks seal changes to (RFC 9180 HPKE)"
    )
    hook_sub = hook.add_subparsers(dest="hook_command", required=True)
    command("create", "create the first hook key", hook_sub)
    command("rotate", "create a new current hook key; the old one stays active", hook_sub)
    command("list", "every hook key: state, creation time", hook_sub)
    export = command("export", "print a hook key's public half for configuring hooks", hook_sub)
    export.add_argument("key_id", nargs="?", help="default: the current hook key")
    export.add_argument(
        "--format",
        choices=("pem", "raw", "json"),
        default="pem",
        help="pem: SubjectPublicKeyInfo; raw: the 65-byte point as hex; json: both and the id",
    )
    hook_retire = command("retire", "destroy a hook key (not the current one)", hook_sub)
    hook_retire.add_argument("key_id")

    def keys_command(name: str, help_text: str) -> argparse.ArgumentParser:
        return command(name, help_text, keys_sub)

    keys_command("init", "create the file KEK (vault.keyring, mode 0600)")
    keys_command("list", "every data key: state, age, encryptions, queued ciphertexts")
    rotate = keys_command("rotate", "create a new data key and make it primary, online")
    rotate.add_argument(
        "--propagation",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long the new key is loaded everywhere before it becomes primary "
        "(default: vault.refresh_interval + 1)",
    )
    rewrap = keys_command("rewrap", "re-encrypt queued ciphertexts under the primary data key")
    rewrap.add_argument("--batch", type=int, default=1000)
    rewrap.add_argument("--parallel", type=int, default=2, help="batches in flight (default 2)")
    rewrap.add_argument(
        "--pause",
        type=float,
        default=0.3,
        metavar="SECONDS",
        help="pause after each batch so the running service keeps its pace (default 0.3)",
    )
    retire = keys_command("retire", "destroy a data key no queued ciphertext uses")
    retire.add_argument("key_id")
    keys_command("rotate-kek", "rewrap every data key under the current key-encryption key")
    audit = keys_command("audit", "the key audit log, newest first")
    audit.add_argument("--limit", type=int, default=50)
