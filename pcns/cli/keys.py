"""``pcns keys``: init, list, rotate, rewrap, retire, rotate-kek, audit, and ``hook ...``."""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys

from pcns.app import AdminResources, admin_resources
from pcns.config import Settings, load_settings
from pcns.keys import admin, hook_admin
from pcns.keys.admin import KeyAdminError
from vault import create_keyring_file


def _actor(args: argparse.Namespace) -> str:
    return str(args.actor or f"{getpass.getuser()}@{socket.gethostname()}")


class _Progress:
    """A bar on a terminal; otherwise one line per tenth of the work."""

    def __init__(self) -> None:
        self._tenths = -1

    def __call__(self, done: int, total: int) -> None:
        share = min(done / total, 1.0) if total else 1.0
        if sys.stderr.isatty():
            bar = "#" * int(share * 30)
            print(f"\rrewrap [{bar:<30}] {done}/{total}", end="", file=sys.stderr, flush=True)
        elif int(share * 10) > self._tenths:
            self._tenths = int(share * 10)
            print(f"rewrap {done}/{total} ({share:.0%})", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> int:
    """Run one ``pcns keys`` command; returns the exit code."""
    settings = load_settings(args.config)
    if args.keys_command == "init":
        if settings.vault.kek != "file":
            mount = settings.vault.transit.mount if settings.vault.transit else "transit"
            print(
                "pcns keys init: the transit KEK lives in Vault/OpenBao; create it there "
                f"(bao write -f {mount}/keys/NAME)",
                file=sys.stderr,
            )
            return 2
        kek_id = create_keyring_file(settings.vault.keyring)
        print(f"created key-encryption key {kek_id} in {settings.vault.keyring} (mode 0600)")
        return 0
    try:
        return await _administer(args, settings, _actor(args))
    except KeyAdminError as exc:
        print(f"pcns keys: {exc}", file=sys.stderr)
        return 1


async def _administer(args: argparse.Namespace, settings: Settings, actor: str) -> int:
    async with admin_resources(settings) as res:
        store, kek = res.keys, res.kek
        if args.keys_command == "hook":
            return await _hook(args, res, actor)
        if args.keys_command == "list":
            rows = await admin.list_keys(store)
            print(f"{'key id':<34} {'state':<13} {'created':<26} {'encryptions':>12} {'queued':>8}")
            for k in rows:
                print(
                    f"{k.id:<34} {k.state:<13} {k.created_at:<26} {k.encryptions:>12}"
                    f" {k.queued_ciphertexts:>8}"
                )
        elif args.keys_command == "rotate":
            wait = args.propagation
            if wait is None:
                wait = settings.vault.refresh_interval + 1
            key_id = await admin.rotate(store, kek, actor=actor, propagation=wait)
            print(f"data key {key_id} is now primary")
        elif args.keys_command == "rewrap":
            report = await admin.rewrap(
                store,
                kek,
                actor=actor,
                batch=args.batch,
                parallel=args.parallel,
                pause=args.pause,
                progress=_Progress(),
            )
            if sys.stderr.isatty():
                print(file=sys.stderr)
            print(
                f"rewrapped {report.rewrapped}; integrity failures {report.integrity_failures};"
                f" still under old keys {report.remaining}"
            )
            return 0 if report.remaining == report.integrity_failures else 1
        elif args.keys_command == "retire":
            await admin.retire(store, actor=actor, key_id=args.key_id)
            print(f"data key {args.key_id} retired; its wrapped key is destroyed")
        elif args.keys_command == "rotate-kek":
            count = await admin.rotate_kek(store, kek, actor=actor)
            print(f"rewrapped {count} data keys under the current {kek.name} KEK")
        elif args.keys_command == "audit":
            async with store.session() as s:
                for r in await s.audit_log(args.limit):
                    print(
                        json.dumps(
                            {
                                "at": r.at.isoformat(),
                                "actor": r.actor,
                                "action": r.action,
                                "key_id": r.key_id,
                                "detail": r.detail,
                            }
                        )
                    )
    return 0


async def _hook(args: argparse.Namespace, res: AdminResources, actor: str) -> int:
    command, store = args.hook_command, res.keys
    try:
        if command in ("create", "rotate"):
            key_id = await hook_admin.create(
                store, res.kek, actor=actor, rotate=command == "rotate"
            )
            print(f"hook key {key_id} is now current; export it with `pcns keys hook export`")
        elif command == "list":
            print(f"{'key id':<30} {'state':<9} {'created':<26}")
            for k in await hook_admin.list_hook_keys(store):
                print(f"{k.id:<30} {k.state:<9} {k.created_at:<26}")
        elif command == "export":
            public = await hook_admin.public_key(store, args.key_id)
            if args.format == "pem":
                print(public.pem(), end="")
            elif args.format == "raw":
                print(public.point.hex())
            else:
                doc = {
                    "key_id": public.key_id,
                    "public_key_pem": public.pem(),
                    "public_point_hex": public.point.hex(),
                }
                print(json.dumps(doc, indent=2))
        elif command == "retire":
            await hook_admin.retire(store, actor=actor, key_id=args.key_id)
            print(f"hook key {args.key_id} retired; its private half is destroyed")
    except hook_admin.HookKeyError as exc:
        print(f"pcns keys hook {command}: {exc}", file=sys.stderr)
        return 2
    return 0
