"""An attempt's timeout that counts only the target's time.

``delivery.attempt_timeout`` bounds how long a target may take. Work on pcns's own side of an
attempt (an adapter hashing the password, which may first queue for the hashing pool) runs with
the clock stopped (:func:`targets.base.off_the_clock`), so a busy CPU in pcns never makes a
healthy target look slow, times its attempts out, or opens its breaker.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType

from targets.base import attempt_clock


class AttemptClock:
    """``async with AttemptClock(seconds) as clock``: raises TimeoutError when the target's
    share of the block runs past ``seconds``; ``clock.own_work`` tells whether it paused."""

    __slots__ = ("_depth", "_seconds", "_timeout", "_token", "own_work")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._timeout: asyncio.Timeout | None = None
        self._token: contextvars.Token[Callable[[], AbstractContextManager[None]] | None] | None
        self._token = None
        self._depth = 0
        self.own_work = False

    async def __aenter__(self) -> AttemptClock:
        self._timeout = asyncio.timeout(self._seconds)
        await self._timeout.__aenter__()
        self._token = attempt_clock.set(self._paused)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._timeout is not None
        assert self._token is not None
        attempt_clock.reset(self._token)
        await self._timeout.__aexit__(exc_type, exc, tb)

    @contextmanager
    def _paused(self) -> Iterator[None]:
        self.own_work = True
        timeout = self._timeout
        if timeout is None or self._depth or timeout.expired():
            yield  # already paused (two hashes at once), or already timing out
            return
        loop = asyncio.get_running_loop()
        when = timeout.when()
        left = self._seconds if when is None else max(0.0, when - loop.time())
        timeout.reschedule(None)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not timeout.expired():
                timeout.reschedule(loop.time() + left)
