"""Pieces shared by every ``rllfpr`` sub-command module."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from rllfpr.config import ConfigError, Settings, load_settings

console = Console()

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config file (else $RLLFPR_CONFIG).")
ApiOption = typer.Option(
    None, "--api", help="Recognizer HTTP API (default: recognizer.http_host:http_port)."
)


def fail(message: str) -> typer.Exit:
    """Print an error and return the exit to raise (status 2)."""
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)


def settings_or_fail(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as error:
        raise fail(str(error)) from error
