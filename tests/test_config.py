from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from rllfpr.config import NOT_SETTINGS, ConfigError, Settings, load_settings, unknown_environment


def test_defaults_load_without_file_or_environment() -> None:
    settings = load_settings()
    assert settings.mqtt.port == 1883
    assert settings.redis.url.startswith("redis://")
    assert settings.keys.scope == "fleet"


def test_file_overrides_defaults_and_environment_overrides_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "rllfpr.yaml"
    config.write_text("mqtt:\n  host: broker.example\n  port: 8883\nlog_level: DEBUG\n")
    from_file = load_settings(config)
    assert (from_file.mqtt.host, from_file.mqtt.port, from_file.log_level) == (
        "broker.example",
        8883,
        "DEBUG",
    )
    monkeypatch.setenv("RLLFPR_MQTT__PORT", "1884")
    monkeypatch.setenv("RLLFPR_CONFIG", str(config))
    merged = load_settings()
    assert (merged.mqtt.host, merged.mqtt.port) == ("broker.example", 1884)


@pytest.mark.parametrize(
    "text",
    [
        "mqtt:\n  hots: broker\n",  # typo in a nested key
        "mqqt:\n  host: broker\n",  # typo in a section
        "mqtt:\n  port: 70000\n",  # out of range
        "redis:\n  url: http://x\n",  # wrong scheme
        "keys:\n  scope: 'bad scope'\n",  # not a topic level
    ],
)
def test_invalid_or_unknown_keys_fail_fast(tmp_path: Path, text: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_settings(config)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"mqtt: [\n", "cannot read"),  # not YAML
        (b"- 1\n- 2\n", "mapping of sections"),  # YAML, not a mapping
        (b"42\n", "mapping of sections"),
        (b"?\n", "key must be a string"),  # {None: None}
        (b"mqtt:\n  1: x\n", "key must be a string"),
        (b"mqtt: \xff\xfe\n", "cannot read"),  # not UTF-8
        (b"\x00", "cannot read"),
        (b"!!python/object:os.system {}\n", "cannot read"),  # no arbitrary objects
    ],
)
def test_a_broken_config_file_is_a_config_error(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    """Found by fuzzing (tests/test_fuzz.py): these raised YAML, Type and Attribute errors."""
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    with pytest.raises(ConfigError, match=reason):
        load_settings(config)


def test_a_config_file_that_expands_without_bound_is_refused_at_once(tmp_path: Path) -> None:
    """YAML aliases nest a 500-byte file into 10^8 values ("billion laughs"); validating them
    took 51 s before the loader bounded the expansion."""
    lines = ["x0: &x0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 10)}]" for i in range(1, 8)]
    config = tmp_path / "bomb.yaml"
    config.write_text("\n".join([*lines, "mqtt: {host: *x7}"]))
    started = time.monotonic()
    with pytest.raises(ConfigError, match="expands to more than"):
        load_settings(config)
    assert time.monotonic() - started < 2.0


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.yaml")


def test_typo_in_nested_environment_variable_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLLFPR_MQTT__HOTS", "broker")
    with pytest.raises(ConfigError, match="hots"):
        load_settings()


@pytest.mark.parametrize("name", ["RLLFPR_HOTS", "RLLFPR_MQTT_HOST", "rllfpr_mqtt_port"])
def test_an_environment_variable_that_is_no_setting_fails(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "x")
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_settings_and_the_scripts_own_variables_are_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in NOT_SETTINGS - {"RLLFPR_CONFIG"}:
        monkeypatch.setenv(name, "anything")
    monkeypatch.setenv("RLLFPR_DATA", str(tmp_path))
    monkeypatch.setenv("RLLFPR_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("RLLFPR_MQTT__HOST", "broker.local")
    monkeypatch.setenv("RLLFPR_AGENT", '{"site": "hall"}')  # a whole section as JSON
    settings = load_settings()
    assert (settings.data, settings.log_level) == (tmp_path, "DEBUG")
    assert (settings.mqtt.host, settings.agent.site) == ("broker.local", "hall")


def test_the_scripts_variables_are_the_allowed_ones() -> None:
    """Every RLLFPR_ variable the scripts and deployment files read is a setting or allowed."""
    import re

    root = Path(__file__).resolve().parents[1]
    files = [*root.joinpath("scripts").iterdir(), *root.joinpath("deploy").rglob("*")]
    files += [root / "rllfpr" / "local_services.py", root / ".ci" / "run"]
    names = set()
    for path in files:
        if path.is_file() and path.suffix not in {".png", ".pem", ".key"}:
            names |= set(re.findall(r"RLLFPR_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="ignore")))
    assert names  # the scan found the scripts' variables
    assert unknown_environment(dict.fromkeys(names, "x")) == []


def test_rotation_config_has_no_default_that_does_not_exist() -> None:
    assert load_settings().trainer.rotation_config is None


def _undocumented(model: type[BaseModel], prefix: str = "") -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        if not field.description:
            missing.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            missing += _undocumented(annotation, f"{prefix}{name}.")
    return missing


def test_every_setting_is_documented() -> None:
    assert _undocumented(Settings) == []


def test_secrets_do_not_leak_into_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLLFPR_MQTT__PASSWORD", "hunter2")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "hunter2"
