"""A target that accepts every password and stores nothing, for benchmarks and smoke tests."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from pydantic import Field

from targets.base import Password, TargetSettings


class NoopSettings(TargetSettings):
    """``delay``: seconds each ``set_password`` waits, to stand in for a slow application."""

    delay: float = Field(default=0.0, ge=0.0)


class NoopTarget:
    """Accepts every password and discards it, after ``delay`` seconds.

    Meant for benchmarks (the cost of the service itself, without an application behind it) and
    smoke tests of a deployment; it never fails and never keeps or logs the password.
    """

    settings_model: ClassVar[type[TargetSettings]] = NoopSettings

    def __init__(self, name: str, settings: NoopSettings) -> None:
        self.name = name
        self._settings = settings
        self.accepted = 0

    def __repr__(self) -> str:
        return f"NoopTarget(name={self.name!r}, delay={self._settings.delay!r})"

    async def set_password(self, account: str, password: Password) -> None:
        """Wait ``delay`` seconds, then accept ``password`` without looking at it."""
        if self._settings.delay:
            await asyncio.sleep(self._settings.delay)
        self.accepted += 1

    async def check(self) -> None:
        """Always ready."""

    async def close(self) -> None:
        """Nothing to release."""
