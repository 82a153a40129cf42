"""What a target is: the adapter protocol, its errors, and how adapters are found.

Adapters are found through the entry-point group ``pcns.targets`` and imported only when a
configuration names their type (:func:`load_target_types`), so an optional library that no
configured target needs may be missing, and a broken third-party adapter stops nothing else.
"""

from __future__ import annotations

import contextvars
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

ENTRY_POINT_GROUP = "pcns.targets"
# The optional library (top-level module) an adapter of pcns's own needs, and the extra of the
# pcns distribution that installs it.
OPTIONAL_EXTRAS: Final = {
    "ldap3": "ldap",
    "pyasn1": "ldap",
    "scim2_models": "scim",
    "aiomysql": "mysql",
    "pymysql": "mysql",
    "aiosqlite": "sqlite",
}


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


class AdapterUnavailable(TargetError):
    """A configured target type's adapter cannot be imported.

    The message names the type and what is missing (a module and the extra that installs it), or
    the type of the exception the import raised; never that exception's text or traceback,
    which may quote a third party's configuration.
    """

    def __init__(self, target_type: str, reason: str) -> None:
        super().__init__(reason)
        self.target_type = target_type
        self.reason = reason


# Set by the caller of ``set_password`` (pcns's worker): what pauses the attempt's timeout.
attempt_clock: contextvars.ContextVar[Callable[[], AbstractContextManager[None]] | None] = (
    contextvars.ContextVar("pcns_attempt_clock", default=None)
)


@contextmanager
def off_the_clock() -> Iterator[None]:
    """Around work an adapter does on pcns's own side of an attempt (hashing a password): the
    attempt's timeout stops while it runs, so time spent waiting for pcns's CPU is never
    charged to the target. Outside an attempt it does nothing."""
    pause = attempt_clock.get()
    if pause is None:
        yield
        return
    with pause():
        yield


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


def _entry_points() -> dict[str, EntryPoint]:
    """The group's entry points by name; when two packages claim one name, the first wins."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def installed_target_types() -> list[str]:
    """The names of every installed adapter type, sorted; nothing is imported."""
    return sorted(_entry_points())


def _missing_module(name: str, ep: EntryPoint, exc: ModuleNotFoundError) -> AdapterUnavailable:
    module = (exc.name or "").partition(".")[0]
    dist = ep.dist.name if ep.dist is not None else None
    if not module:
        return AdapterUnavailable(name, f"target type {name!r}: {ep.value} cannot be imported")
    if module == ep.module.partition(".")[0]:
        return AdapterUnavailable(
            name, f"target type {name!r}: its module {ep.module} is not installed"
        )
    extra = OPTIONAL_EXTRAS.get(module)
    if extra is not None and (dist is None or dist.lower() == "pcns"):
        return AdapterUnavailable(
            name,
            f"target type {name!r} needs the optional package {module}: "
            f"pip install 'pcns[{extra}]'",
        )
    source = f" (from the package {dist})" if dist else ""
    return AdapterUnavailable(
        name, f"target type {name!r}{source} needs the module {module}, which is not installed"
    )


def _load(name: str, ep: EntryPoint) -> TargetFactory:
    """Import the adapter ``ep`` names for type ``name``; AdapterUnavailable when it fails."""
    try:
        factory = ep.load()
    except ModuleNotFoundError as exc:
        raise _missing_module(name, ep, exc) from None
    except Exception as exc:
        # Not chained: a third party's import error may quote its configuration or environment.
        raise AdapterUnavailable(
            name,
            f"target type {name!r}: importing {ep.value} failed with {type(exc).__name__} "
            f"(python -c 'import {ep.module}' shows why)",
        ) from None
    settings_model = getattr(factory, "settings_model", None)
    if not (isinstance(settings_model, type) and issubclass(settings_model, BaseModel)):
        raise AdapterUnavailable(
            name, f"target type {name!r}: {ep.value} is not an adapter (no settings_model)"
        )
    return factory  # type: ignore[no-any-return]  # entry points are untyped


def load_target_types(names: Iterable[str] | None = None) -> dict[str, TargetFactory]:
    """The adapters of the types in ``names``, imported now; every installed one when None.

    A name with no entry point is absent from the result (the caller names it, with
    :func:`installed_target_types`); an adapter that cannot be imported raises
    :class:`AdapterUnavailable`. Adapters not asked for are not imported.
    """
    installed = _entry_points()
    wanted = installed if names is None else dict.fromkeys(names)
    return {name: _load(name, installed[name]) for name in wanted if name in installed}
