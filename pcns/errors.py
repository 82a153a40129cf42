"""The service's root exception and its kinds."""

from __future__ import annotations


class PcnsError(Exception):
    """Root of every error the service raises on purpose."""


class ConfigError(PcnsError):
    """The configuration is invalid; the message names the key."""


class SecretFileError(PcnsError):
    """A secret or token file is missing, malformed or readable by others."""


class DatabaseUnavailable(PcnsError):
    """PostgreSQL cannot be reached right now; nothing was committed."""
