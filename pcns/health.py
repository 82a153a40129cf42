"""What this process knows of its targets' health, for ``/readyz``: the result of each target's
own ``check()`` at start, then of its latest delivery (delivered: ok; parked: failing, with the
reason). Informational: a failing target does not make the process unready, since its other
targets still deliver and a restart would not fix the application."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from targets.base import Target, TargetError

log = structlog.get_logger(__name__)

CHECK_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class TargetStatus:
    ok: bool | None  # None: not checked yet
    detail: str

    def describe(self) -> str:
        if self.ok is None:
            return "unchecked"
        return "ok" if self.ok else f"failing: {self.detail}"


class TargetHealth:
    def __init__(self, names: list[str]) -> None:
        self._status = {name: TargetStatus(None, "") for name in names}

    def rename(self, names: list[str]) -> None:
        """The configured targets changed (a reload): keep what is known of the others."""
        self._status = {n: self._status.get(n, TargetStatus(None, "")) for n in names}

    def record(self, target: str, *, ok: bool, detail: str = "") -> None:
        self._status[target] = TargetStatus(ok, detail)

    def report(self) -> dict[str, str]:
        return {name: status.describe() for name, status in sorted(self._status.items())}

    async def check_all(self, targets: Mapping[str, Target]) -> None:
        """Run every target's ``check()`` once, concurrently; log the ones that fail."""
        await asyncio.gather(*(self._check(name, t) for name, t in targets.items()))

    async def _check(self, name: str, target: Target) -> None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await target.check()
        except (TargetError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            log.warning("target_check_failed", target=name, reason=reason)
            self.record(name, ok=False, detail=reason)
            return
        except Exception as exc:  # a third-party adapter's check must not stop the worker
            log.warning("target_check_failed", target=name, reason=type(exc).__name__)
            self.record(name, ok=False, detail=f"check raised {type(exc).__name__}")
            return
        self.record(name, ok=True)
