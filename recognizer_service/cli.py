"""``rllfpr recognizer ...`` (service and models) and ``rllfpr gallery list`` / ``erase`` (through
the recognizer's HTTP API). The station's ``gallery enroll / keep / reenroll`` live in
``enrollment_station.cli``."""

from __future__ import annotations

import logging
import signal
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from rllfpr.cli_support import ApiOption, ConfigOption, console, fail, settings_or_fail

recognizer_app = typer.Typer(help="The recognizer service and its models.", no_args_is_help=True)
gallery_app = typer.Typer(
    help="Enroll, list and erase gallery subjects (through the recognizer's HTTP API or MQTT).",
    no_args_is_help=True,
)


@recognizer_app.command("run")
def run(
    config: Path | None = ConfigOption,
    client_id: str | None = typer.Option(
        None, help="Stable MQTT client id of this replica (default: mqtt.client_id or host)."
    ),
    http: bool = typer.Option(True, help="Serve the HTTP API (health, metrics, gallery)."),
    leave_on_exit: bool = typer.Option(
        False,
        help="On exit, leave the shared subscription for good (scale-down): drain the faces "
        "already assigned to this replica and end its session. Without it a stopped replica's "
        "share waits for its return.",
    ),
) -> None:
    """Consume scrambled faces, publish recognition events; serve the HTTP API."""
    import uvicorn

    from recognizer_service.api import create_app
    from recognizer_service.service import RecognizerService
    from rllfpr.mqtt import MqttError

    settings = settings_or_fail(config)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    service = RecognizerService(settings, client_id=client_id)
    try:
        service.start()
    except MqttError as error:
        raise fail(str(error)) from error
    try:
        if http:
            options = settings.recognizer
            server = uvicorn.Server(
                uvicorn.Config(
                    create_app(service),
                    host=options.http_host,
                    port=options.http_port,
                    log_level=settings.log_level.lower(),
                )
            )
            server.run()  # returns on SIGINT / SIGTERM
        else:
            stopped = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stopped.set())
            signal.signal(signal.SIGINT, lambda *_: stopped.set())
            stopped.wait()
    finally:
        service.stop(leave_group=leave_on_exit)


@recognizer_app.command("models")
def models(config: Path | None = ConfigOption) -> None:
    """List the models in the store: scope, epoch, recognizer id, operating point."""
    from rllfpr.models.store import ModelStore

    settings = settings_or_fail(config)
    store = ModelStore(settings.recognizer.model_store)
    table = Table("scope", "epoch", "recognizer id", "backbone", "input", "threshold", "margin")
    for scope in settings.recognizer.scopes:
        for epoch in store.epochs(scope):
            info = store.info(scope, epoch)
            table.add_row(
                scope,
                str(epoch),
                info.recognizer_id,
                info.recognizer.backbone,
                f"{info.recognizer.input_size} px",
                f"{info.calibration.threshold:.4f}",
                f"{info.calibration.min_margin:.3f}",
            )
    console.print(table)


@recognizer_app.command("publish")
def publish(
    checkpoint: Path = typer.Argument(..., exists=True, dir_okay=False, help="checkpoint.pt"),
    epoch: int = typer.Option(..., min=0, help="Key epoch this recognizer was trained for."),
    scope: str = typer.Option("fleet", help="Key scope."),
    calibration: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="OpenSetCalibration JSON (from `calibrate`)."
    ),
    threshold: float | None = typer.Option(None, help="Threshold, without a calibration file."),
    min_margin: float = typer.Option(0.0, help="Margin, without a calibration file."),
    config: Path | None = ConfigOption,
) -> None:
    """Publish a trained recognizer into the model store for a key epoch (trainer side)."""
    from pydantic import ValidationError

    from rllfpr.models.store import (
        ModelStore,
        ModelStoreError,
        OpenSetCalibration,
        publish_checkpoint,
    )

    settings = settings_or_fail(config)
    try:
        if calibration is not None:
            point = OpenSetCalibration.model_validate_json(calibration.read_text())
        elif threshold is not None:
            point = OpenSetCalibration(threshold=threshold, min_margin=min_margin)
        else:
            raise fail("give --calibration FILE or --threshold (an uncalibrated guess)")
        store = ModelStore(settings.recognizer.model_store)
        info = publish_checkpoint(store, scope, epoch, checkpoint, point)
    except (ValidationError, ModelStoreError) as error:
        raise fail(str(error)) from error
    console.print(
        f"published scope {scope} epoch {epoch}: recognizer {info.recognizer_id} "
        f"(seal this id into the epoch's key bundle)"
    )


@gallery_app.command("list")
def list_subjects(
    scope: str | None = typer.Option(None, help="Only this key scope."),
    epoch: int | None = typer.Option(None, help="Only this epoch (lists its subjects)."),
    api: str | None = ApiOption,
    config: Path | None = ConfigOption,
) -> None:
    """List galleries, or the subjects of one epoch's gallery."""
    from rllfpr.api_client import ApiError, api_base, api_request, api_token

    settings = settings_or_fail(config)
    base = api_base(settings, api)
    try:
        galleries: Any = api_request(f"{base}/v1/galleries", api_token(settings))
        table = Table("scope", "epoch", "subject", "templates")
        for gallery in galleries:
            if (scope and gallery["scope"] != scope) or (
                epoch is not None and gallery["epoch"] != epoch
            ):
                continue
            path = f"/v1/galleries/{gallery['scope']}/{gallery['epoch']}/subjects"
            subjects: Any = api_request(f"{base}{path}", api_token(settings))
            for name, count in subjects.items():
                table.add_row(gallery["scope"], str(gallery["epoch"]), name, str(count))
    except ApiError as error:
        raise fail(str(error)) from error
    console.print(table)


@gallery_app.command("erase")
def erase(
    subject: str = typer.Argument(..., help="Subject whose templates are deleted."),
    scope: str | None = typer.Option(None, help="Only this key scope (default: all)."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    api: str | None = ApiOption,
    config: Path | None = ConfigOption,
) -> None:
    """Erase a subject: every template, in every epoch and shard."""
    from rllfpr.api_client import ApiError, api_base, api_request, api_token

    settings = settings_or_fail(config)
    if not yes:
        typer.confirm(f"erase every template of {subject}?", abort=True)
    url = f"{api_base(settings, api)}/v1/subjects/{urllib.parse.quote(subject)}"
    if scope:
        url += f"?scope={urllib.parse.quote(scope)}"
    try:
        result: Any = api_request(url, api_token(settings), "DELETE")
    except ApiError as error:
        raise fail(str(error)) from error
    console.print(f"erased {result['templates_erased']} templates of {subject}")
