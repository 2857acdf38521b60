"""``rllfpr agent ...``: run the edge agent, list the scrambler backends of this machine."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer

from rllfpr.cli_support import ConfigOption, console, fail
from rllfpr.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:  # torch and OpenCV load only when a command runs, so --help answers at once
    from edge_agent.agent import Agent

agent_app = typer.Typer(
    help="The edge agent: camera to scrambled faces over MQTT.", no_args_is_help=True
)

_SUMMARY: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("frames", "frames read", {}),
    ("faces_detected", "faces detected", {}),
    ("faces_queued", "faces scrambled and queued", {}),
    ("faces_dropped", "faces dropped without a key", {"reason": "no_key"}),
    ("faces_published", "faces acknowledged by the broker", {}),
)


def _settings(config: Path | None, overrides: dict[str, Any]) -> Settings:
    try:
        return load_settings(config, agent={k: v for k, v in overrides.items() if v is not None})
    except ConfigError as error:
        raise fail(str(error)) from error


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM stop the agent cleanly (offline status, spool kept)."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
    key_timeout: float = typer.Option(
        30.0, help="Wait this long for an active key before reading frames (0: don't)."
    ),
    drain_timeout: float = typer.Option(
        30.0, help="When a folder or file ends, wait this long for the spool to empty."
    ),
    config: Path | None = ConfigOption,
) -> None:
    """Run the agent: faces of SOURCE, scrambled with the active key, to the broker.

    Settings come from defaults < --config file < RLLFPR_* environment < these options.
    """
    from edge_agent.agent import Agent, AgentConfigError
    from edge_agent.sources import SourceError
    from rllfpr.keys.material import KeyMaterialError
    from rllfpr.wire.topics import TopicError

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
    failure: str | None = None
    with _stop_on_signals(agent.stop_event):
        agent.start()
        try:
            _run_agent(agent, key_timeout, drain_timeout)
        except SourceError as error:
            failure = str(error)
        finally:
            agent.close()
    for name, label, labels in _SUMMARY:
        console.print(f"{label:34} {agent.metrics.value(name, **labels):.0f}")
    if failure:
        raise fail(failure)


def _run_agent(agent: Agent, key_timeout: float, drain_timeout: float) -> None:
    if key_timeout and not agent.wait_for_key(key_timeout):
        console.print("[yellow]no active key yet: faces are dropped until one comes[/yellow]")
    agent.run()
    if not agent.stop_event.is_set() and not agent.drain(drain_timeout):
        console.print(f"[yellow]{agent.spool.depth} messages stay spooled for later[/yellow]")


@agent_app.command("backends")
def backends() -> None:
    """List the scrambler and detector backends usable here and the ones `auto` picks."""
    import onnxruntime

    from edge_agent.backends import available_backends, resolve
    from rllfpr.faces.detect import resolve_backend
    from rllfpr.faces.pixels import pick_device

    console.print(f"available: {', '.join(available_backends())}; auto picks {resolve('auto')}")
    detector = resolve_backend("auto", str(pick_device("auto")))
    console.print(f"face detector: auto picks {detector}")
    console.print(f"ONNX Runtime providers: {', '.join(onnxruntime.get_available_providers())}")
