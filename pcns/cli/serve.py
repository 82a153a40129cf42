"""``pcns serve``: run the receiver and/or the delivery workers; ``--init`` makes the files."""

from __future__ import annotations

import argparse
import asyncio
import signal

import structlog

from pcns.app import RunningService, run_service
from pcns.config import Settings, load_settings
from pcns.secret_files import new_admin_token, new_webhook_secret, write_private_file
from vault import create_keyring_file

EXIT_OK = 0

log = structlog.get_logger(__name__)


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


def serve(args: argparse.Namespace) -> int:
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
        # SIGHUP would end the process by default: until the service is up it is ignored.
        loop.add_signal_handler(signal.SIGHUP, lambda: log.warning("reload_ignored_while_starting"))
        reloads: set[asyncio.Task[bool]] = set()

        def on_started(service: RunningService) -> None:
            def reload() -> None:
                log.info("config_reload_requested", config=str(args.config))
                task = asyncio.create_task(service.reload_from(args.config))
                reloads.add(task)
                task.add_done_callback(reloads.discard)

            loop.add_signal_handler(signal.SIGHUP, reload)
            started(service)

        await run_service(settings, role=args.role, stop=stop, on_started=on_started)
        for task in reloads:  # a reload still running when the service stopped has no service
            task.cancel()
        await asyncio.gather(*reloads, return_exceptions=True)

    asyncio.run(run())
    return EXIT_OK
