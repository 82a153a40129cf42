"""The retry policy: exponential backoff with full jitter, bounded attempts, Retry-After."""

from __future__ import annotations

import random

from pcns.delivery.retry import GiveUp, Retry, RetryPolicy

POLICY = RetryPolicy(max_attempts=5, initial=2.0, maximum=60.0)


def test_delays_stay_under_a_doubling_ceiling() -> None:
    """Attempt n waits a random time in [0, min(max, initial * 2^(n-1))]."""
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0)]:
        draws = [POLICY.decide(attempt, rng=rng) for _ in range(500)]
        delays = [d.delay for d in draws if isinstance(d, Retry)]
        assert len(delays) == 500
        assert max(delays) <= ceiling
        assert max(delays) > ceiling * 0.9  # full jitter spreads over the whole range
        assert min(delays) < ceiling * 0.1


def test_ceiling_is_capped_by_maximum() -> None:
    """Late attempts never wait longer than backoff_max."""
    policy = RetryPolicy(max_attempts=100, initial=2.0, maximum=60.0)
    assert policy.ceiling(50) == 60.0


def test_gives_up_at_max_attempts() -> None:
    """The attempt numbered max_attempts is the last one."""
    decision = POLICY.decide(5)
    assert isinstance(decision, GiveUp)
    assert "5 attempts" in decision.reason


def test_retry_after_is_a_lower_bound() -> None:
    """A target's Retry-After is honoured (up to backoff_max)."""
    rng = random.Random(1)
    d = POLICY.decide(1, retry_after=30.0, rng=rng)
    assert isinstance(d, Retry)
    assert d.delay >= 30.0
    d = POLICY.decide(1, retry_after=10_000.0, rng=rng)
    assert isinstance(d, Retry)
    assert d.delay == 60.0
