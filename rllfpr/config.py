"""Typed configuration shared by every RLLFPR program.

Precedence, lowest to highest: field defaults < YAML config file < environment variables.
The config file is given explicitly (``load_settings(path)`` / ``--config``) or through
``RLLFPR_CONFIG``. Environment variables use the ``RLLFPR_`` prefix and ``__`` between nested
sections, e.g. ``RLLFPR_MQTT__HOST=broker.local``. Unknown keys anywhere are an error, so a typo
fails at start-up instead of silently falling back to a default.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

CONFIG_FILE_ENV = "RLLFPR_CONFIG"
_config_file: ContextVar[Path | None] = ContextVar("rllfpr_config_file", default=None)


class ConfigError(ValueError):
    """The configuration file or environment is invalid."""


class Section(BaseModel):
    """Base of every nested section: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class MqttSettings(Section):
    """Connection to the MQTT v5 broker (Mosquitto 2.x)."""

    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port (8883 is usual for TLS).")
    username: str | None = Field(None, description="Username, when the broker requires one.")
    password: SecretStr | None = Field(None, description="Password for `username`.")
    client_id: str | None = Field(
        None,
        description="Stable MQTT client id. Required for persistent sessions; each process of a "
        "fleet needs its own. Defaults to a name derived from the program and host.",
    )
    tls: bool = Field(False, description="Connect with TLS.")
    ca_file: Path | None = Field(None, description="CA certificate that signed the broker's one.")
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS identity).")
    key_file: Path | None = Field(None, description="Private key of `cert_file`.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive interval, seconds.")
    session_expiry_s: int = Field(
        3600,
        ge=0,
        description="How long the broker keeps this client's session (subscriptions and queued "
        "QoS 1 messages) while it is disconnected, seconds.",
    )
    message_expiry_s: int = Field(
        300,
        ge=1,
        description="MQTT v5 message expiry of published face messages: the broker drops faces "
        "older than this instead of delivering stale sightings.",
    )


class RedisSettings(Section):
    """Connection to the Redis >= 8 server holding the vector-set galleries."""

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL; `rediss://` for TLS. Credentials may be given here or below.",
    )
    username: str | None = Field(None, description="ACL username.")
    password: SecretStr | None = Field(None, description="ACL password.")
    key_prefix: str = Field("rllfpr", description="Prefix of every Redis key this project writes.")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis url must start with redis://, rediss:// or unix://")
        return url


class KeySettings(Section):
    """Where key material lives on this machine."""

    directory: Path = Field(
        Path("~/.local/share/rllfpr/keys"),
        description="Directory of key bundles and the local key state (created with mode 0700).",
    )
    trusted_signers: list[Path] = Field(
        default_factory=list,
        description="Ed25519 public keys (PEM) whose bundle signatures are accepted.",
    )
    fleet_key_file: Path | None = Field(
        None,
        description="32-byte AES-256-GCM key (raw or hex) that decrypts bundles for this scope.",
    )
    scope: str = Field(
        "fleet",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Key scope this process belongs to: `fleet` or a site name.",
    )
    max_clock_skew_s: int = Field(
        300, ge=0, description="Bundles created further in the future than this are rejected."
    )

    @field_validator("directory")
    @classmethod
    def _expand(cls, path: Path) -> Path:
        return path.expanduser()


class Settings(BaseSettings):
    """Root of the configuration tree, shared by the agent, the recognizer and the trainer."""

    model_config = SettingsConfigDict(
        env_prefix="RLLFPR_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data: Path = Field(
        Path("../shared/data"),
        description="Root of the face datasets (`lfw/`, `att_orl/`, `yalefaces/`).",
    )
    cache: Path = Field(
        Path("~/.cache/rllfpr"),
        description="Cache outside the repository: aligned datasets, builds, trained models.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Logging level of every program."
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="MQTT broker.")
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis store.")
    keys: KeySettings = Field(default_factory=KeySettings, description="Key material.")

    @field_validator("data", "cache")
    @classmethod
    def _expand(cls, path: Path) -> Path:
        return path.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings: defaults < ``config_file`` (or ``$RLLFPR_CONFIG``) < environment < overrides.

    Raises ``ConfigError`` naming the file and every invalid or unknown key.
    """
    path = config_file or os.environ.get(CONFIG_FILE_ENV) or None
    resolved = Path(path).expanduser() if path else None
    if resolved is not None and not resolved.is_file():
        raise ConfigError(f"config file not found: {resolved}")
    token = _config_file.set(resolved)
    try:
        return Settings(**overrides)
    except ValueError as error:
        where = f" (config file {resolved})" if resolved else ""
        raise ConfigError(f"invalid configuration{where}:\n{error}") from error
    finally:
        _config_file.reset(token)
