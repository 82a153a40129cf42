"""Every outcome of a delivery attempt, decided by the pure function the worker calls."""

from __future__ import annotations

import random
import uuid
from typing import get_args

import pytest

from pcns.delivery.outcomes import (
    NO_BREAKER,
    BreakerView,
    DeliveryPolicy,
    Failure,
    FailureKind,
    decide,
)
from pcns.delivery.retry import RetryPolicy
from pcns.queue.records import ChangeId, ClaimedDelivery, DeliveryId, OutcomeReason
from vault import Sealed

POLICY = DeliveryPolicy(RetryPolicy(max_attempts=5, initial=2.0, maximum=60.0), max_age=3600.0)
TRANSIENT_KINDS = ("key_unavailable", "transient", "timeout", "adapter_bug")


def delivery(*, attempts: int = 1, age: float = 10.0) -> ClaimedDelivery:
    return ClaimedDelivery(
        id=DeliveryId(uuid.uuid4()),
        change_id=ChangeId(uuid.uuid4()),
        target="app",
        account="alice",
        attempts=attempts,
        age_seconds=age,
        lease_token=uuid.uuid4(),
        sealed=Sealed("dek-1", b"n" * 12, b"c" * 32),
    )


def test_accepted_is_delivered() -> None:
    """No failure: the delivery ends delivered, nothing held."""
    out = decide(delivery(), None, NO_BREAKER, POLICY)
    assert (out.state, out.reason, out.error, out.postpone_target) == (
        "delivered",
        "delivered",
        None,
        None,
    )


def test_permanent_failure_parks_with_the_adapters_reason() -> None:
    """A PermanentError parks the delivery at once (kept for an operator's retry), whatever the
    attempt count."""
    out = decide(delivery(attempts=1), Failure("permanent", "no such user"), NO_BREAKER, POLICY)
    assert (out.state, out.reason, out.error) == ("parked", "permanent", "no such user")


def test_integrity_failure_ends_failed_and_says_integrity() -> None:
    """A ciphertext that fails authentication is never retried nor parked: it ends failed."""
    out = decide(delivery(), Failure("integrity", "tag mismatch"), NO_BREAKER, POLICY)
    assert (out.state, out.reason, out.error) == ("failed", "integrity", "integrity: tag mismatch")


@pytest.mark.parametrize("kind", TRANSIENT_KINDS)
def test_transient_failures_retry_with_backoff(kind: FailureKind) -> None:
    """Every transient kind goes back to pending with a delay under the backoff ceiling."""
    out = decide(delivery(attempts=2), Failure(kind, "busy"), NO_BREAKER, POLICY)
    assert (out.state, out.reason, out.error) == ("pending", "retried", "busy")
    assert 0.0 <= out.delay <= POLICY.retry.ceiling(2)


def test_retry_after_is_honoured() -> None:
    """A target's Retry-After is the lower bound of the next delay."""
    failure = Failure("transient", "429", retry_after=30.0)
    out = decide(delivery(), failure, NO_BREAKER, POLICY, rng=random.Random(3))
    assert out.state == "pending"
    assert out.delay >= 30.0


def test_last_attempt_parks() -> None:
    """After the attempt numbered max_attempts the delivery is parked, reason max_attempts."""
    out = decide(delivery(attempts=5), Failure("timeout", "attempt timed out"), NO_BREAKER, POLICY)
    assert (out.state, out.reason) == ("parked", "max_attempts")
    assert out.error == "attempt timed out (gave up after 5 attempts)"


def test_a_retry_past_max_age_expires() -> None:
    """When the next attempt would come after delivery.max_age, the delivery expires now."""
    old = delivery(age=3599.0)
    failure = Failure("transient", "busy", retry_after=30.0)
    out = decide(old, failure, NO_BREAKER, POLICY)
    assert (out.state, out.reason) == ("expired", "expired")
    assert "max_age" in (out.error or "")


def test_an_unconfigured_target_waits_without_using_an_attempt() -> None:
    """A delivery for a target this worker does not have (removed by a reload) goes back to
    the queue for a minute, its attempt not counted, whatever the count so far."""
    failure = Failure("not_configured", "target 'old' is not configured on this worker")
    out = decide(delivery(attempts=5), failure, NO_BREAKER, POLICY)
    assert (out.state, out.reason, out.delay) == ("deferred", "no_slot", 60.0)


def test_no_slot_defers_without_using_the_attempt() -> None:
    """No slot or rate token: deferred a second (the attempt is not counted)."""
    out = decide(delivery(), Failure("no_slot", "at its cap"), NO_BREAKER, POLICY)
    assert (out.state, out.reason, out.delay) == ("deferred", "no_slot", 1.0)


def test_no_slot_while_the_breaker_is_open_waits_the_cooldown() -> None:
    """Refused by an open breaker: deferred for the breaker's cool-down."""
    view = BreakerView(is_open=True, cooldown=20.0)
    out = decide(delivery(), Failure("no_slot", "breaker open"), view, POLICY)
    assert (out.state, out.delay) == ("deferred", 20.0)


def test_the_failure_that_opens_the_breaker_holds_the_target() -> None:
    """The transient failure that opens the breaker retries after at least the cool-down and
    asks for the target's pending deliveries to be held as long."""
    view = BreakerView(opened=True, cooldown=45.0)
    out = decide(delivery(attempts=1), Failure("transient", "down"), view, POLICY)
    assert (out.state, out.reason, out.postpone_target) == ("pending", "retried", 45.0)
    assert out.delay >= 45.0


def test_a_failed_probe_costs_no_attempt() -> None:
    """The half-open probe failing defers the delivery for the cool-down, not counted, so a
    target down for hours cannot exhaust max_attempts."""
    view = BreakerView(opened=True, probe=True, cooldown=45.0)
    out = decide(delivery(attempts=5), Failure("transient", "down"), view, POLICY)
    assert (out.state, out.reason, out.delay, out.postpone_target) == (
        "deferred",
        "probe_failed",
        45.0,
        45.0,
    )
    assert out.error == "down (circuit breaker open)"


def test_a_failed_probe_past_max_age_expires() -> None:
    """A probe failing when the cool-down would pass max_age ends the delivery expired."""
    view = BreakerView(opened=True, probe=True, cooldown=45.0)
    out = decide(delivery(age=3590.0), Failure("transient", "down"), view, POLICY)
    assert (out.state, out.reason, out.postpone_target) == ("expired", "expired", 45.0)
    assert out.error == "down (target still down at max_age)"


def test_every_failure_kind_and_reason_is_covered() -> None:
    """Each failure kind has a decision, and together the tests above meet every reason the
    completer counts."""
    kinds = set(get_args(FailureKind))
    assert kinds == {"integrity", "permanent", "no_slot", "not_configured", *TRANSIENT_KINDS}
    reasons = set()
    for kind in kinds:
        for view in (NO_BREAKER, BreakerView(opened=True, probe=True, cooldown=1.0)):
            for d in (delivery(), delivery(attempts=5), delivery(age=3599.5)):
                reasons.add(decide(d, Failure(kind, "x"), view, POLICY).reason)
    reasons.add(decide(delivery(), None, NO_BREAKER, POLICY).reason)
    assert reasons == set(get_args(OutcomeReason))
