"""What a target is: the adapter protocol, its errors, and how adapters are found."""

from __future__ import annotations

import stat
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
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


def read_secret_file(path: Path, *, what: str) -> str:
    """The one line of a credential file (a trailing line break dropped).

    ValueError, naming ``what`` and the file but never its content, when the file cannot be
    read, is empty, holds more than one line, or may be read by group or others: a target's
    credentials get the same care as the service's own secret files (chmod 600).
    """
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what}: {path} is not UTF-8 text") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(
            f"{what}: {path} has mode {stat.S_IMODE(mode):04o}; "
            "group and others must have no access (chmod 600)"
        )
    if not text:
        raise ValueError(f"{what}: {path} is empty")
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"{what}: {path} must hold one line")
    return text


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
