"""Admission through a target's guard: the breaker's states, the single probe, the concurrency
cap and what each leaves behind when an attempt ends, fails or is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from pcns.delivery.protection import NoSlot, Protection, TargetGuard


def guard(*, cap: int | None = None, rate: float | None = None, threshold: int = 2) -> TargetGuard:
    return TargetGuard("erp", Protection(cap, rate, threshold, breaker_cooldown=0.05))


async def test_unlimited_closed_guard_lets_every_attempt_through() -> None:
    """Without a cap or a rate limit, with the breaker closed, many attempts pass at once and
    none of them is a probe."""
    g = guard()
    async with g.admit(wait=0.01) as a, g.admit(wait=0.01) as b:
        assert (a, b) == (False, False)


async def test_open_breaker_refuses_without_waiting() -> None:
    """Once enough transient failures open the breaker, admission is refused at once."""
    g = guard(threshold=2)
    assert not g.record_transient()
    assert g.record_transient()
    with pytest.raises(NoSlot, match="is open"):
        async with g.admit(wait=10.0):
            pass


async def test_half_open_breaker_lets_one_probe_through_at_a_time() -> None:
    """After the cool-down, the first attempt is the probe; a second one meanwhile is refused;
    when the probe ends, the next attempt is a probe again (the breaker is still half-open)."""
    g = guard(threshold=1)
    g.record_transient()
    await asyncio.sleep(0.06)
    async with g.admit(wait=0.01) as probe:
        assert probe is True
        with pytest.raises(NoSlot, match="probing"):
            async with g.admit(wait=0.01):
                pass
    async with g.admit(wait=0.01) as probe_again:
        assert probe_again is True
    g.record_success()
    async with g.admit(wait=0.01) as after:
        assert after is False


async def test_probe_that_raises_frees_the_probe() -> None:
    """An attempt failing inside the guard does not leave the breaker believing a probe is still
    running."""
    g = guard(threshold=1)
    g.record_transient()
    await asyncio.sleep(0.06)
    with pytest.raises(RuntimeError):
        async with g.admit(wait=0.01):
            raise RuntimeError("adapter bug")
    async with g.admit(wait=0.01) as probe:
        assert probe is True


async def test_concurrency_cap_refuses_after_the_wait_and_frees_its_slot() -> None:
    """With a cap of one, a second attempt waits, then is refused; once the first one ends, the
    slot is free again."""
    g = guard(cap=1)
    async with g.admit(wait=0.01):
        with pytest.raises(NoSlot, match="concurrency cap"):
            async with g.admit(wait=0.02):
                pass
    async with g.admit(wait=0.01):
        pass


async def test_cancelled_wait_for_a_slot_leaves_no_probe_or_slot_behind() -> None:
    """A probe cancelled while waiting for a slot (shutdown) neither holds a slot nor blocks the
    next probe."""
    g = guard(cap=1, threshold=1)
    async with g.admit(wait=0.01):
        g.record_transient()
        await asyncio.sleep(0.06)

        async def wait_for_slot() -> None:
            async with g.admit(wait=10.0):
                pass

        waiting = asyncio.create_task(wait_for_slot())
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    async with g.admit(wait=0.01) as probe:
        assert probe is True


async def test_rate_limit_refuses_when_no_token_comes_in_time() -> None:
    """At one delivery per second, the second attempt right after the first finds no token
    within a short wait, and is refused."""
    g = guard(rate=1.0)
    async with g.admit(wait=0.01):
        pass
    with pytest.raises(NoSlot, match="rate limit"):
        async with g.admit(wait=0.02):
            pass
