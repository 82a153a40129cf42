"""Every problem ``pcns serve`` would meet in a configuration file, found in one pass.

``pcns serve`` stops at the first refusal: the settings, then the KEK, the sources' secrets, the
admin token, and one target after another. :func:`check_configuration` reads the same file and
the same ``PCNS_`` environment, makes the same checks for a role, and keeps going, so an operator
fixes everything in one round. Nothing is written and nothing is connected to: the database is
not opened, and the targets are only probed on request (``pcns config check --targets``).

Every :class:`Problem` names its key and says what is wrong without the value given: a database
URL can carry a password, an adapter's settings a token.
"""

from __future__ import annotations

import ssl
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from pcns.config import (
    AdminSettings,
    DatabaseSettings,
    Role,
    ServerSettings,
    Settings,
    SourceSettings,
    TargetConfig,
    VaultSettings,
    duplicate_names,
)
from pcns.errors import ConfigError, SecretFileError
from pcns.secret_files import read_private_file, read_webhook_secret
from targets.base import (
    AdapterUnavailable,
    TargetFactory,
    TargetSettings,
    installed_target_types,
    load_target_types,
)
from vault import FileKek, KekError, TransitConfig, TransitKek

M = TypeVar("M", bound=BaseModel)
Indexed = Sequence[tuple[int, M]]  # list items with their position in the file
POSTGRES_SCHEMES = ("postgresql", "postgres")  # what asyncpg accepts
_TABLES = frozenset({"server", "database", "vault", "admin"})
_LISTS = frozenset({"sources", "targets"})
_NOT_PEM = "not PEM, or the key is encrypted (serve would ask for its passphrase)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong: the key it is about and what is wrong with it, never the value."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


@dataclass(frozen=True)
class CheckedConfiguration:
    """What a check found, and what of the file was valid enough to count or to probe."""

    problems: list[Problem]
    sources: int
    targets: int
    # The targets whose routing and adapter settings are valid, with their index in the file.
    probe_targets: tuple[tuple[int, TargetConfig], ...] = ()


def check_configuration(path: Path, *, role: Role) -> list[Problem]:
    """Every problem ``pcns serve --config path --role role`` would refuse to start with."""
    return inspect_configuration(path, role=role).problems


def inspect_configuration(path: Path, *, role: Role) -> CheckedConfiguration:
    """:func:`check_configuration`, also returning what the summary and the probes need."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return CheckedConfiguration([Problem(str(path), "does not exist")], 0, 0)
    except tomllib.TOMLDecodeError as exc:  # the message has the line and column
        return CheckedConfiguration([Problem(str(path), f"not valid TOML: {exc}")], 0, 0)
    except OSError as exc:
        return CheckedConfiguration([Problem(str(path), f"cannot be read: {exc.strerror}")], 0, 0)
    try:
        settings = Settings(**data)
    except SettingsError as exc:  # a PCNS_ variable that is not valid JSON; names the field
        return CheckedConfiguration([Problem("(environment)", str(exc))], 0, 0)
    except ValidationError as exc:
        return _check_parts(_Parts.salvaged(data), role, exc)
    return _check_parts(_Parts.of(settings), role, None)


def adapter_settings(settings: Settings) -> tuple[dict[str, TargetSettings], list[Problem]]:
    """Every target's adapter settings validated by its adapter's model, by target name, and the
    problems of all targets (unknown type, adapter not importable, invalid or unknown keys)."""
    return _adapter_settings(list(enumerate(settings.targets)))


def validated_adapter_settings(settings: Settings) -> dict[str, TargetSettings]:
    """:func:`adapter_settings`, or :class:`ConfigError` listing every problem at once."""
    validated, problems = adapter_settings(settings)
    if problems:
        raise ConfigError("; ".join(str(p) for p in problems))
    return validated


def _adapter_settings(
    targets: Indexed[TargetConfig],
) -> tuple[dict[str, TargetSettings], list[Problem]]:
    factories: dict[str, TargetFactory] = {}
    unavailable: dict[str, str] = {}
    for name in sorted({cfg.type for _, cfg in targets}):
        try:  # one type at a time: a missing library must not hide the other types' problems
            factories.update(load_target_types([name]))
        except AdapterUnavailable as exc:
            unavailable[name] = exc.reason
    validated: dict[str, TargetSettings] = {}
    problems: list[Problem] = []
    for i, cfg in targets:
        factory = factories.get(cfg.type)
        if factory is None:
            reason = unavailable.get(cfg.type) or (
                f"unknown target type {cfg.type!r}; installed: {installed_target_types()}"
            )
            problems.append(Problem(f"targets.{i}.type", reason))
            continue
        try:
            validated[cfg.name] = factory.settings_model.model_validate(cfg.adapter_fields())
        except ValidationError as exc:
            key = f"targets.{i} ({cfg.name})"
            problems += [Problem(key, f"{loc}: {msg}" if loc else msg) for loc, msg in _errors(exc)]
    return validated, problems


def _errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(dotted key, message) of each error; the input is left out, as everywhere in pcns."""
    return [
        (".".join(str(p) for p in err["loc"]), err["msg"])
        for err in exc.errors(include_input=False, include_url=False)
    ]


@dataclass(frozen=True)
class _Parts:
    """The sections that the checks after validation need; None where a section is invalid."""

    server: ServerSettings | None
    database: DatabaseSettings | None
    vault: VaultSettings | None
    admin: AdminSettings | None
    sources: Indexed[SourceSettings]
    targets: Indexed[TargetConfig]
    source_count: int
    target_count: int

    @classmethod
    def of(cls, s: Settings) -> _Parts:
        sources, targets = list(enumerate(s.sources)), list(enumerate(s.targets))
        return cls(
            s.server, s.database, s.vault, s.admin, sources, targets, len(sources), len(targets)
        )

    @classmethod
    def salvaged(cls, data: dict[str, Any]) -> _Parts:
        """The valid sections and list items of settings that are invalid as a whole, so that
        one wrong value does not hide the problems of everything else."""
        fit: dict[str, Any] = {
            k: v
            for k, v in data.items()
            if (k in _TABLES and isinstance(v, dict)) or (k in _LISTS and isinstance(v, list))
        }
        try:
            raw = _Sections(**fit)
        except (ValidationError, SettingsError):  # already reported by Settings itself
            raw = _Sections.model_construct()
        return cls(
            _valid(ServerSettings, raw.server),
            _valid(DatabaseSettings, raw.database),
            _valid(VaultSettings, raw.vault),
            _valid(AdminSettings, raw.admin),
            _valid_items(SourceSettings, raw.sources),
            _valid_items(TargetConfig, raw.targets),
            len(raw.sources),
            len(raw.targets),
        )


class _Sections(BaseSettings):
    """The file's sections merged with the environment as :class:`Settings` merges them, each
    left unvalidated (the other keys are Settings' to report)."""

    model_config = SettingsConfigDict(env_prefix="PCNS_", env_nested_delimiter="__", extra="ignore")

    server: dict[str, Any] = Field(default_factory=dict)
    database: dict[str, Any] = Field(default_factory=dict)
    vault: dict[str, Any] = Field(default_factory=dict)
    admin: dict[str, Any] = Field(default_factory=dict)
    sources: list[Any] = Field(default_factory=list)
    targets: list[Any] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)  # as Settings: the environment wins


def _valid(model: type[M], value: Any) -> M | None:
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def _valid_items(model: type[M], items: list[Any]) -> list[tuple[int, M]]:
    return [(i, v) for i, item in enumerate(items) if (v := _valid(model, item)) is not None]


def _check_parts(
    parts: _Parts, role: Role, invalid: ValidationError | None
) -> CheckedConfiguration:
    duplicates = duplicate_names([s for _, s in parts.sources], [t for _, t in parts.targets])
    # Settings reports duplicates under "(top level)", and only when all else is valid; they are
    # reported here instead, under the list's name, whatever else is wrong.
    top_level = "Value error, " + "; ".join(
        f"{k}: duplicate names {v}" for k, v in duplicates.items()
    )
    problems = [
        Problem(key or "(top level)", msg)
        for key, msg in (_errors(invalid) if invalid is not None else [])
        if key or msg != top_level
    ]
    problems += [Problem(kind, f"duplicate names {names}") for kind, names in duplicates.items()]
    if parts.database is not None:
        problems += _database_problems(parts.database)
    if parts.server is not None:
        problems += _tls_problems(parts.server)
    if parts.vault is not None:
        problems += _kek_problems(parts.vault)
    if role in ("receiver", "all"):  # as serve: a worker reads neither of these
        problems += _source_problems(parts.sources)
        if parts.admin is not None:
            problems += _admin_problems(parts.admin)
    probe: tuple[tuple[int, TargetConfig], ...] = ()
    if role in ("worker", "all"):  # as serve: only a worker builds the targets
        validated, target_problems = _adapter_settings(parts.targets)
        problems += target_problems
        probe = tuple((i, t) for i, t in parts.targets if t.name in validated)
    return CheckedConfiguration(problems, parts.source_count, parts.target_count, probe)


def _database_problems(database: DatabaseSettings) -> list[Problem]:
    url = database.url.get_secret_value()
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if url and scheme not in POSTGRES_SCHEMES:
        # Not the value: it may hold a password.
        return [Problem("database.url", "expected a postgresql:// URL, or empty for embedded")]
    return []


def _tls_problems(server: ServerSettings) -> list[Problem]:
    """The listener's certificate, key and client CA load as ``serve`` loads them."""
    files = {"tls_cert": server.tls_cert, "tls_key": server.tls_key, "client_ca": server.client_ca}
    problems = [
        Problem(f"server.{key}", f"file {path} does not exist")
        for key, path in files.items()
        if path is not None and not path.is_file()
    ]
    if problems or server.tls_cert is None or server.tls_key is None:
        return problems
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An empty passphrase: an encrypted key fails here instead of prompting on a terminal.
        ctx.load_cert_chain(server.tls_cert, server.tls_key, password=b"")
    except (ssl.SSLError, OSError) as exc:
        return [Problem("server.tls_cert", f"does not load with tls_key: {_ssl_reason(exc)}")]
    if server.client_ca is not None:
        try:
            ctx.load_verify_locations(server.client_ca)
        except (ssl.SSLError, OSError) as exc:
            return [Problem("server.client_ca", f"does not load: {_ssl_reason(exc)}")]
    return []


def _ssl_reason(exc: ssl.SSLError | OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        # OpenSSL's reason names the failure ("KEY_VALUES_MISMATCH"); it quotes no key.
        return str(exc.reason).lower().replace("_", " ") if exc.reason else _NOT_PEM
    return exc.strerror or type(exc).__name__


def _kek_problems(vault: VaultSettings) -> list[Problem]:
    """The KEK provider builds, which reads its file as ``serve`` does; neither provider opens
    a connection or holds anything but memory before its first use, so nothing is closed."""
    transit = vault.transit if vault.kek == "transit" else None
    try:
        if transit is None:
            FileKek(vault.keyring)
        else:
            TransitKek(TransitConfig(**transit.model_dump()))
    except KekError as exc:
        if transit is None:
            return [Problem("vault.keyring", str(exc))]
        auth = "token_file" if transit.token_file else "approle_secret_id_file"
        return [Problem(f"vault.transit.{auth}", str(exc))]
    return []


def _source_problems(sources: Indexed[SourceSettings]) -> list[Problem]:
    problems = []
    for i, source in sources:
        try:
            read_webhook_secret(source.secret_file)
        except SecretFileError as exc:
            problems.append(Problem(f"sources.{i}.secret_file", str(exc)))
    return problems


def _admin_problems(admin: AdminSettings) -> list[Problem]:
    try:
        read_private_file(admin.token_file, "admin token")
    except SecretFileError as exc:
        return [Problem("admin.token_file", str(exc))]
    return []
