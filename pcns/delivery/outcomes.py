"""How a delivery attempt ends, decided in one pure function.

A delivery that cannot succeed as things are (a permanent error, attempts exhausted) is parked:
kept with its ciphertext for an operator's retry until ``delivery.max_age``. Only a ciphertext
that fails authentication ends failed at once: it can never be delivered.

The worker runs the attempt and reports what happened (nothing, or a :class:`Failure`) and what
the target's circuit breaker said (:class:`BreakerView`); :func:`decide` turns that into the
:class:`~pcns.queue.records.Outcome` the queue records. No I/O, no clock, no metrics here: the
completer counts each outcome once its row is written.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, assert_never

from pcns.delivery.retry import GiveUp, Retry, RetryPolicy
from pcns.queue.records import ClaimedDelivery, Outcome

FailureKind = Literal[
    "not_configured",  # no adapter for the target on this worker
    "key_unavailable",  # the data key could not be loaded (KEK or database away)
    "integrity",  # the ciphertext failed authentication
    "no_slot",  # no concurrency slot or rate token in time, or the breaker is open
    "permanent",  # the adapter said it will never work (PermanentError)
    "transient",  # the adapter said try again (TransientError)
    "timeout",  # the attempt ran past delivery.attempt_timeout
    "adapter_bug",  # the adapter raised something else
]
_TRANSIENT: frozenset[FailureKind] = frozenset(
    {"key_unavailable", "transient", "timeout", "adapter_bug"}
)
NOT_CONFIGURED_WAIT = 60.0


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    reason: str
    retry_after: float | None = None

    @property
    def transient(self) -> bool:
        """Whether the target's breaker counts it (:meth:`TargetGuard.record_transient`)."""
        return self.kind in _TRANSIENT


@dataclass(frozen=True, slots=True)
class BreakerView:
    """The target's circuit breaker as this attempt left it."""

    opened: bool = False  # this failure opened it
    probe: bool = False  # the attempt was the half-open probe
    is_open: bool = False  # open right now (how long a refused admission waits)
    cooldown: float = 0.0


NO_BREAKER = BreakerView()


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    retry: RetryPolicy
    max_age: float  # seconds from acceptance after which a delivery expires


def decide(
    delivery: ClaimedDelivery,
    failure: Failure | None,
    breaker: BreakerView,
    policy: DeliveryPolicy,
    *,
    rng: random.Random | None = None,
) -> Outcome:
    """The outcome of one attempt of ``delivery`` (``failure`` None: the target accepted it)."""
    d = delivery
    if failure is None:
        return Outcome(d, "delivered")
    match failure.kind:
        case "integrity":
            return Outcome(d, "failed", f"integrity: {failure.reason}", reason="integrity")
        case "permanent":
            # Kept, not destroyed: what an operator can fix (a read-only file system, a refused
            # login, a missing table) is retried from here with `pcns deliveries retry`.
            return Outcome(d, "parked", failure.reason, reason="permanent")
        case "no_slot":
            delay = breaker.cooldown if breaker.is_open else 1.0
            return Outcome(d, "deferred", failure.reason, delay, reason="no_slot")
        case "not_configured":
            # A target this worker does not have (removed by a reload, or configured on other
            # workers only): the delivery stays queued and visible, no attempt used, until it
            # is configured again or delivery.max_age ends it.
            return Outcome(d, "deferred", failure.reason, NOT_CONFIGURED_WAIT, reason="no_slot")
        case "key_unavailable" | "transient" | "timeout" | "adapter_bug":
            return _after_transient(d, failure, breaker, policy, rng)
        case kind:
            assert_never(kind)


def _after_transient(
    d: ClaimedDelivery,
    failure: Failure,
    breaker: BreakerView,
    policy: DeliveryPolicy,
    rng: random.Random | None,
) -> Outcome:
    reason, retry_after = failure.reason, failure.retry_after
    hold: float | None = None
    if breaker.opened:
        # Stop hammering it: every pending delivery of the target waits out the cool-down.
        hold = breaker.cooldown
        retry_after = max(retry_after or 0.0, breaker.cooldown)
        if breaker.probe:
            # A failed probe says the target is still down: it costs no attempt, so a target
            # that is down for hours cannot exhaust max_attempts (max_age still ends the wait).
            if d.age_seconds + breaker.cooldown > policy.max_age:
                return Outcome(
                    d,
                    "expired",
                    f"{reason} (target still down at max_age)",
                    reason="expired",
                    postpone_target=hold,
                )
            return Outcome(
                d,
                "deferred",
                f"{reason} (circuit breaker open)",
                breaker.cooldown,
                reason="probe_failed",
                postpone_target=hold,
            )
    decision = policy.retry.decide(d.attempts, retry_after=retry_after, rng=rng)
    match decision:
        case GiveUp():
            return Outcome(
                d,
                "parked",
                f"{reason} ({decision.reason})",
                reason="max_attempts",
                postpone_target=hold,
            )
        case Retry():
            if d.age_seconds + decision.delay > policy.max_age:
                return Outcome(
                    d,
                    "expired",
                    f"{reason} (next attempt would pass delivery.max_age)",
                    reason="expired",
                    postpone_target=hold,
                )
            return Outcome(
                d, "pending", reason, decision.delay, reason="retried", postpone_target=hold
            )
    assert_never(decision)
