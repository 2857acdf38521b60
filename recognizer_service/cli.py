"""``rllfpr recognizer ...`` (service and models) and ``rllfpr gallery ...`` (enrollment)."""

from __future__ import annotations

import json
import logging
import signal
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from rllfpr.cli_support import ConfigOption, console, fail, settings_or_fail
from rllfpr.config import Settings

recognizer_app = typer.Typer(help="The recognizer service and its models.", no_args_is_help=True)
gallery_app = typer.Typer(
    help="Enroll, list and erase gallery subjects (through the recognizer's HTTP API or MQTT).",
    no_args_is_help=True,
)

ApiOption = typer.Option(
    None, "--api", help="Recognizer HTTP API (default: recognizer.http_host:http_port)."
)


def _api_base(settings: Settings, api: str | None) -> str:
    options = settings.recognizer
    return (api or f"http://{options.http_host}:{options.http_port}").rstrip("/")


def _token(settings: Settings) -> str | None:
    token = settings.recognizer.api_token
    return token.get_secret_value() if token else None


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


@recognizer_app.command("calibrate")
def calibrate(
    experiment: Path = typer.Argument(..., exists=True, dir_okay=False, help="Experiment YAML."),
    runs: Path = typer.Option(Path("runs"), help="Where the experiment's runs are (or go)."),
    output: Path = typer.Option(
        Path("docs/results/openset-lfw.json"), help="Results JSON (a .md is written beside)."
    ),
    target_fpir: float = typer.Option(0.1, min=0.0, max=1.0, help="FPIR to calibrate for."),
    seed: int = typer.Option(0, help="Seed of the split of people."),
    publish_epoch: int | None = typer.Option(
        None, help="Also publish the scrambled recognizer with its calibration as this epoch."
    ),
    scope: str = typer.Option("fleet", help="Key scope when publishing."),
    config: Path | None = ConfigOption,
) -> None:
    """Open-set identification on LFW people never seen in training: calibrate the threshold on
    some people, report FNIR/FPIR on others (original and scrambled faces)."""
    from recognizer_service.calibration_study import markdown, run_study

    settings = settings_or_fail(config)
    command = f"rllfpr recognizer calibrate {experiment} --target-fpir {target_fpir} --seed {seed}"
    result = run_study(experiment, settings, runs, target_fpir, seed, command, publish_epoch, scope)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(result))
    console.print_json(json.dumps(result["test"]))
    console.print(f"written: {output} and {output.with_suffix('.md')}")


@gallery_app.command("enroll")
def enroll(
    folder: Path = typer.Argument(..., help="Folder of photos of one person."),
    subject: str = typer.Option(..., help="Subject id to enroll (a topic level)."),
    bundle: Path = typer.Option(
        ..., exists=True, dir_okay=False, help="Key bundle of the epoch to enroll under."
    ),
    site: str = typer.Option(..., help="Site of the enrollment station."),
    station: str = typer.Option("enrollment-station", help="Id of this station (agent id)."),
    via: str = typer.Option("mqtt", help="mqtt (enrollment topic, QoS 1) or http (the API)."),
    api: str | None = ApiOption,
    config: Path | None = ConfigOption,
) -> None:
    """Align and scramble photos locally; send only the scrambled faces for enrollment."""
    from recognizer_service.enrollment import enrollment_messages, photos_in, scramble_photos
    from rllfpr.faces.detect import FaceDetector
    from rllfpr.keys.bundle import BundleError
    from rllfpr.keys.material import KeyMaterialError
    from rllfpr.keys.scrambler_key import open_scrambler_bundle
    from rllfpr.wire.topics import TopicError, level

    if via not in ("mqtt", "http"):
        raise fail(f"unknown --via {via!r}: use mqtt or http")
    settings = settings_or_fail(config)
    try:
        level(subject), level(site), level(station)
        key = open_scrambler_bundle(bundle.read_bytes(), settings.keys)
        photos = photos_in(folder)
    except (TopicError, BundleError, KeyMaterialError, FileNotFoundError) as error:
        raise fail(str(error)) from error
    faces, failures = scramble_photos(photos, key, FaceDetector(min_face_size=40))
    for failure in failures:
        console.print(f"[yellow]skipped[/yellow] {failure}")
    if not faces:
        raise fail(f"no usable face in {len(photos)} photos of {folder}")
    messages = enrollment_messages(faces, key, subject, site, station)
    if via == "mqtt":
        _send_mqtt(settings, messages, station)
    else:
        _send_http(settings, api, messages)
    console.print(
        f"sent {len(messages)} scrambled faces of {subject} for scope {key.header.scope} "
        f"epoch {key.header.epoch} ({len(failures)} photos skipped)"
    )


def _send_mqtt(settings: Settings, messages: list[tuple[str, bytes]], station: str) -> None:
    from rllfpr import mqtt

    client = mqtt.make_client(settings.mqtt, "enroll", client_id=f"rllfpr-enroll-{station}")
    try:
        mqtt.connect(client, settings.mqtt, clean_start=True)
    except mqtt.MqttError as error:
        raise fail(str(error)) from error
    try:
        for topic, payload in messages:
            info = client.publish(topic, payload, qos=1)
            info.wait_for_publish(settings.recognizer.publish_timeout_s)
            if not info.is_published():
                raise fail(f"the broker did not confirm an enrollment on {topic}")
    finally:
        client.disconnect()
        client.loop_stop()


def _send_http(settings: Settings, api: str | None, messages: list[tuple[str, bytes]]) -> None:
    from recognizer_service.api_client import ApiError, api_request

    url = f"{_api_base(settings, api)}/v1/enrollments"
    try:
        for _topic, payload in messages:
            api_request(url, _token(settings), "POST", payload)
    except ApiError as error:
        raise fail(str(error)) from error


@gallery_app.command("list")
def list_subjects(
    scope: str | None = typer.Option(None, help="Only this key scope."),
    epoch: int | None = typer.Option(None, help="Only this epoch (lists its subjects)."),
    api: str | None = ApiOption,
    config: Path | None = ConfigOption,
) -> None:
    """List galleries, or the subjects of one epoch's gallery."""
    from recognizer_service.api_client import ApiError, api_request

    settings = settings_or_fail(config)
    base = _api_base(settings, api)
    try:
        galleries: Any = api_request(f"{base}/v1/galleries", _token(settings))
        table = Table("scope", "epoch", "subject", "templates")
        for gallery in galleries:
            if (scope and gallery["scope"] != scope) or (
                epoch is not None and gallery["epoch"] != epoch
            ):
                continue
            path = f"/v1/galleries/{gallery['scope']}/{gallery['epoch']}/subjects"
            subjects: Any = api_request(f"{base}{path}", _token(settings))
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
    from recognizer_service.api_client import ApiError, api_request

    settings = settings_or_fail(config)
    if not yes:
        typer.confirm(f"erase every template of {subject}?", abort=True)
    url = f"{_api_base(settings, api)}/v1/subjects/{urllib.parse.quote(subject)}"
    if scope:
        url += f"?scope={urllib.parse.quote(scope)}"
    try:
        result: Any = api_request(url, _token(settings), "DELETE")
    except ApiError as error:
        raise fail(str(error)) from error
    console.print(f"erased {result['templates_erased']} templates of {subject}")


VaultOption = typer.Option(..., help="The station's vault folder (encrypted face regions).")
VaultKeyOption = typer.Option(
    ..., help="The station's 32-byte vault key (created 0600 when missing with --create-key)."
)


@gallery_app.command("keep")
def keep(
    folder: Path = typer.Argument(..., help="Folder of photos of one person."),
    subject: str = typer.Option(..., help="Subject id (a topic level)."),
    vault: Path = VaultOption,
    vault_key: Path = VaultKeyOption,
    create_key: bool = typer.Option(False, help="Create the vault key if it does not exist."),
) -> None:
    """Keep a person's enrollment faces in the station's encrypted vault, so that every future
    key epoch can be enrolled (`gallery reenroll`) without the photos leaving the station."""
    from recognizer_service.enrollment import photos_in
    from recognizer_service.vault import PhotoVault, create_vault_key, face_region, load_vault_key
    from rllfpr.faces.detect import FaceDetector, central_face
    from rllfpr.keys.material import KeyMaterialError
    from rllfpr.wire.topics import TopicError, level
    from trainer.data import load_rgb

    try:
        level(subject)
        if create_key and not vault_key.exists():
            create_vault_key(vault_key)
        store = PhotoVault(vault, load_vault_key(vault_key))
        photos = photos_in(folder)
    except (TopicError, KeyMaterialError, FileNotFoundError) as error:
        raise fail(str(error)) from error
    detector, faces = FaceDetector(min_face_size=40), []
    for photo in photos:
        try:
            image = load_rgb(photo)
        except (OSError, ValueError) as error:
            console.print(f"[yellow]skipped[/yellow] {photo.name}: unreadable ({error})")
            continue
        found = central_face(detector.detect([image])[0], image.shape)
        if found is None:
            console.print(f"[yellow]skipped[/yellow] {photo.name}: no face found")
            continue
        faces.append(face_region(image, found, photo.name))
    if not faces:
        raise fail(f"no usable face in {len(photos)} photos of {folder}")
    total = store.add(subject, faces)
    console.print(f"kept {len(faces)} faces of {subject} ({total} in the vault, encrypted)")


@gallery_app.command("reenroll")
def reenroll(
    bundle: Path = typer.Option(
        ..., exists=True, dir_okay=False, help="Key bundle of the (staged) epoch to enroll under."
    ),
    vault: Path = VaultOption,
    vault_key: Path = VaultKeyOption,
    site: str = typer.Option(..., help="Site of the enrollment station."),
    station: str = typer.Option("enrollment-station", help="Id of this station (agent id)."),
    config: Path | None = ConfigOption,
) -> None:
    """Scramble everyone in the vault with a new epoch's key and send it for enrollment: run
    it when an epoch is staged, so its gallery is full before the epoch is activated."""
    from recognizer_service.enrollment import enrollment_messages
    from recognizer_service.vault import PhotoVault, VaultError, load_vault_key, scramble
    from rllfpr.keys.bundle import BundleError
    from rllfpr.keys.material import KeyMaterialError
    from rllfpr.keys.scrambler_key import open_scrambler_bundle

    settings = settings_or_fail(config)
    try:
        key = open_scrambler_bundle(bundle.read_bytes(), settings.keys)
        store = PhotoVault(vault, load_vault_key(vault_key))
        messages = [
            message
            for subject in store.subjects()
            for message in enrollment_messages(
                scramble(store.faces(subject), key), key, subject, site, station
            )
        ]
    except (BundleError, KeyMaterialError, VaultError) as error:
        raise fail(str(error)) from error
    if not messages:
        raise fail(f"the vault {vault} holds nobody")
    _send_mqtt(settings, messages, station)
    console.print(
        f"sent {len(messages)} scrambled faces of {len(store.subjects())} subjects for scope "
        f"{key.header.scope} epoch {key.header.epoch}"
    )
