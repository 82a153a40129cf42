"""The service configuration: one TOML file, ``PCNS_`` environment overrides, validated once.

Environment variables override the file: ``PCNS_SERVER__LISTEN=0.0.0.0:8443``,
``PCNS_DATABASE__URL=postgresql://...``, ``PCNS_DELIVERY__WORKERS=16`` (``__`` separates the
table from the key; list-valued tables such as ``targets`` take JSON).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from pcns.errors import ConfigError
from targets.templates import Template

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
ACCOUNT_FIELDS = frozenset({"user", "domain", "upn"})
ROUTING_FIELDS = frozenset({"name", "type", "account", "include", "exclude"})


def parse_duration(value: Any) -> float:
    """``"2s"``, ``"15m"``, ``"72h"``, ``"500ms"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '2s', '15m' or '72h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError("expected a duration such as '2s', '15m' or '72h'")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]

# The shortest database.retention / `pcns db prune --older-than`: far beyond the signature's
# timestamp tolerance (a resend must be stale before its change row can be gone), and a typo
# such as "30s" cannot wipe the last hour's history.
MIN_RETENTION_SECONDS = 3600.0


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    listen: str = "127.0.0.1:8080"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    max_body_bytes: int = Field(default=16 * 1024, gt=0, le=1024 * 1024)
    timestamp_tolerance: Duration = 300.0
    commit_batch: int = Field(default=256, gt=0, le=4096)

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("expected HOST:PORT, for example 127.0.0.1:8080")
        return value

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_cert is None and not is_loopback(self.host):
            raise ValueError(
                f"listen = {self.listen!r} is not a loopback address: "
                "tls_cert and tls_key are required"
            )
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("client_ca (mTLS) needs tls_cert and tls_key")
        return self


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DatabaseSettings(_Section):
    url: SecretStr = SecretStr("")
    data_dir: Path = Path("pcns-data")
    pool_size: int = Field(default=10, ge=2, le=200)
    # How long `pcns serve` waits for PostgreSQL to accept connections at start.
    connect_wait: Duration = 30.0
    # Finished deliveries (and changes with none left) older than this are deleted hourly by the
    # workers; unset keeps the history. See pcns.queue.retention for what is always kept.
    retention: Duration | None = None

    @field_validator("retention", mode="before")
    @classmethod
    def _retention_off(cls, value: Any) -> Any:
        return None if value in ("", "off") else value

    @field_validator("retention")
    @classmethod
    def _retention_floor(cls, value: float | None) -> float | None:
        if value is not None and value < MIN_RETENTION_SECONDS:
            raise ValueError("retention must be at least 1h (or unset to keep the history)")
        return value


class TransitSettings(_Section):
    """Vault / OpenBao transit engine holding the key-encryption key."""

    url: str = Field(pattern=r"^https?://")
    key: str = "pcns"
    mount: str = "transit"
    token_file: Path | None = None
    approle_role_id: str | None = None
    approle_secret_id_file: Path | None = None
    approle_mount: str = "approle"
    ca_file: Path | None = None
    namespace: str | None = None
    timeout: Duration = 10.0

    @model_validator(mode="after")
    def _one_auth(self) -> TransitSettings:
        if (self.token_file is None) == (self.approle_role_id is None):
            raise ValueError("set exactly one of token_file and approle_role_id")
        if self.approle_role_id is not None and self.approle_secret_id_file is None:
            raise ValueError("approle_role_id needs approle_secret_id_file")
        return self


# NIST SP 800-38D caps random 96-bit nonces at 2^32 encryptions per key; stay far below.
MAX_ENCRYPTIONS_CEILING = 2**32


class VaultSettings(_Section):
    kek: Literal["file", "transit"] = "file"
    keyring: Path = Path("pcns-data/keyring.json")  # the file KEK (``kek = "file"``)
    transit: TransitSettings | None = None
    rotate_after: Duration = 30 * 86400.0
    max_encryptions: int = Field(default=2**30, ge=1, le=MAX_ENCRYPTIONS_CEILING // 2)
    refresh_interval: Duration = 5.0

    @model_validator(mode="after")
    def _transit_needs_settings(self) -> VaultSettings:
        if self.kek == "transit" and self.transit is None:
            raise ValueError('kek = "transit" needs a [vault.transit] table')
        return self


class AdminSettings(_Section):
    token_file: Path = Path("pcns-data/admin.token")


class DeliverySettings(_Section):
    workers: int = Field(default=8, ge=1, le=1024)
    max_attempts: int = Field(default=12, ge=1, le=1000)
    backoff_initial: Duration = 2.0
    backoff_max: Duration = 900.0
    max_age: Duration = 72 * 3600.0
    lease: Duration = 60.0
    attempt_timeout: Duration = 25.0
    shutdown_grace: Duration = 10.0
    poll_interval: Duration = 1.0
    claim_batch: int = Field(default=64, ge=1, le=1000)
    claimers: int = Field(default=2, ge=1, le=16)
    # A worker refreshes its heartbeat this often; one silent for worker_timeout is dead and
    # its in-flight deliveries go back to the queue.
    heartbeat_interval: Duration = 2.0
    worker_timeout: Duration = 10.0

    @model_validator(mode="after")
    def _ordered(self) -> DeliverySettings:
        problems = []  # the rules are independent: report all at once
        if self.backoff_max < self.backoff_initial:
            problems.append("backoff_max must not be shorter than backoff_initial")
        if self.attempt_timeout * 2 > self.lease:
            # A live worker must always finish (or time out) well inside its lease, or the
            # reaper could hand the row to another worker while the first is still writing.
            problems.append("attempt_timeout must be at most half of lease")
        if self.heartbeat_interval * 3 > self.worker_timeout:
            # Two heartbeats may be lost (a slow database) before a live worker counts as dead.
            problems.append("worker_timeout must be at least three heartbeat_interval")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class SourceSettings(_Section):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    secret_file: Path
    # Refuse plaintext ``password`` bodies from this source (403): its hook must seal.
    require_sealed: bool = False


class TargetConfig(BaseModel):
    """Routing fields common to every target; the rest goes to the adapter's own settings."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    type: str
    account: str = "{user}"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    # Protection of the target application (not passed to the adapter).
    max_concurrency: int | None = Field(default=None, ge=1, le=1024)
    rate_limit: float | None = Field(default=None, gt=0)
    breaker_threshold: int = Field(default=5, ge=1, le=1000)
    breaker_cooldown: Duration = 30.0

    @field_validator("account")
    @classmethod
    def _template(cls, value: str) -> str:
        Template.parse(value, ACCOUNT_FIELDS)  # ValueError naming the placeholder or the brace
        return value

    def account_template(self) -> Template:
        """The ``account`` template, parsed (it was validated with the configuration)."""
        return Template.parse(self.account, ACCOUNT_FIELDS)

    def adapter_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PCNS_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    vault: VaultSettings = VaultSettings()
    admin: AdminSettings = AdminSettings()
    delivery: DeliverySettings = DeliverySettings()
    sources: tuple[SourceSettings, ...] = ()
    targets: tuple[TargetConfig, ...] = ()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file, which arrives as init arguments.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        duplicates = duplicate_names(self.sources, self.targets)
        if duplicates:
            raise ValueError(
                "; ".join(f"{kind}: duplicate names {names}" for kind, names in duplicates.items())
            )
        return self


def duplicate_names(
    sources: Iterable[SourceSettings], targets: Iterable[TargetConfig]
) -> dict[str, list[str]]:
    """``{"sources": [...], "targets": [...]}``: the ids and names given more than once, sorted;
    a list without repeats is left out."""
    found: dict[str, list[str]] = {}
    for kind, names in (
        ("sources", [s.id for s in sources]),
        ("targets", [t.name for t in targets]),
    ):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            found[kind] = repeated
    return found


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the key, never echoing the value."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{loc}: {err['msg']}")
    return "; ".join(lines)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file as a dict; :class:`ConfigError` names the file and what is wrong with it."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from None


def load_settings(path: Path | None) -> Settings:
    """Read, merge with the environment, and validate; :class:`ConfigError` names the key."""
    data = read_toml(path, "config file") if path is not None else {}
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(
            f"config {path or '(environment)'}: {format_validation_error(exc)}"
        ) from None
    except SettingsError as exc:
        # A PCNS_* variable that is not valid JSON for its list or table; its text names the
        # field and the source, never the value.
        raise ConfigError(f"environment: {exc}; PCNS_* lists and tables are JSON") from None


Role = Literal["receiver", "worker", "all"]
