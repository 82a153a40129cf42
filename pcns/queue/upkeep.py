"""Background upkeep of the queue: its gauges every few seconds, its history pruned hourly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from pcns.errors import DatabaseError
from pcns.metrics import Metrics
from pcns.queue.deliveries import DeliveryQueue
from pcns.queue.key_store import KeyStore
from vault import Keyring

log = structlog.get_logger(__name__)

STATS_INTERVAL = 5.0
PRUNE_FIRST_DELAY = 60.0
PRUNE_INTERVAL = 3600.0


async def _sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop``; True when stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


async def observe_queue(
    queue: DeliveryQueue,
    keys: KeyStore,
    metrics: Metrics,
    targets: Sequence[str],
    keyring: Keyring,
    stop: asyncio.Event,
) -> None:
    """Queue depth, oldest pending and queued ciphertexts per key, every ``STATS_INTERVAL``."""
    while not stop.is_set():
        try:
            stats = await queue.stats()
            async with keys.session() as s:
                sealed = await s.ciphertexts_per_key()
            metrics.observe_queue(list(targets), stats)
            metrics.observe_ciphertexts(set(keyring.key_ids), sealed)
            metrics.database_up.set(1)
        except DatabaseError:
            metrics.database_up.set(0)
        await _sleep_unless_stopped(stop, STATS_INTERVAL)


async def prune_history(
    queue: DeliveryQueue, metrics: Metrics, retention: float, stop: asyncio.Event
) -> None:
    """``database.retention``: delete finished history once an hour, the first time a minute
    after start (not while the service is still coming up)."""
    delay = PRUNE_FIRST_DELAY
    while not await _sleep_unless_stopped(stop, delay):
        delay = PRUNE_INTERVAL
        try:
            pruned = await queue.prune(older_than=retention)
        except DatabaseError as exc:
            log.warning("history_prune_failed", error=exc.cause)
            continue
        metrics.pruned.labels("deliveries").inc(pruned.deliveries)
        metrics.pruned.labels("changes").inc(pruned.changes)
        log.info(
            "history_pruned",
            deliveries=pruned.deliveries,
            changes=pruned.changes,
            skipped=pruned.skipped,
        )
