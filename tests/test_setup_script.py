"""scripts/setup leaves no system broker behind: the mosquitto.service that Debian's package
enables is disabled again when setup installed the package (tried with a stand-in systemctl)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup"


def _function(name: str) -> str:
    match = re.search(rf"^{name}\(\) {{\n.*?^}}\n", SETUP.read_text(), re.MULTILINE | re.DOTALL)
    assert match, f"{name} not found in {SETUP}"
    return match.group(0)


def _run(tmp_path: Path, enabled: bool, disable_works: bool) -> tuple[str, list[str]]:
    """Run disable_system_broker with a systemctl that records its calls."""
    calls, state = tmp_path / "calls", tmp_path / "enabled"
    if enabled:
        state.touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {calls}\n'
        'case "$1" in\n'
        f"  is-enabled) [ -e {state} ] ;;\n"
        f"  disable) {'rm -f ' + str(state) if disable_works else 'exit 1'} ;;\n"
        "esac\n"
    )
    systemctl.chmod(0o755)
    script = (
        'log() { echo "[setup] $*" >&2; }\n'
        'as_root() { "$@"; }\n' + _function("disable_system_broker") + "disable_system_broker\n"
    )
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        check=True,
    )
    return done.stderr, calls.read_text().splitlines() if calls.exists() else []


def test_an_enabled_system_broker_is_disabled_and_said_so(tmp_path: Path) -> None:
    log, calls = _run(tmp_path, enabled=True, disable_works=True)
    assert "disable --now mosquitto.service" in calls
    assert "disabled the system's mosquitto.service" in log
    assert not (tmp_path / "enabled").exists()


def test_a_broker_that_is_not_enabled_is_left_alone(tmp_path: Path) -> None:
    log, calls = _run(tmp_path, enabled=False, disable_works=True)
    assert [call for call in calls if call.startswith("disable")] == []
    assert log == ""


def test_when_it_cannot_be_disabled_setup_says_so(tmp_path: Path) -> None:
    log, _ = _run(tmp_path, enabled=True, disable_works=False)
    assert "stays enabled" in log


def test_setup_disables_it_only_right_after_installing_the_package() -> None:
    text = SETUP.read_text()
    assert "  apt_install mosquitto\n  disable_system_broker\n" in text
    assert text.count("disable_system_broker") == 2  # defined once, called once
