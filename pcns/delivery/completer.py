"""Outcomes are written in groups: one UPDATE records many attempts' results. This is the one
place an outcome is counted in the metrics, once its row is written: an outcome dropped because
its lease was lost is not counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import assert_never

import structlog

from pcns.errors import DatabaseError, DatabaseUnavailable
from pcns.health import TargetHealth
from pcns.metrics import Metrics
from pcns.queue.deliveries import DeliveryQueue
from pcns.queue.records import DeliveryId, Outcome, Recorded

log = structlog.get_logger(__name__)

_MAX_GROUP = 500


class Completer:
    """Collects outcomes and records them; keeps retrying while the database is away."""

    def __init__(
        self,
        queue: DeliveryQueue,
        metrics: Metrics,
        on_recorded: Callable[[], None],
        health: TargetHealth | None = None,
    ) -> None:
        self._queue = queue
        self._health = health
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
    ) -> tuple[dict[DeliveryId, Recorded], set[DeliveryId]]:
        ages: dict[DeliveryId, Recorded] = {}
        unrecorded: set[DeliveryId] = set()
        for outcome in group:
            try:
                ages.update(await self._queue.complete([outcome]))
            except DatabaseError as exc:
                # Its lease runs out and the reaper returns the delivery to the queue, so the
                # change is attempted again rather than lost.
                log.error(
                    "outcome_not_recorded",
                    delivery_id=str(outcome.delivery.id),
                    target=outcome.delivery.target,
                    error=exc.cause,
                    sqlstate=exc.sqlstate,
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
                ages = await self._queue.complete(group)
                failures = 0
            except DatabaseUnavailable as exc:
                # Nothing is lost: the outcomes wait here; if the worker dies first, the
                # deliveries are attempted again (at-least-once).
                self._pending[:0] = group
                failures += 1
                log.warning("outcomes_not_recorded", error=exc.cause, count=len(group))
                await asyncio.sleep(min(0.2 * 2**failures, 5.0))
                continue
            except DatabaseError as exc:
                # Refused, not unreachable: record the group one by one, so one outcome the
                # database will not take does not hold back the others.
                log.warning("outcomes_group_refused", error=exc.cause, count=len(group))
                ages, unrecorded = await self._record_one_by_one(group)
            except Exception as exc:  # a bug: logged as one, and the task that records lives on
                self._pending[:0] = group
                failures += 1
                log.error("outcomes_crashed", error=type(exc).__name__, count=len(group))
                await asyncio.sleep(min(0.2 * 2**failures, 5.0))
                continue
            # A finished delivery may unblock the next change for the same account: claim now.
            self._on_recorded()
            recorded = []
            for outcome in group:
                d = outcome.delivery
                if d.id in unrecorded:
                    continue
                written = ages.get(d.id)
                if written is None:
                    log.warning("delivery_lease_lost", delivery_id=str(d.id), target=d.target)
                    continue
                if written.again:
                    # Counted when the second write is: the row is pending again.
                    log.info("delivery_written_again_later", delivery_id=str(d.id), target=d.target)
                    continue
                self._count(outcome, written.age)
                recorded.append(outcome)
            await self._postpone_targets(recorded)

    def _count(self, outcome: Outcome, age: float) -> None:
        m, target = self._metrics, outcome.delivery.target
        match outcome.reason:
            case "delivered":
                m.child(m.delivered, target).inc()
                m.child(m.latency, target).observe(age)
                m.child(m.last_success, target).set(time.time())
                if self._health is not None:
                    self._health.record(target, ok=True)
            case "retried":
                m.child(m.retried, target).inc()
            case "no_slot":
                m.child(m.deferred, target).inc()
            case "probe_failed":
                pass  # a deferral the breaker's probe caused: neither an attempt nor a slot miss
            case "permanent" | "max_attempts":
                m.parked.labels(target, outcome.reason).inc()
                if self._health is not None:
                    self._health.record(target, ok=False, detail=outcome.error or outcome.reason)
            case "integrity":
                m.failed.labels(target, "integrity").inc()
                m.integrity_failures.labels(target).inc()
            case "expired":
                m.ended.labels(target, "expired").inc()
            case other:
                assert_never(other)

    async def _postpone_targets(self, recorded: Sequence[Outcome]) -> None:
        """A breaker that opened postpones its target's pending deliveries past the cool-down."""
        holds: dict[str, float] = {}
        for o in recorded:
            if o.postpone_target is not None:
                holds[o.delivery.target] = max(holds.get(o.delivery.target, 0.0), o.postpone_target)
        for target, seconds in holds.items():
            try:
                held = await self._queue.postpone_target(target, seconds)
                log.info("target_deliveries_postponed", target=target, count=held, seconds=seconds)
            except DatabaseError as exc:
                log.warning("target_postpone_failed", target=target, error=exc.cause)
