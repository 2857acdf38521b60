"""``rllfpr agent ...``: run the edge agent, list the scrambler backends of this machine."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import typer

from edge_agent.agent import Agent, AgentConfigError
from edge_agent.backends import available_backends, resolve
from edge_agent.sources import SourceError
from rllfpr.cli_support import ConfigOption, console, fail
from rllfpr.config import ConfigError, Settings, load_settings
from rllfpr.keys.material import KeyMaterialError
from rllfpr.wire.topics import TopicError

agent_app = typer.Typer(
    help="The edge agent: camera to scrambled faces over MQTT.", no_args_is_help=True
)

_SUMMARY = (
    ("frames", "frames read"),
    ("faces_detected", "faces detected"),
    ("faces_queued", "faces scrambled and queued"),
    ("faces_published", "faces acknowledged by the broker"),
)


def _settings(config: Path | None, overrides: dict[str, Any]) -> Settings:
    try:
        return load_settings(config, agent={k: v for k, v in overrides.items() if v is not None})
    except ConfigError as error:
        raise fail(str(error)) from error


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


@agent_app.command("run")
def run(
    source: str = typer.Option(
        ..., "--source", "-s", help="Image folder, video file, camera index or stream URL."
    ),
    site: str | None = typer.Option(None, help="Site of the camera (else agent.site)."),
    camera: str | None = typer.Option(None, help="Camera id (else agent.camera)."),
    agent_id: str | None = typer.Option(None, "--agent-id", help="Agent id (else agent.id)."),
    backend: str | None = typer.Option(None, help="auto, torch, onnxruntime or tensorrt."),
    fps: float | None = typer.Option(None, help="Replay rate of folders and files (0: max)."),
    sequence: bool | None = typer.Option(
        None, "--sequence/--independent", help="An image folder is one scene, or photos."
    ),
    drain_timeout: float = typer.Option(
        30.0, help="When a folder or file ends, wait this long for the spool to empty."
    ),
    config: Path | None = ConfigOption,
) -> None:
    """Run the agent: faces of SOURCE, scrambled with the active key, to the broker.

    Settings come from defaults < --config file < RLLFPR_* environment < these options.
    """
    overrides = {
        "site": site,
        "camera": camera,
        "id": agent_id,
        "backend": backend,
        "replay_fps": fps,
        "sequence": sequence,
    }
    settings = _settings(config, overrides)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        agent = Agent(settings, source)
    except (AgentConfigError, SourceError, KeyMaterialError, TopicError, RuntimeError) as error:
        raise fail(str(error)) from error
    _stop_on_signals(agent.stop_event)
    agent.start()
    failure: str | None = None
    try:
        agent.run()
        if not agent.stop_event.is_set() and not agent.drain(drain_timeout):
            console.print(f"[yellow]{agent.spool.depth} messages still spooled[/yellow]")
    except SourceError as error:
        failure = str(error)
    finally:
        agent.close()
    for name, label in _SUMMARY:
        console.print(f"{label:34} {agent.metrics.value(name):.0f}")
    if failure:
        raise fail(failure)


@agent_app.command("backends")
def backends() -> None:
    """List the scrambler backends usable here and the one `auto` picks."""
    import onnxruntime

    console.print(f"available: {', '.join(available_backends())}; auto picks {resolve('auto')}")
    console.print(f"ONNX Runtime providers: {', '.join(onnxruntime.get_available_providers())}")
