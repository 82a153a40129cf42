"""Retry policy as data: exponential backoff with full jitter, bounded attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Retry:
    delay: float
    kind: Literal["retry"] = "retry"


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str
    kind: Literal["give_up"] = "give_up"


Decision = Retry | GiveUp


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """What to do after a transient failure of attempt number ``attempt`` (1-based)."""

    max_attempts: int
    initial: float
    maximum: float

    def ceiling(self, attempt: int) -> float:
        """The backoff cap after ``attempt``: initial * 2^(attempt-1), at most ``maximum``."""
        return min(self.maximum, self.initial * 2.0 ** min(attempt - 1, 62))

    def decide(
        self,
        attempt: int,
        *,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> Decision:
        if attempt >= self.max_attempts:
            return GiveUp(f"gave up after {attempt} attempts")
        draw = (rng or _RNG).uniform(0.0, self.ceiling(attempt))
        if retry_after is not None:
            draw = max(draw, min(retry_after, self.maximum))
        return Retry(draw)


_RNG = random.SystemRandom()
