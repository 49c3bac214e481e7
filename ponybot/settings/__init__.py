"""Settings: read once at the entry point from TOML and the environment, then passed down.

Precedence, highest first: ``PONYBOT_SECTION__KEY`` environment variables (and
``DISCORD_TOKEN``), the TOML file (``--config``, ``PONYBOT_CONFIG`` or
``./config.toml``), the defaults in the section modules. Every field is documented in
``config.example.toml``; a test keeps the two in step.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_origin

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

from ponybot.errors import ConfigError
from ponybot.keys import DEFAULT_MODEL_NAME, MODEL_NAME_PATTERN
from ponybot.schemas import parse_size, shorten
from ponybot.settings.content import (
    ALWAYS_FORBIDDEN_TERMS,
    DEFAULT_EXPLICIT_TAGS,
    DEFAULT_TAGGER,
    NSFW_FORBIDDEN_TERMS,
    SFW_FORBIDDEN_TERMS,
    SFW_NEGATIVE,
    GallerySettings,
    PolicySettings,
    SafetySettings,
)
from ponybot.settings.models import (
    DEFAULT_MODEL,
    ModelEntry,
    ModelSettings,
    builtin_defaults,
    default_models,
)
from ponybot.settings.sections import (
    CliSettings,
    DefaultSettings,
    DiscordSettings,
    LimitSettings,
    LogSettings,
    MetricsSettings,
    RedisSettings,
    UploadSettings,
    WorkerSettings,
    check_redis_url,
    sentinel_address,
)

__all__ = [
    "ALWAYS_FORBIDDEN_TERMS", "DEFAULT_EXPLICIT_TAGS", "DEFAULT_MODEL", "DEFAULT_TAGGER", "NSFW_FORBIDDEN_TERMS",
    "SFW_FORBIDDEN_TERMS", "SFW_NEGATIVE", "CliSettings", "DefaultSettings", "DiscordSettings", "GallerySettings",
    "LimitSettings", "LogSettings", "MetricsSettings", "ModelEntry", "ModelSettings", "PolicySettings",
    "RedisSettings", "SafetySettings", "Settings", "UploadSettings", "WorkerSettings", "check_redis_url",
    "config_path", "describe_validation_error", "load_settings", "read_config_file", "sentinel_address",
    "setting_names", "unknown_environment",
]


#: Keys of the single-model ``[model]`` section of earlier versions, read as the default model's.
LEGACY_MODEL_KEYS = ("source", "config_dir", "name")


class ListFriendlyEnvSource(EnvSettingsSource):
    """The environment, where a list setting may be JSON (``["a","b"]``) or comma-separated (``a,b``)."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            if field is not None and get_origin(field.annotation) is list and isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            raise


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PONYBOT_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    redis: RedisSettings = Field(default_factory=RedisSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    models: dict[str, ModelEntry] = Field(default_factory=default_models)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    defaults: DefaultSettings = Field(default_factory=DefaultSettings)
    uploads: UploadSettings = Field(default_factory=UploadSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    cli: CliSettings = Field(default_factory=CliSettings)
    gallery: GallerySettings = Field(default_factory=GallerySettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init data; the environment overrides it.
        return (ListFriendlyEnvSource(settings_cls), init_settings)

    @model_validator(mode="before")
    @classmethod
    def _single_model_style(cls, data: Any) -> Any:
        """``[model] source = ...`` (earlier versions) becomes the default model's entry."""
        if not isinstance(data, dict):
            return data
        model = data.get("model") or {}
        if isinstance(model, BaseModel):
            model = model.model_dump(exclude_none=True)
        legacy = {key: model[key] for key in LEGACY_MODEL_KEYS if model.get(key) is not None}
        if not legacy:
            return builtin_defaults(data)
        if data.get("models"):
            raise ValueError(
                f"model.{', model.'.join(legacy)} (the single-model style) and [models.NAME] tables are both set: "
                "move them into the [models.NAME] table of the model they describe"
            )
        name = model.get("default") or DEFAULT_MODEL_NAME
        entry = default_models()[DEFAULT_MODEL_NAME].model_dump(exclude_none=True) | legacy
        rest = {key: value for key, value in model.items() if key not in LEGACY_MODEL_KEYS}
        return {**data, "model": rest, "models": {name: entry}}

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, ModelEntry]) -> dict[str, ModelEntry]:
        if not value:
            raise ValueError("at least one model must be configured")
        for name in value:
            if not re.fullmatch(MODEL_NAME_PATTERN, name):
                raise ValueError(f"model name {name!r}: lower-case letters, digits, '.', '_' and '-', at most 40")
        return value

    @property
    def default_model(self) -> str:
        """``model.default``, else ``pony-v4`` when configured, else the first model of the table."""
        if self.model.default:
            return self.model.default
        return DEFAULT_MODEL_NAME if DEFAULT_MODEL_NAME in self.models else next(iter(self.models))

    def model_entry(self, name: str | None) -> ModelEntry:
        """The named model's settings (None: the default); ConfigError for a name not configured."""
        entry = self.models.get(name or self.default_model)
        if entry is None:
            raise ConfigError(f"model {name!r} is not configured (configured: {', '.join(self.models)})")
        return entry

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> Settings:
        if self.model.default and self.model.default not in self.models:
            raise ValueError(f"model.default ({self.model.default}) is not one of [models]: {', '.join(self.models)}")
        width, height = parse_size(self.defaults.size)
        if self.defaults.steps > self.limits.max_steps:
            raise ValueError(f"defaults.steps ({self.defaults.steps}) is above limits.max_steps")
        if self.defaults.count > self.limits.max_count:
            raise ValueError(f"defaults.count ({self.defaults.count}) is above limits.max_count")
        if width * height > self.limits.max_pixels:
            raise ValueError(f"defaults.size ({self.defaults.size}) is above limits.max_pixels")
        return self

    def require_discord_token(self) -> str:
        """The bot's token, or a ConfigError saying where to put it."""
        if self.discord.token is None or not self.discord.token.get_secret_value():
            raise ConfigError(
                "discord.token is not set: put it in config.toml under [discord] token, "
                "or set DISCORD_TOKEN (or PONYBOT_DISCORD__TOKEN) in the environment"
            )
        return self.discord.token.get_secret_value()


def config_path(explicit: str | Path | None = None) -> Path | None:
    """The TOML file to read: ``--config``, else ``PONYBOT_CONFIG``, else ``./config.toml``."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("PONYBOT_CONFIG"):
        return Path(env)
    default = Path("config.toml")
    return default if default.is_file() else None


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once; a bad value raises one ConfigError naming every bad key."""
    data: dict[str, Any] = {}
    file = config_path(path)
    if file is not None:
        data = read_config_file(file)
    token = os.environ.get("DISCORD_TOKEN")
    if token and not os.environ.get("PONYBOT_DISCORD__TOKEN") and isinstance(data.get("discord", {}), dict):
        data.setdefault("discord", {})["token"] = token
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    try:
        return Settings(**data)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, source=file)) from None
    except SettingsError as error:
        cause = f" ({error.__cause__})" if error.__cause__ else ""
        raise ConfigError(f"an environment variable is not valid JSON: {error}{cause}") from None


def read_config_file(file: Path) -> dict[str, Any]:
    """The TOML file as a dict, or a ConfigError that says what is wrong with the file."""
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {file} is a folder, not a TOML file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {file} is not UTF-8 text (byte {error.start + 1} is not): "
                          "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {file} is not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"config file {file} cannot be read: {error.strerror or error}") from None


#: Settings whose values are never echoed in messages (a URL can hold a password).
UNECHOED = {"redis.url", "discord.token"}


def setting_names() -> list[str]:
    """Every setting as ``section.key``."""
    return [f"{section}.{key}" for section, field in Settings.model_fields.items()
            for key in getattr(field.annotation, "model_fields", {})]


def describe_validation_error(error: ValidationError, source: Path | None = None) -> str:
    """One line per bad key: the key, what is wrong, what was given (shortened) and where."""
    where = f" (in {source})" if source else ""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, setting_names(), n=1)
            message = f"unknown setting (did you mean {close[0]}?)" if close else (
                "unknown setting (see config.example.toml for the valid ones)")
        if not key:  # a rule across settings: its message names them
            lines.append(message)
            continue
        given = "" if key in UNECHOED else f" (got {shorten(item.get('input'))})"
        lines.append(f"{key}: {message}{given}")
    return f"invalid setting{where}: " + "\n  ".join(lines)


#: ``PONYBOT_*`` variables that are not settings but are read elsewhere.
OTHER_VARIABLES = ("PONYBOT_CONFIG", "PONYBOT_TEST_REDIS_URL")


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``PONYBOT_*`` variable that no setting reads, naming the closest one.

    A variable under a known section (``PONYBOT_LIMITS__MAX_STEPZ``) is an error instead (an unknown key).
    """
    sections = {f"PONYBOT_{name.upper()}" for name in Settings.model_fields}
    known = {f"PONYBOT_{name.upper().replace('.', '__')}" for name in setting_names()} | sections
    warnings = []
    for variable in sorted(environ):
        name = variable.upper()
        if not name.startswith("PONYBOT_") or name in known or name in OTHER_VARIABLES:
            continue
        if name.split("__", 1)[0] in sections and "__" in name:
            continue  # the settings report it as an unknown key of that section
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see config.example.toml for the settings"
        warnings.append(f"{variable} is not a ponybot setting and is ignored ({hint})")
    return warnings
