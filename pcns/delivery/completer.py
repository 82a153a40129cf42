"""Outcomes are written in groups: one UPDATE records many attempts' results."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import structlog

from pcns.database import UNAVAILABLE_ERRORS
from pcns.metrics import Metrics
from pcns.queue.records import DeliveryId, Outcome
from pcns.queue.store import complete_deliveries

log = structlog.get_logger(__name__)

_MAX_GROUP = 500


class Completer:
    """Collects outcomes and records them; keeps retrying while the database is away."""

    def __init__(
        self, pool: asyncpg.Pool, metrics: Metrics, on_recorded: Callable[[], None]
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._on_recorded = on_recorded
        self._pending: list[Outcome] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def __aenter__(self) -> Completer:
        self._task = asyncio.create_task(self._record_forever(), name="pcns-complete")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        self._ready.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=30)
            except TimeoutError:
                log.warning("outcomes_unrecorded_leases_will_expire", count=len(self._pending))

    def add(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        self._ready.set()

    async def _record_one_by_one(
        self, group: list[Outcome]
    ) -> tuple[dict[DeliveryId, float], set[DeliveryId]]:
        ages: dict[DeliveryId, float] = {}
        unrecorded: set[DeliveryId] = set()
        for outcome in group:
            try:
                async with self._pool.acquire(timeout=10) as conn:
                    ages.update(await complete_deliveries(conn, [outcome]))
            except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
                # Its lease runs out and the reaper returns the delivery to the queue, so the
                # change is attempted again rather than lost.
                log.error(
                    "outcome_not_recorded",
                    delivery_id=str(outcome.delivery.id),
                    target=outcome.delivery.target,
                    error=type(exc).__name__,
                    sqlstate=getattr(exc, "sqlstate", None),
                )
                unrecorded.add(outcome.delivery.id)
        return ages, unrecorded

    async def _record_forever(self) -> None:
        failures = 0
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            group, self._pending = self._pending[:_MAX_GROUP], self._pending[_MAX_GROUP:]
            unrecorded: set[DeliveryId] = set()
            try:
                async with self._pool.acquire(timeout=10) as conn:
                    ages = await complete_deliveries(conn, group)
                failures = 0
            except UNAVAILABLE_ERRORS as exc:
                # Nothing is lost: the outcomes wait here; if the leases run out first, the
                # deliveries are attempted again (at-least-once).
                self._pending[:0] = group
                failures += 1
                log.warning("outcomes_not_recorded", error=type(exc).__name__, count=len(group))
                await asyncio.sleep(min(0.2 * 2**failures, 5.0))
                continue
            except asyncpg.PostgresError as exc:
                # Refused, not unreachable: record the group one by one, so one outcome the
                # database will not take does not hold back the others.
                log.warning("outcomes_group_refused", error=type(exc).__name__, count=len(group))
                ages, unrecorded = await self._record_one_by_one(group)
            # A finished delivery may unblock the next change for the same account: claim now.
            self._on_recorded()
            for outcome in group:
                d = outcome.delivery
                if d.id in unrecorded:
                    continue
                age = ages.get(d.id)
                if age is None:
                    log.warning("delivery_lease_lost", delivery_id=str(d.id), target=d.target)
                elif outcome.state == "delivered":
                    m = self._metrics
                    m.child(m.delivered, d.target).inc()
                    m.child(m.latency, d.target).observe(age)
