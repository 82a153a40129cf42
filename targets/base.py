"""What a target is: the adapter protocol, its errors, and how adapters are found."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

ENTRY_POINT_GROUP = "pcns.targets"


class TargetError(Exception):
    """Root of every error an adapter raises. Messages never contain a password."""


class TransientError(TargetError):
    """The target could not take the password now; the delivery is retried later.

    ``retry_after`` (seconds), when the target said how long to wait, is a lower bound for the
    next attempt.
    """

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class PermanentError(TargetError):
    """Retrying cannot help (account not found, password refused by the target's policy)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TargetConfigError(TargetError):
    """A target's configuration is invalid; the message names the field."""


class Password:
    """A plaintext password that never shows itself in a repr, str or log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Password('**********')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Password cannot be pickled")


class TargetSettings(BaseModel):
    """Base of every adapter's own configuration model (the ``[[targets]]`` table minus routing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@runtime_checkable
class Target(Protocol):
    """A per-application adapter.

    ``set_password`` raises :class:`TransientError` or :class:`PermanentError`; any library
    exception is translated at the adapter boundary.
    """

    settings_model: ClassVar[type[TargetSettings]]

    async def set_password(self, account: str, password: Password) -> None: ...

    async def check(self) -> None:
        """Probe connectivity and credentials without changing any password."""

    async def close(self) -> None: ...


class TargetFactory(Protocol):
    settings_model: type[TargetSettings]

    def __call__(self, name: str, settings: Any) -> Target: ...


def load_target_types() -> Mapping[str, TargetFactory]:
    """Every adapter type installed under the ``pcns.targets`` entry-point group, by type name."""
    found: dict[str, TargetFactory] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.load()
    return found
