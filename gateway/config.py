"""Settings of `rems-gateway serve` (docs/contracts.md §1).

Precedence: command-line flags > environment (`REMS_…`) > config file (`--config`, YAML or
TOML, keys are the field names) > defaults. Every problem is one line that names the setting.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gateway.cds.clients import load_cds_clients
from gateway.fhir.smart import SigningKey
from gateway.fhir.smart_clients import load_clients
from mappings.hl7v2.senders import SenderDirectory
from rems_core.rulepack import DEFAULT_PACK, PackLibrary, RulePackError
from rems_core.store.db import DEFAULT_URL

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
# The parsed --config file of the load_settings() call in progress (read by ConfigFileSource).
_config_values: ContextVar[dict[str, Any] | None] = ContextVar("config_values", default=None)


# The files a setting names, each read by its loader when the settings are built.
FILE_LOADERS: dict[str, Callable[[Path], object]] = {
    "smart_clients": load_clients,
    "cds_clients": load_cds_clients,
    "senders": SenderDirectory.load,
    "smart_signing_key": SigningKey.from_file,
}


class ConfigError(ValueError):
    """A setting that cannot be used; the message is one line for the operator."""


class ConfigFileSource(PydanticBaseSettingsSource):
    """The values of the `--config` file, read before the settings are built."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_config_values.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_config_values.get() or {})


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REMS_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=1, le=65535)
    mllp_port: int = Field(2575, ge=1, le=65535)  # the MLLP listener (HL7 v2)
    db: str = DEFAULT_URL
    rules: str = DEFAULT_PACK
    site_rules: FilePath | None = None
    timezone: str = "UTC"
    clock: Literal["system", "message"] = "system"
    # MSH-11 of the HL7 messages applied to patients' files (P; a training gateway T, a debug one
    # D); any other is answered AR 202, with or without --production
    processing_id: Literal["P", "T", "D"] = "P"
    production: bool = False
    admin_token: SecretStr | None = None
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None
    log_level: LogLevel = "INFO"
    schedule_every_minutes: int = Field(15, ge=1, le=24 * 60)
    # Sub-minute intervals (tests, demonstrations): when set, it wins over schedule_every_minutes.
    schedule_every_seconds: int | None = Field(None, ge=1, le=24 * 3600)
    # The scheduler lease (once per cluster): its holder renews it every third of this; when the
    # holder stops renewing (it died), another gateway takes the work over after this long.
    schedule_lease_seconds: int = Field(60, ge=3, le=24 * 3600)
    senders: FilePath | None = None  # the HL7 senders file (mappings/hl7v2/senders.py)
    mllp_client_ca: FilePath | None = None  # mutual TLS on MLLP: client certificates' CA
    # The MLLP listener's limits (docs/contracts.md §4): the largest frame (a larger one is AE
    # 207 FRAME_TOO_LARGE, the connection kept), connections at once (more are closed at once),
    # how long a connection may be silent (or leave a reply untaken) before it is closed, and
    # how long a TLS handshake may take (at most the idle timeout).
    mllp_max_frame_bytes: int = Field(1_048_576, ge=4096, le=256 * 1_048_576)
    mllp_max_connections: int = Field(256, ge=1, le=65_536)
    mllp_idle_timeout_seconds: float = Field(600.0, ge=1, le=86_400)
    mllp_tls_handshake_timeout_seconds: float = Field(30.0, ge=1, le=600)
    # FHIR security: SMART Backend Services (clients from smart_clients), or the development
    # mode that lets everyone in as a system client (loopback only, warned about at start-up).
    auth: Literal["smart", "development"] = "smart"
    smart_clients: FilePath | None = None
    # SMART token endpoint: assertions' aud is <public_base_url>/auth/token (else the URL the
    # request came in on); access tokens are signed with this key (else one made at start-up).
    public_base_url: str | None = None
    smart_signing_key: FilePath | None = None
    # CDS Hooks (docs/contracts.md §6): the EHRs whose JWTs may call the CDS services, their
    # keys, and the FHIR servers the gateway may fetch prefetch data from (gateway/cds/clients.py).
    cds_clients: FilePath | None = None
    # HTTP request limits (issue 11): a larger body is 413 before it is read whole; JSON nested
    # deeper than this (objects and arrays) is 400.
    http_max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    json_max_depth: int = Field(64, ge=8, le=512)
    # Results of no registry patient (or of two) are kept this long for review, then purged.
    review_retention_days: int = Field(30, ge=1, le=3650)
    # Notifications (docs/contracts.md §7): attempts before a notification is dead-lettered, the
    # backoff before the second attempt (doubled each time, up to the cap), each POST's timeout.
    notify_attempts: int = Field(8, ge=1, le=100)
    notify_backoff_seconds: float = Field(1.0, ge=0.01, le=3600)
    notify_backoff_max_seconds: float = Field(300.0, ge=0.01, le=86400)
    notify_timeout_seconds: float = Field(10.0, ge=0.1, le=300)
    # The operator console (docs/contracts.md §8): how long a sign-in lasts, and the audit
    # checkpoint file (`rems-gateway audit checkpoint --out`) its audit page verifies against.
    console_session_minutes: int = Field(480, ge=1, le=24 * 60)
    audit_checkpoint: FilePath | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, ConfigFileSource(settings_cls)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("db")
    @classmethod
    def _database_url(cls, value: str) -> str:
        try:
            make_url(value)
        except ArgumentError:
            # The value is not repeated: it may hold a password.
            raise ValueError(
                "not a database URL (e.g. sqlite:///rems-gateway.db or "
                "postgresql+psycopg://user@host/rems)"
            ) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not an IANA time zone name (e.g. America/Chicago)"
            ) from None
        return value

    @field_validator("admin_token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty (leave it unset to run without one)")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError(
                "must be an http(s) URL without a query, e.g. https://rems.example.org"
            )
        return value.rstrip("/")

    @field_validator("smart_clients", "cds_clients", "senders", "smart_signing_key")
    @classmethod
    def _readable_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """Each file is read now: a bad one stops start-up with its loader's one line (a
        ValueError naming the file and the place), not the first request that needs it."""
        if value is not None:
            FILE_LOADERS[info.field_name](value)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.clock == "message" and self.production:
            raise ValueError(
                "--clock message takes the clinical time from each event and is for replays "
                "and tests only; it is refused together with --production"
            )
        if self.http_port == self.mllp_port:
            raise ValueError(
                f"http_port and mllp_port are both {self.http_port}: give them different ports"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.auth == "development" and (self.production or not _loopback(self.host)):
            raise ValueError(
                "--auth development lets anyone in: it binds to loopback only (--host "
                "127.0.0.1 or ::1) and is refused together with --production"
            )
        self._check_rules()
        return self

    def _check_rules(self) -> None:
        try:
            packs = PackLibrary(site_override=self.site_rules)
        except RulePackError as exc:
            raise ValueError(f"site_rules: {exc}") from None
        if self.rules not in packs.ids:
            raise ValueError(
                f"rules: unknown rule pack {self.rules!r}; known: {', '.join(packs.ids)}"
            )

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def schedule_every(self) -> timedelta:
        if self.schedule_every_seconds is not None:
            return timedelta(seconds=self.schedule_every_seconds)
        return timedelta(minutes=self.schedule_every_minutes)

    @property
    def schedule_lease(self) -> timedelta:
        return timedelta(seconds=self.schedule_lease_seconds)

    @property
    def timezone_is_explicit(self) -> bool:
        return "timezone" in self.model_fields_set


def read_config_file(path: Path) -> dict[str, Any]:
    """A config file's mapping; unknown keys are an error, not ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    data = _parse(path, text)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings")
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        known = ", ".join(Settings.model_fields)
        names = ", ".join(repr(key) for key in unknown)
        raise ConfigError(f"config file {path}: unknown key {names}; known keys: {known}")
    return data


def _parse(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first_line = str(exc).splitlines()[0]
        kind = suffix[1:].upper()
        raise ConfigError(f"config file {path}: not valid {kind}: {first_line}") from None
    raise ConfigError(f"config file {path}: use a .yaml, .yml or .toml file")


def load_settings(flags: dict[str, Any], config_file: Path | None = None) -> Settings:
    """Settings from flags (None means not given), the environment and the config file."""
    given = {name: value for name, value in flags.items() if value is not None}
    token = _config_values.set(read_config_file(config_file) if config_file else {})
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None
    finally:
        _config_values.reset(token)


def describe(error: ValidationError) -> str:
    """Pydantic's errors as one line: `setting: problem; …`, without the offending values."""
    problems = []
    for item in error.errors(include_input=False):
        where = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown setting"
        problems.append(f"{where}: {message}" if where else message)
    return "invalid settings: " + "; ".join(problems)
