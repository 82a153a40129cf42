"""The delivery loop: claim due deliveries in bounded batches, attempt each, record outcomes.

Scheduled retries live in the queue (a due time on the row), never in sleeping coroutines. A
worker that dies loses its lease; the reaper in any live worker hands the row to another.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Mapping

import asyncpg
import structlog

from pcns.config import DeliverySettings
from pcns.database import UNAVAILABLE_ERRORS, connect
from pcns.delivery.completer import Completer
from pcns.delivery.protection import NoSlot, TargetGuard
from pcns.delivery.retry import GiveUp, RetryPolicy
from pcns.keys.manager import KeyManager
from pcns.metrics import Metrics
from pcns.queue.records import ClaimedDelivery, DeliveryId, Outcome
from pcns.queue.store import (
    WAKEUP_CHANNEL,
    claim_due_deliveries,
    defer_target,
    reap_expired_leases,
    release_deliveries,
)
from targets.base import Password, PermanentError, Target, TransientError
from vault import IntegrityError, KekError, open_sealed

log = structlog.get_logger(__name__)


class DeliveryWorker:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        url: str,
        keys: KeyManager,
        targets: Mapping[str, Target],
        guards: Mapping[str, TargetGuard],
        settings: DeliverySettings,
        metrics: Metrics,
    ) -> None:
        self._pool = pool
        self._url = url
        self._keys = keys
        self._targets = targets
        self._guards = guards
        # Bound once: the per-attempt line is on the hot path.
        self._log = log.bind()
        self._tasks: set[asyncio.Task[None]] = set()
        # How long an attempt may wait for a slot or rate token and still finish inside its lease.
        self._slot_wait = max(1.0, settings.lease - settings.attempt_timeout - 5.0)
        self._settings = settings
        self._metrics = metrics
        self._policy = RetryPolicy(
            settings.max_attempts, settings.backoff_initial, settings.backoff_max
        )
        self._inflight: dict[DeliveryId, tuple[ClaimedDelivery, asyncio.Task[None]]] = {}
        self._reserved = 0  # slots promised to claims still on their way back
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._completer = Completer(pool, metrics, self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then finish or release in-flight work."""
        async with self._completer:
            helpers = [
                asyncio.create_task(self._listen(stop), name="pcns-listen"),
                asyncio.create_task(self._reap(stop), name="pcns-reap"),
            ]
            try:
                # Several claimers overlap their round trips to PostgreSQL; they share the
                # worker slots, so together they never hold more than `workers` deliveries.
                await asyncio.gather(
                    *(self._claim_loop(stop) for _ in range(self._settings.claimers))
                )
            finally:
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                await self._drain()

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        s = self._settings
        failures = 0
        while not stop.is_set():
            limit = min(s.workers - len(self._inflight) - self._reserved, s.claim_batch)
            if limit <= 0:
                self._slot_freed.clear()
                await _wait_any(stop, self._slot_freed, timeout=s.poll_interval)
                continue
            self._wake.clear()
            self._reserved += limit
            try:
                async with self._pool.acquire(timeout=10) as conn:
                    claimed, ended = await claim_due_deliveries(
                        conn,
                        limit=limit,
                        lease_seconds=s.lease,
                        max_age_seconds=s.max_age,
                    )
                failures = 0
            except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
                # Unreachable, or refused (a deadlock with an operator's statement, say): the
                # claim rolled back whole, so nothing was taken; try again after a pause.
                failures += 1
                log.warning(
                    "claim_failed",
                    error=type(exc).__name__,
                    sqlstate=getattr(exc, "sqlstate", None),
                    consecutive=failures,
                )
                await _wait_any(stop, timeout=min(s.poll_interval * 2**failures, 30.0))
                continue
            finally:
                self._reserved -= limit
            for target, states in ended.items():
                for state in states:
                    self._metrics.ended.labels(target, state).inc()
            for delivery in claimed:
                task = asyncio.create_task(self._attempt(delivery))
                self._inflight[delivery.id] = (delivery, task)
            if len(claimed) < limit:
                # The queue had nothing more due: sleep until a NOTIFY, the poll, or stop.
                await _wait_any(stop, self._wake, timeout=s.poll_interval)

    async def _attempt(self, delivery: ClaimedDelivery) -> None:
        started = time.perf_counter()
        try:
            outcome = await self._try_deliver(delivery)
        finally:
            self._inflight.pop(delivery.id, None)
            self._slot_freed.set()
        self._log.info(
            "delivery_attempt",
            delivery_id=str(delivery.id),
            change_id=str(delivery.change_id),
            target=delivery.target,
            account=delivery.account,
            attempt=delivery.attempts,
            outcome=outcome.state,
            error=outcome.error,
            retry_in=round(outcome.delay, 3) if outcome.state == "pending" else None,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        self._completer.add(outcome)

    async def _try_deliver(self, d: ClaimedDelivery) -> Outcome:
        adapter = self._targets.get(d.target)
        if adapter is None:
            return self._transient(d, f"target {d.target!r} is not configured on this worker", None)
        try:
            await self._keys.ensure(d.sealed.key_id)
        except (KekError, asyncpg.PostgresError, *UNAVAILABLE_ERRORS) as exc:
            return self._transient(d, f"data key unavailable: {type(exc).__name__}", None)
        try:
            plaintext = open_sealed(self._keys.keyring, d.sealed, d.associated_data)
        except IntegrityError as exc:
            log.error(
                "delivery_integrity_failure",
                delivery_id=str(d.id),
                target=d.target,
                key_id=d.sealed.key_id,
                error=str(exc),
            )
            self._metrics.failed.labels(d.target, "integrity").inc()
            self._metrics.integrity_failures.labels(d.target).inc()
            return Outcome(d, "failed", f"integrity: {exc}")
        guard = self._guards.get(d.target)
        probe = False
        try:
            async with guard.admit(wait=self._slot_wait) if guard else _UNGUARDED as probe:
                async with asyncio.timeout(self._settings.attempt_timeout):
                    await adapter.set_password(d.account, Password(plaintext))
        except NoSlot as exc:
            self._metrics.deferred.labels(d.target).inc()
            return Outcome(d, "deferred", str(exc), self._defer_delay(guard))
        except PermanentError as exc:
            self._metrics.failed.labels(d.target, "permanent").inc()
            return Outcome(d, "failed", exc.reason)
        except TransientError as exc:
            return self._transient(d, exc.reason, exc.retry_after, probe=probe)
        except TimeoutError:
            return self._transient(d, "attempt timed out", None, probe=probe)
        except Exception as exc:  # an adapter bug must not kill the worker or lose the change
            log.error("adapter_error", target=d.target, error=type(exc).__name__)
            return self._transient(d, f"adapter raised {type(exc).__name__}", None, probe=probe)
        finally:
            del plaintext
        if guard is not None:
            guard.record_success()
            self._metrics.child(self._metrics.breaker_open, d.target).set(0)
        return Outcome(d, "delivered")

    @staticmethod
    def _defer_delay(guard: TargetGuard | None) -> float:
        if guard is not None and guard.state == "open":
            return guard.cooldown
        return 1.0

    def _transient(
        self, d: ClaimedDelivery, reason: str, retry_after: float | None, *, probe: bool = False
    ) -> Outcome:
        guard = self._guards.get(d.target)
        if guard is not None and guard.record_transient():
            # Stop hammering it: hold every pending delivery of this target past the cool-down.
            self._metrics.breaker_open.labels(d.target).set(1)
            log.warning("target_breaker_open", target=d.target, cooldown=guard.cooldown)
            self._background(self._defer_target(d.target, guard.cooldown))
            retry_after = max(retry_after or 0.0, guard.cooldown)
            if probe:
                # A failed probe says the target is still down: it costs no attempt, so a
                # target that is down for hours cannot exhaust max_attempts (max_age still ends
                # the wait).
                if d.age_seconds + guard.cooldown > self._settings.max_age:
                    self._metrics.ended.labels(d.target, "expired").inc()
                    return Outcome(d, "expired", f"{reason} (target still down at max_age)")
                return Outcome(d, "deferred", f"{reason} (circuit breaker open)", guard.cooldown)
        decision = self._policy.decide(d.attempts, retry_after=retry_after)
        if isinstance(decision, GiveUp):
            self._metrics.failed.labels(d.target, "max_attempts").inc()
            return Outcome(d, "failed", f"{reason} ({decision.reason})")
        if d.age_seconds + decision.delay > self._settings.max_age:
            self._metrics.ended.labels(d.target, "expired").inc()
            return Outcome(d, "expired", f"{reason} (next attempt would pass delivery.max_age)")
        self._metrics.retried.labels(d.target).inc()
        return Outcome(d, "pending", reason, decision.delay)

    def _background(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _defer_target(self, target: str, seconds: float) -> None:
        try:
            async with self._pool.acquire(timeout=10) as conn:
                held = await defer_target(conn, target, seconds)
            log.info("target_deliveries_held", target=target, count=held, seconds=seconds)
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            log.warning("target_hold_failed", target=target, error=type(exc).__name__)

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN for new work; polling covers the gaps while this connection is down."""
        while not stop.is_set():
            try:
                conn = await connect(self._url, wait=5.0)
            except UNAVAILABLE_ERRORS:
                await _wait_any(stop, timeout=5.0)
                continue
            try:
                await conn.add_listener(WAKEUP_CHANNEL, lambda *_: self._wake.set())
                lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                await _wait_any(stop, lost)
            except UNAVAILABLE_ERRORS:
                pass
            finally:
                with contextlib.suppress(*UNAVAILABLE_ERRORS):
                    await asyncio.wait_for(conn.close(), timeout=5)

    async def _reap(self, stop: asyncio.Event) -> None:
        interval = max(1.0, min(self._settings.lease / 4, 15.0))
        while not await _wait_any(stop, timeout=interval):
            try:
                async with self._pool.acquire(timeout=10) as conn:
                    reaped = await reap_expired_leases(
                        conn, max_attempts=self._settings.max_attempts
                    )
            except UNAVAILABLE_ERRORS:
                continue
            for target, state in reaped:
                log.warning("delivery_lease_expired", target=target, new_state=state)
                if state == "failed":
                    self._metrics.failed.labels(target, "lease_lost").inc()
            if reaped:
                self._wake.set()

    async def _drain(self) -> None:
        """Shutdown: let in-flight attempts finish for a grace period, release the rest."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self._inflight:
            return
        tasks = [task for _, task in self._inflight.values()]
        await asyncio.wait(tasks, timeout=self._settings.shutdown_grace)
        unfinished = [d for d, task in self._inflight.values() if not task.done()]
        for _, task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if unfinished:
            try:
                async with self._pool.acquire(timeout=10) as conn:
                    await release_deliveries(conn, unfinished)
                log.info("deliveries_released", count=len(unfinished))
            except UNAVAILABLE_ERRORS:
                log.warning("release_failed_leases_will_expire", count=len(unfinished))


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _: event.set()


async def _wait_any(
    stop: asyncio.Event,
    *events: asyncio.Event,
    timeout: float | None = None,  # noqa: ASYNC109 - several events at once, bounded by the poll
) -> bool:
    """Wait until ``stop`` or any of ``events`` is set, or ``timeout``; True when stopping."""
    waiters = [asyncio.create_task(e.wait()) for e in (stop, *events)]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
    return stop.is_set()


class _Unguarded:
    """The admission of a target without a guard: always let through, never the probe."""

    async def __aenter__(self) -> bool:
        return False

    async def __aexit__(self, *exc_info: object) -> None:
        return None


_UNGUARDED = _Unguarded()
