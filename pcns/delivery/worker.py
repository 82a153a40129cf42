"""The delivery loop: claim due deliveries in bounded batches, attempt each, record outcomes.

Scheduled retries live in the queue (a due time on the row), never in sleeping coroutines. A
worker that dies stops heartbeating; the reaper in any live worker hands its rows to another
(:mod:`pcns.delivery.heartbeat`). What an attempt's result means (retry, give up, expire, defer)
is decided in :mod:`pcns.delivery.outcomes`; the completer records it and counts it.

A worker claims only what it can start: a target at its concurrency cap, or one that hashes
while the hashing pool has all the work it can take, is left in the queue for now rather than
claimed to wait; and the attempt's timeout runs only while the target works
(:mod:`pcns.delivery.clock`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Mapping
from uuid import UUID, uuid4

import structlog

from pcns.config import DeliverySettings
from pcns.delivery.clock import AttemptClock
from pcns.delivery.completer import Completer
from pcns.delivery.heartbeat import Heartbeat
from pcns.delivery.outcomes import NO_BREAKER, BreakerView, DeliveryPolicy, Failure, decide
from pcns.delivery.protection import NoSlot, TargetGuard
from pcns.delivery.retry import RetryPolicy
from pcns.errors import DatabaseError
from pcns.health import TargetHealth
from pcns.keys.manager import KeyManager
from pcns.metrics import Metrics
from pcns.queue.deliveries import DeliveryQueue
from pcns.queue.records import ClaimedDelivery, DeliveryId
from targets.base import Password, PermanentError, Target, TransientError
from targets.hashing import hashing_threads
from vault import IntegrityError, KekError, open_sealed

log = structlog.get_logger(__name__)

DEFERRALS_REPORT_INTERVAL = 30.0
# Attempts of hashing targets a worker keeps in flight per hashing thread: one hashing, one
# ready behind it, so the pool never idles for a claim's round trip and nothing more waits.
HASHING_AHEAD = 2


class DeliveryWorker:
    """``async with DeliveryWorker(...)``: delivers until the block ends, then finishes or
    releases what is in flight (``delivery.shutdown_grace``)."""

    def __init__(
        self,
        *,
        queue: DeliveryQueue,
        keys: KeyManager,
        targets: Mapping[str, Target],
        guards: Mapping[str, TargetGuard],
        settings: DeliverySettings,
        metrics: Metrics,
        health: TargetHealth | None = None,
    ) -> None:
        self._queue = queue
        self._keys = keys
        self._targets = targets
        self._guards = guards
        # Bound once: the per-attempt line is on the hot path.
        self._log = log.bind()
        # How long an attempt may wait for a slot or rate token and still finish inside its lease.
        self._slot_wait = max(1.0, settings.lease - settings.attempt_timeout - 5.0)
        self._settings = settings
        self._metrics = metrics
        self._policy = DeliveryPolicy(
            RetryPolicy(settings.max_attempts, settings.backoff_initial, settings.backoff_max),
            max_age=settings.max_age,
        )
        self._inflight: dict[DeliveryId, tuple[ClaimedDelivery, asyncio.Task[None]]] = {}
        self._using: dict[DeliveryId, Target] = {}  # the adapter each attempt runs on
        self._reserved = 0  # slots promised to claims still on their way back
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._stop = asyncio.Event()
        self._completer = Completer(queue, metrics, self._wake.set, health)
        self._heartbeat = Heartbeat(
            queue,
            settings,
            on_fenced=self._abandon_in_flight,
            on_reaped=self._reaped,
            on_expired=self._expired,
            held=self._held_leases,
        )
        self._claims_under_way: set[UUID] = set()  # lease tokens of claims not yet answered
        self._hashing_targets: set[str] = set()  # targets whose attempts used the hashing pool
        self._hashing_capacity = HASHING_AHEAD * hashing_threads()
        self._deferred: Counter[str] = Counter()
        self._promised: Counter[str] = Counter()  # quotas handed to claims still under way
        self._task: asyncio.Task[None] | None = None

    @property
    def guards(self) -> Mapping[str, TargetGuard]:
        return self._guards

    def apply(
        self,
        *,
        targets: Mapping[str, Target],
        guards: Mapping[str, TargetGuard],
        settings: DeliverySettings,
    ) -> None:
        """A reloaded configuration: attempts from now on use these; those in flight finish on
        the adapter they started with."""
        self._targets, self._guards, self._settings = targets, guards, settings
        self._heartbeat.apply(settings)
        self._slot_wait = max(1.0, settings.lease - settings.attempt_timeout - 5.0)
        self._policy = DeliveryPolicy(
            RetryPolicy(settings.max_attempts, settings.backoff_initial, settings.backoff_max),
            max_age=settings.max_age,
        )

    def attempts_using(self, adapter: Target) -> int:
        """How many attempts in flight run on ``adapter``."""
        return sum(1 for used in self._using.values() if used is adapter)

    async def __aenter__(self) -> DeliveryWorker:
        self._task = asyncio.create_task(self.run(self._stop), name="pcns-worker")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then finish or release in-flight work."""
        async with self._completer:
            helpers = [
                asyncio.create_task(
                    self._queue.listen_for_work(self._wake.set, stop), name="pcns-listen"
                ),
                asyncio.create_task(self._heartbeat.run(stop), name="pcns-heartbeat"),
                asyncio.create_task(self._report_deferrals(stop), name="pcns-deferrals"),
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
                await self._heartbeat.retire()

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        s = self._settings
        failures = 0
        while not stop.is_set():
            if not self._heartbeat.registered.is_set():
                # Claims carry the worker's id: none before its row exists, or the reaper would
                # hand them straight back.
                await _wait_any(stop, self._heartbeat.registered, timeout=s.poll_interval)
                continue
            s = self._settings
            limit = min(s.workers - len(self._inflight) - self._reserved, s.claim_batch)
            if limit <= 0:
                self._slot_freed.clear()
                await _wait_any(stop, self._slot_freed, timeout=s.poll_interval)
                continue
            self._wake.clear()
            self._reserved += limit
            worker = self._heartbeat.id
            quotas = self._quotas()
            promised = Counter({t: n for t, n in quotas.items() if n > 0})
            self._promised += promised
            token = uuid4()
            self._claims_under_way.add(token)
            try:
                claimed, ended = await self._queue.claim(
                    limit=limit,
                    lease_seconds=s.lease,
                    max_age_seconds=s.max_age,
                    targets=list(self._targets),
                    worker=worker,
                    quotas=quotas,
                    token=token,
                )
                failures = 0
            except DatabaseError as exc:
                # Unreachable, or refused (a deadlock with an operator's statement, say): the
                # claim rolled back whole, or committed with its answer lost; the heartbeat
                # returns whatever it took (its token is no longer held). Try again later.
                failures += 1
                log.warning(
                    "claim_failed", error=exc.cause, sqlstate=exc.sqlstate, consecutive=failures
                )
                # A NOTIFY (the LISTEN connection back) ends the pause early.
                await _wait_any(stop, self._wake, timeout=min(s.poll_interval * 2**failures, 30.0))
                continue
            except Exception as exc:  # a bug must not end the claim loop while the process runs
                failures += 1
                log.error("claim_crashed", error=type(exc).__name__, consecutive=failures)
                await _wait_any(stop, timeout=min(s.poll_interval * 2**failures, 30.0))
                continue
            finally:
                self._reserved -= limit
                self._promised -= promised
                self._claims_under_way.discard(token)
            for target, states in ended.items():
                for state in states:
                    self._metrics.ended.labels(target, state).inc()
            if worker != self._heartbeat.id:
                # Fenced while the claim was on its way: those rows carry the retired id and go
                # back to the queue with it; attempting them could race whoever takes them.
                continue
            for delivery in claimed:
                self._metrics.child(self._metrics.claimed, delivery.target).inc()
                task = asyncio.create_task(self._attempt(delivery))
                self._inflight[delivery.id] = (delivery, task)
            if len(claimed) < limit:
                # The queue had nothing more due (that this worker can start now): sleep until
                # a NOTIFY, a slot freed, the poll, or stop.
                self._slot_freed.clear()
                await _wait_any(stop, self._wake, self._slot_freed, timeout=s.poll_interval)

    def _quotas(self) -> dict[str, int]:
        """How many more attempts each limited target can start now (0: leave it queued)."""
        busy = Counter(d.target for d, _ in self._inflight.values()) + self._promised
        quotas = {
            name: guard.max_concurrency - busy[name]
            for name, guard in self._guards.items()
            if guard.max_concurrency is not None
        }
        hashing = self._hashing_targets & self._guards.keys()
        if hashing:
            free = self._hashing_capacity - sum(busy[t] for t in hashing)
            share = max(0, -(-free // len(hashing)))  # free slots split, rounded up
            for t in hashing:
                quotas[t] = min(quotas.get(t, share), share)
        return quotas

    async def _attempt(self, delivery: ClaimedDelivery) -> None:
        # Every line of this attempt (adapters' included) carries its ids: each attempt is its
        # own task, so the binding ends with it.
        structlog.contextvars.bind_contextvars(
            delivery_id=str(delivery.id), change_id=str(delivery.change_id), target=delivery.target
        )
        started = time.perf_counter()
        try:
            failure, breaker = await self._try_deliver(delivery)
            outcome = decide(delivery, failure, breaker, self._policy)
        finally:
            self._inflight.pop(delivery.id, None)
            self._slot_freed.set()
        if failure is not None and failure.kind == "timeout":
            # Its request may still be on the way: it could land for as long again.
            outcome = dataclasses.replace(outcome, doubt=2 * self._settings.attempt_timeout)
        if outcome.reason in ("no_slot", "probe_failed"):
            # Deferred: no attempt was made. Counted here, one summary line per interval.
            self._deferred[delivery.target] += 1
            self._completer.add(outcome)
            return
        self._log.info(
            "delivery_attempt",
            account=delivery.account,
            attempt=delivery.attempts,
            outcome=outcome.state,
            error=outcome.error,
            retry_in=round(outcome.delay, 3) if outcome.state == "pending" else None,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        self._completer.add(outcome)

    async def _try_deliver(self, d: ClaimedDelivery) -> tuple[Failure | None, BreakerView]:
        """Run one attempt; what went wrong (None: delivered) and what the breaker says."""
        adapter = self._targets.get(d.target)
        if adapter is None:
            reason = f"target {d.target!r} is not configured on this worker"
            return Failure("not_configured", reason), NO_BREAKER
        guard = self._guards[d.target]  # every configured target has one
        self._using[d.id] = adapter
        try:
            return await self._deliver_to(d, adapter, guard)
        finally:
            del self._using[d.id]

    async def _deliver_to(
        self, d: ClaimedDelivery, adapter: Target, guard: TargetGuard
    ) -> tuple[Failure | None, BreakerView]:
        try:
            await self._keys.ensure(d.sealed.key_id)
        except (KekError, DatabaseError) as exc:
            cause = exc.cause if isinstance(exc, DatabaseError) else type(exc).__name__
            return self._failed(guard, Failure("key_unavailable", f"data key unavailable: {cause}"))
        try:
            plaintext = open_sealed(self._keys.keyring, d.sealed, d.associated_data)
        except IntegrityError as exc:
            log.error("delivery_integrity_failure", key_id=d.sealed.key_id, error=str(exc))
            return Failure("integrity", str(exc)), NO_BREAKER
        probe = False
        try:
            async with guard.admit(wait=self._slot_wait) as probe:
                clock = AttemptClock(self._settings.attempt_timeout)
                try:
                    async with clock:
                        await adapter.set_password(d.account, Password(plaintext))
                finally:
                    if clock.own_work:
                        self._hashing_targets.add(d.target)
        except NoSlot as exc:
            view = BreakerView(is_open=guard.state == "open", cooldown=guard.cooldown)
            return Failure("no_slot", str(exc)), view
        except PermanentError as exc:
            return Failure("permanent", exc.reason), NO_BREAKER
        except TransientError as exc:
            failure = Failure("transient", exc.reason, exc.retry_after)
            return self._failed(guard, failure, probe=probe)
        except TimeoutError:
            return self._failed(guard, Failure("timeout", "attempt timed out"), probe=probe)
        except Exception as exc:  # an adapter bug must not kill the worker or lose the change
            log.error("adapter_error", error=type(exc).__name__)
            reason = f"adapter raised {type(exc).__name__}"
            return self._failed(guard, Failure("adapter_bug", reason), probe=probe)
        guard.record_success()
        self._metrics.child(self._metrics.breaker_open, d.target).set(0)
        return None, NO_BREAKER

    def _failed(
        self, guard: TargetGuard, failure: Failure, *, probe: bool = False
    ) -> tuple[Failure, BreakerView]:
        """Count a transient failure against the target's breaker."""
        if not guard.record_transient():
            return failure, NO_BREAKER
        self._metrics.breaker_open.labels(guard.name).set(1)
        log.warning("target_breaker_open", cooldown=guard.cooldown)
        return failure, BreakerView(opened=True, probe=probe, cooldown=guard.cooldown)

    def _held_leases(self) -> set[UUID]:
        """The lease tokens this worker holds: its attempts' and its claims' under way."""
        return {d.lease_token for d, _ in self._inflight.values()} | self._claims_under_way

    def _reaped(self, reaped: list[tuple[str, str]]) -> None:
        for target, state in reaped:
            log.warning("delivery_lease_expired", target=target, new_state=state)
            if state == "parked":
                self._metrics.parked.labels(target, "lease_lost").inc()
        self._wake.set()

    def _expired(self, targets: list[str]) -> None:
        for target in targets:
            log.warning("parked_delivery_expired", target=target)
            self._metrics.ended.labels(target, "expired").inc()

    def _abandon_in_flight(self) -> None:
        """Fenced: stop every attempt now; the reaper hands the rows to whoever is alive."""
        for _, task in self._inflight.values():
            task.cancel()

    async def _report_deferrals(self, stop: asyncio.Event) -> None:
        """One line per interval for the attempts deferred (no slot, breaker probing)."""
        while not await _wait_any(stop, timeout=DEFERRALS_REPORT_INTERVAL):
            if self._deferred:
                log.info("deliveries_deferred", counts=dict(self._deferred))
                self._deferred.clear()

    async def _drain(self) -> None:
        """Shutdown: let in-flight attempts finish for a grace period, release the rest."""
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
                await self._queue.release(unfinished)
                log.info("deliveries_released", count=len(unfinished))
            except DatabaseError:
                log.warning("release_failed_leases_will_expire", count=len(unfinished))


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
