"""Per-target protection: a concurrency cap, a rate limit and a circuit breaker.

The breaker stops hammering a target that is down: after ``breaker_threshold`` transient failures
in a row it opens, and the target's pending deliveries are rescheduled past the cool-down
without an attempt (so none is burned). When they come due, the first attempt is the probe:
success closes the breaker, failure opens it again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class NoSlot(Exception):
    """No concurrency slot or rate token became free in time; the delivery goes back unharmed."""


@dataclass(frozen=True, slots=True)
class Protection:
    max_concurrency: int | None
    rate_limit: float | None  # deliveries per second
    breaker_threshold: int
    breaker_cooldown: float


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self._rate)


class TargetGuard:
    """One target's limits and breaker, shared by every attempt in this process."""

    def __init__(self, name: str, protection: Protection) -> None:
        self.name = name
        self._p = protection
        self._slots = (
            asyncio.Semaphore(protection.max_concurrency) if protection.max_concurrency else None
        )
        self._bucket = (
            TokenBucket(protection.rate_limit, max(1.0, protection.rate_limit))
            if protection.rate_limit
            else None
        )
        self._failures = 0
        self._probing = False
        self.state: BreakerState = "closed"
        self.open_until = 0.0

    def admit(self, *, wait: float) -> Admission:
        """Hold a concurrency slot and a rate token for one attempt, waiting at most ``wait``.

        While the breaker is half-open only one attempt (the probe) goes through at a time;
        the context value says whether this attempt is that probe.
        """
        return Admission(self, wait)

    def is_open(self) -> bool:
        if self.state == "open" and time.monotonic() >= self.open_until:
            self.state = "half_open"
        return self.state == "open"

    def record_success(self) -> None:
        self._failures = 0
        self.state = "closed"

    def record_transient(self) -> bool:
        """Count a transient failure; True when this one opens the breaker."""
        self._failures += 1
        if self.state == "half_open" or (
            self.state == "closed" and self._failures >= self._p.breaker_threshold
        ):
            self.state = "open"
            self.open_until = time.monotonic() + self._p.breaker_cooldown
            return True
        return False

    @property
    def cooldown(self) -> float:
        return self._p.breaker_cooldown

    @property
    def max_concurrency(self) -> int | None:
        return self._p.max_concurrency


class Admission:
    """One attempt's passage through a :class:`TargetGuard` (``async with guard.admit(...)``).

    A plain class rather than a generator-based context manager, and no timer armed for a limit
    the target does not have: a target without a cap or a rate limit, breaker closed, is let
    through at the cost of a few attribute reads, once per delivery attempt.
    """

    __slots__ = ("_guard", "_probe", "_slot", "_wait")

    def __init__(self, guard: TargetGuard, wait: float) -> None:
        self._guard = guard
        self._wait = wait
        self._probe = False
        self._slot = False

    async def __aenter__(self) -> bool:
        g = self._guard
        if g.is_open():
            raise NoSlot(f"circuit breaker for target {g.name!r} is open")
        probe = g.state == "half_open"
        if probe:
            if g._probing:
                raise NoSlot(f"circuit breaker for target {g.name!r} is probing")
            g._probing = self._probe = True
        try:
            if g._slots is not None:
                cap = f"{g.name!r} is at its concurrency cap"
                await _within(self._wait, g._slots.acquire(), cap)
                self._slot = True
            if g._bucket is not None:
                await _within(self._wait, g._bucket.take(), f"{g.name!r} is at its rate limit")
        except BaseException:
            self._leave()
            raise
        return probe

    async def __aexit__(self, *exc_info: object) -> None:
        self._leave()

    def _leave(self) -> None:
        g = self._guard
        if self._slot:
            self._slot = False
            assert g._slots is not None
            g._slots.release()
        if self._probe:
            self._probe = False
            g._probing = False


async def _within(wait: float, waiting: Awaitable[object], why: str) -> None:
    """Await ``waiting`` for at most ``wait`` seconds; :class:`NoSlot` ("target ...") if not."""
    try:
        async with asyncio.timeout(wait):
            await waiting
    except TimeoutError:
        raise NoSlot(f"target {why}") from None
