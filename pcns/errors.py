"""The service's root exception and its kinds."""

from __future__ import annotations


class PcnsError(Exception):
    """Root of every error the service raises on purpose."""


class ConfigError(PcnsError):
    """The configuration is invalid; the message names the key."""


class SecretFileError(PcnsError):
    """A secret or token file is missing, malformed or readable by others."""


class DatabaseError(PcnsError):
    """A database call did not complete; nothing it would have written was committed.

    Raised only by ``pcns.queue`` and ``pcns.database``, which translate the driver's errors
    once. The message and attributes name the driver error's class and SQLSTATE, never its
    text: a refused row's detail can quote the row, ciphertext included.
    """

    def __init__(self, message: str, *, cause: str = "", sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.sqlstate = sqlstate


class DatabaseUnavailable(DatabaseError):
    """PostgreSQL cannot be reached right now (down, restarting, out of connections)."""


class QueueRefused(DatabaseError):
    """PostgreSQL was reached and refused the statement (a constraint, a deadlock, a bug)."""
