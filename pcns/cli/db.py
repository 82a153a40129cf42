"""``pcns db migrate|prune`` and ``pcns targets check``: one-shot commands on the database and
the targets, built by the composition root like the service's own."""

from __future__ import annotations

import asyncio
import sys

from pcns.app import configured_targets, open_database
from pcns.config import MIN_RETENTION_SECONDS, Settings, parse_duration
from pcns.errors import ConfigError
from pcns.queue.deliveries import DeliveryQueue
from pcns.queue.migrate import migrate_database
from targets.base import TargetError

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


async def targets_check(settings: Settings, names: list[str]) -> int:
    """Run each target's own check(); one line per target, exit 1 if any fails."""
    configured = [t.name for t in settings.targets]
    unknown = sorted(set(names) - set(configured))
    if unknown:
        print(
            f"pcns targets check: no such target {unknown}; configured: {sorted(configured)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    failed = 0
    async with configured_targets(settings) as targets:
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
    return EXIT_REJECTED if failed else EXIT_OK


async def migrate(settings: Settings) -> int:
    async with open_database(settings, pool_size=1, migrate=False) as db:
        applied = await migrate_database(db)
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return EXIT_OK


async def prune(settings: Settings, older_than: str, batch: int) -> int:
    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        raise ConfigError(f"--older-than: {exc}") from None
    if seconds < MIN_RETENTION_SECONDS:
        raise ConfigError("--older-than: must be at least 1h")
    if not 1 <= batch <= 100_000:
        raise ConfigError("--batch: must be between 1 and 100000")
    async with open_database(settings, pool_size=2, migrate=False) as db:
        pruned = await DeliveryQueue(db).prune(older_than=seconds, batch=batch)
    if pruned.skipped:
        print("pcns db prune: another prune is running; nothing more was deleted", file=sys.stderr)
    print(
        f"deleted {pruned.deliveries} finished deliveries and {pruned.changes} changes "
        f"older than {older_than}"
    )
    return EXIT_REJECTED if pruned.skipped else EXIT_OK
