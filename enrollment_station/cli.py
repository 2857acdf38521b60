"""The enrollment station's commands: ``rllfpr gallery enroll``, ``keep`` and ``reenroll``.

They hold raw photos and an SN key, which no recognizer may hold: only scrambled faces leave
this machine (over MQTT, or the recognizer's HTTP API with ``enroll --via http``).
``rllfpr.cli`` puts them on the ``gallery`` command beside ``list`` and ``erase``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from rllfpr.cli_support import ApiOption, ConfigOption, console, fail, settings_or_fail
from rllfpr.config import Settings


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
    from enrollment_station.enrollment import enrollment_messages, photos_in, scramble_photos
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
    from rllfpr.api_client import ApiError, api_base, api_request, api_token

    url = f"{api_base(settings, api)}/v1/enrollments"
    try:
        for _topic, payload in messages:
            api_request(url, api_token(settings), "POST", payload)
    except ApiError as error:
        raise fail(str(error)) from error


VaultOption = typer.Option(..., help="The station's vault folder (encrypted face regions).")
VaultKeyOption = typer.Option(
    ..., help="The station's 32-byte vault key (created 0600 when missing with --create-key)."
)


def keep(
    folder: Path = typer.Argument(..., help="Folder of photos of one person."),
    subject: str = typer.Option(..., help="Subject id (a topic level)."),
    vault: Path = VaultOption,
    vault_key: Path = VaultKeyOption,
    create_key: bool = typer.Option(False, help="Create the vault key if it does not exist."),
) -> None:
    """Keep a person's enrollment faces in the station's encrypted vault, so that every future
    key epoch can be enrolled (`gallery reenroll`) without the photos leaving the station."""
    from enrollment_station.enrollment import photos_in
    from enrollment_station.vault import PhotoVault, create_vault_key, face_region, load_vault_key
    from rllfpr.faces.detect import FaceDetector, central_face
    from rllfpr.faces.pixels import load_rgb
    from rllfpr.keys.material import KeyMaterialError
    from rllfpr.wire.topics import TopicError, level

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
    from enrollment_station.enrollment import enrollment_messages
    from enrollment_station.vault import PhotoVault, VaultError, load_vault_key, scramble
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
