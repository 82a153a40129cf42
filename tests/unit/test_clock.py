"""The attempt clock: a target's time counts against attempt_timeout, pcns's own work does not."""

from __future__ import annotations

import asyncio

import pytest

from pcns.delivery.clock import AttemptClock
from targets.base import off_the_clock


async def test_own_work_does_not_count_against_the_timeout() -> None:
    """Hashing (off the clock) for longer than the whole timeout does not time the attempt out,
    and the clock says the attempt did work of its own."""
    async with AttemptClock(0.2) as clock:
        with off_the_clock():
            await asyncio.sleep(0.4)
        await asyncio.sleep(0.05)
    assert clock.own_work


async def test_the_target_time_before_and_after_adds_up() -> None:
    """Time on the clock before and after a pause is summed: 0.15 s + 0.15 s of target time
    exceeds a 0.2 s timeout even with a pause between them."""

    async def attempt() -> None:
        async with AttemptClock(0.2):
            await asyncio.sleep(0.15)
            with off_the_clock():
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.15)

    with pytest.raises(TimeoutError):
        await attempt()


async def test_a_slow_target_still_times_out() -> None:
    """Without own work the clock is a plain timeout, and it reports no own work."""
    clock = AttemptClock(0.1)

    async def attempt() -> None:
        async with clock:
            await asyncio.sleep(1)

    with pytest.raises(TimeoutError):
        await attempt()
    assert not clock.own_work


async def test_outside_an_attempt_off_the_clock_does_nothing() -> None:
    """An adapter used on its own (pcns targets check, a test) may call off_the_clock freely."""
    with off_the_clock():
        await asyncio.sleep(0)


async def test_concurrent_own_work_in_one_attempt() -> None:
    """Two hashes at once in one attempt pause the clock once and resume it once."""
    async with AttemptClock(0.2) as clock:

        async def hash_for(seconds: float) -> None:
            with off_the_clock():
                await asyncio.sleep(seconds)

        await asyncio.gather(hash_for(0.3), hash_for(0.35))
        await asyncio.sleep(0.05)
    assert clock.own_work
