"""The HTTP API and the ``rllfpr recognizer`` / ``rllfpr gallery`` commands."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import uvicorn
import yaml
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from recognizer_service.api import create_app
from recognizer_service.service import RecognizerService
from rllfpr.cli import app
from rllfpr.config import KeySettings, Settings
from rllfpr.keys import bundle, material
from rllfpr.local_services import Endpoint, free_port
from rllfpr.models.recognizer import Recognizer
from rllfpr.models.scrambler import ScramblerConfig, ScramblerNetwork
from rllfpr.models.store import ModelStore, OpenSetCalibration
from tests import test_recognizer_service as service_tests
from tests.support.recognizer import (
    EPOCH,
    SIDE,
    TINY,
    counter,
    face,
    image,
    make_settings,
    wait_until,
)

pytestmark = pytest.mark.integration
TOKEN = "correct horse battery staple"
runner = CliRunner()

model_store = service_tests.model_store
start_service = service_tests.start_service


@pytest.fixture
def settings(mqtt_broker: Endpoint, redis_endpoint: Endpoint, model_store: Path) -> Settings:
    base = make_settings(mqtt_broker, redis_endpoint, model_store)
    options = base.recognizer.model_copy(update={"api_token": SecretStr(TOKEN)})
    return base.model_copy(update={"recognizer": options})


@pytest.fixture
def idle_service(settings: Settings) -> RecognizerService:
    """A service with its models loaded but not consuming (no worker, no MQTT)."""
    service = RecognizerService(settings)
    service.models.refresh()
    return service


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_management_needs_the_bearer_token(idle_service: RecognizerService) -> None:
    api = TestClient(create_app(idle_service))
    assert api.get("/v1/galleries").status_code == 401
    assert api.get("/v1/galleries", headers=auth("wrong")).status_code == 401
    assert api.get("/v1/galleries", headers=auth()).status_code == 200
    options = idle_service.settings.recognizer.model_copy(update={"api_token": None})
    idle_service.settings = idle_service.settings.model_copy(update={"recognizer": options})
    disabled = TestClient(create_app(idle_service)).get("/v1/galleries", headers=auth())
    assert disabled.status_code == 503
    assert "api_token" in disabled.json()["detail"]


def test_enroll_list_erase_and_audit_through_the_api(idle_service: RecognizerService) -> None:
    api = TestClient(create_app(idle_service))
    _topic, payload, message_id = face(image(500), subject="carol")
    created = api.post("/v1/enrollments", content=payload, headers=auth())
    assert created.status_code == 201, created.text
    assert created.json() == {"template_id": message_id, "subject": "carol", "evicted": 0}
    assert api.get("/v1/galleries", headers=auth()).json() == [
        {"scope": "fleet", "epoch": EPOCH, "templates": 1, "subjects": 1}
    ]
    listed = api.get(f"/v1/galleries/fleet/{EPOCH}/subjects", headers=auth())
    assert listed.json() == {"carol": 1}
    erased = api.delete("/v1/subjects/carol", headers=auth())
    assert erased.json() == {"subject": "carol", "templates_erased": 1}
    assert api.get(f"/v1/galleries/fleet/{EPOCH}/subjects", headers=auth()).json() == {}
    actions = [entry["action"] for entry in api.get("/v1/audit", headers=auth()).json()]
    assert actions == ["erase", "enroll"]
    models = api.get("/v1/models", headers=auth()).json()
    assert [(m["scope"], m["epoch"], m["calibration"]["threshold"]) for m in models] == [
        ("fleet", EPOCH, 0.95)
    ]


def test_bad_enrollments_are_refused_with_the_reason(idle_service: RecognizerService) -> None:
    api = TestClient(create_app(idle_service))
    cases = {
        b"not a face": "malformed",
        face(image(501))[1]: "topic_mismatch",  # a recognition face, not an enrollment
        face(image(501), subject="dave", epoch=42)[1]: "unknown_epoch",
    }
    for payload, reason in cases.items():
        response = api.post("/v1/enrollments", content=payload, headers=auth())
        assert response.status_code == 400
        assert response.json()["detail"].startswith(reason)
    assert api.delete("/v1/subjects/bad%20name", headers=auth()).status_code == 422


def test_health_readiness_and_metrics(
    settings: Settings,
    idle_service: RecognizerService,
    start_service: Callable[..., RecognizerService],
) -> None:
    idle = TestClient(create_app(idle_service))
    assert idle.get("/healthz").status_code == 503
    not_ready = idle.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json() == {"mqtt": False, "redis": True, "models": 1, "worker": False}
    running = TestClient(create_app(start_service(settings)))
    assert running.get("/healthz").status_code == 200
    assert running.get("/readyz").json() == {
        "mqtt": True,
        "redis": True,
        "models": 1,
        "worker": True,
    }
    metrics = running.get("/metrics").text
    assert "rllfpr_faces_received_total" in metrics
    assert "rllfpr_mqtt_connected 1.0" in metrics


# Commands ------------------------------------------------------------------------------------


@pytest.fixture
def http_server(
    settings: Settings, start_service: Callable[..., RecognizerService]
) -> Iterator[Any]:
    """A running service with its HTTP API served by uvicorn on a free port."""
    port = free_port()
    options = settings.recognizer.model_copy(update={"http_port": port})
    settings = settings.model_copy(update={"recognizer": options})
    service = start_service(settings)
    server = uvicorn.Server(uvicorn.Config(create_app(service), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    yield service, settings
    server.should_exit = True
    thread.join(10)


def write_config(settings: Settings, path: Path) -> Path:
    document = settings.model_dump(mode="json")
    document["recognizer"]["api_token"] = TOKEN  # model_dump masks secrets
    path.write_text(yaml.safe_dump(document))
    return path


def tiny_key_bundle(tmp_path: Path, epoch: int) -> tuple[Path, KeySettings]:
    """Trainer's keys, and a bundle of a tiny SN (32 px) for ``epoch``."""
    runner.invoke(app, ["keys", "init", str(tmp_path / "keys")])
    signing = material.load_signing_key(tmp_path / "keys" / "signing.pem")
    fleet = material.load_fleet_key(tmp_path / "keys" / "fleet.key")
    network = ScramblerNetwork(ScramblerConfig(levels=2, widths=(8, 16), input_size=SIDE), seed=3)
    network.self_learn([torch.rand(8, 3, SIDE, SIDE)])
    key_state = network.key_state()
    data = bundle.seal(
        epoch=epoch,
        scope="fleet",
        recognizer_id="rec-test",
        architecture=key_state["architecture"],
        state=key_state["state"],
        signing_key=signing,
        fleet_key=fleet,
    )
    path = tmp_path / f"epoch-{epoch}.bundle"
    path.write_bytes(data)
    keys = KeySettings(
        trusted_signers=[tmp_path / "keys" / "signing.pub.pem"],
        fleet_key_file=tmp_path / "keys" / "fleet.key",
    )
    return path, keys


def test_gallery_commands_enroll_photos_list_and_erase(
    tmp_path: Path, data_root: Path, http_server: Any
) -> None:
    service, settings = http_server
    bundle_path, keys = tiny_key_bundle(tmp_path, EPOCH)
    config = write_config(settings.model_copy(update={"keys": keys}), tmp_path / "rllfpr.yaml")
    photos = tmp_path / "photos"
    photos.mkdir()
    for source in sorted((data_root / "lfw" / "Aaron_Peirsol").iterdir())[:2]:
        (photos / source.name).write_bytes(source.read_bytes())
    (photos / "notes.jpg").write_text("not an image")

    arguments = ["gallery", "enroll", str(photos), "--subject", "aaron", "--site", "hq"]
    arguments += ["--bundle", str(bundle_path), "--config", str(config)]
    enrolled = runner.invoke(app, arguments)
    assert enrolled.exit_code == 0, enrolled.output
    assert "sent 2 scrambled faces" in enrolled.output
    assert "notes.jpg: unreadable" in enrolled.output
    wait_until(lambda: counter(service, "rllfpr_templates_enrolled_total") == 2)

    via_http = runner.invoke(app, [*arguments, "--via", "http"])
    assert via_http.exit_code == 0, via_http.output
    assert service.gallery.subjects("fleet", EPOCH) == {"aaron": 4}

    listed = runner.invoke(app, ["gallery", "list", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    assert "aaron" in listed.output
    erased = runner.invoke(app, ["gallery", "erase", "aaron", "--yes", "--config", str(config)])
    assert "erased 4 templates" in erased.output
    assert service.gallery.subjects("fleet", EPOCH) == {}


def test_enrollment_refuses_a_forged_bundle(tmp_path: Path, settings: Settings) -> None:
    bundle_path, keys = tiny_key_bundle(tmp_path, EPOCH)
    data = bundle_path.read_bytes()
    bundle_path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    config = write_config(settings.model_copy(update={"keys": keys}), tmp_path / "rllfpr.yaml")
    (tmp_path / "photos").mkdir()
    result = runner.invoke(
        app,
        [
            *["gallery", "enroll", str(tmp_path / "photos"), "--subject", "x", "--site", "hq"],
            *["--bundle", str(bundle_path), "--config", str(config)],
        ],
    )
    assert result.exit_code == 2
    assert "forged bundle" in result.output


def test_publish_and_list_models(tmp_path: Path, settings: Settings) -> None:
    torch.manual_seed(0)
    checkpoint = tmp_path / "checkpoint.pt"
    run_config = {"name": "tiny", "recognizer": TINY.model_dump(mode="json")}
    torch.save({"recognizer": Recognizer(TINY).state_dict(), "config": run_config}, checkpoint)
    options = settings.recognizer.model_copy(update={"model_store": tmp_path / "store"})
    config = write_config(settings.model_copy(update={"recognizer": options}), tmp_path / "c.yaml")
    published = runner.invoke(
        app,
        [
            *["recognizer", "publish", str(checkpoint), "--epoch", "5", "--threshold", "0.4"],
            *["--config", str(config)],
        ],
    )
    assert published.exit_code == 0, published.output
    info = ModelStore(tmp_path / "store").info("fleet", 5)
    assert info.calibration == OpenSetCalibration(threshold=0.4)
    assert info.recognizer_id in published.output
    listed = runner.invoke(app, ["recognizer", "models", "--config", str(config)])
    assert info.recognizer_id in listed.output
    again = runner.invoke(
        app,
        ["recognizer", "publish", str(checkpoint), "--epoch", "5", "--config", str(config)],
    )
    assert again.exit_code == 2
    assert "--calibration FILE or --threshold" in again.output
