"""The recognizer when things go away: a replica crashes (SIGKILL) and returns, a replica
leaves the group for good, Redis stops and restarts, the broker restarts. Nothing is lost."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis
import yaml

from recognizer_service.decision import Observation
from recognizer_service.service import RecognizerService
from recognizer_service.tracks import FaceObservation, ObserveStatus, TrackId
from rllfpr.config import RedisSettings, Settings
from rllfpr.local_services import Endpoint, free_port
from rllfpr.wire.messages import utc_now
from tests import test_recognizer_service as service_tests
from tests.support.recognizer import (
    Client,
    counter,
    covered,
    face,
    image,
    make_settings,
    noisy,
    wait_until,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]

# The service tests' fixtures, by name.
client = service_tests.client
model_store = service_tests.model_store
start_service = service_tests.start_service


@contextlib.contextmanager
def server(arguments: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A server process listening on ``port``; stopped (if still running) afterwards."""
    process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _listening(port), timeout_s=15)
        yield process
    finally:
        process.terminate()
        process.wait(10)


def _listening(port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def redis_arguments(port: int, directory: Path) -> list[str]:
    binary = os.environ.get("RLLFPR_REDIS_SERVER", "redis-server")
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    # persistence: AOF, fsync always, so a restart keeps the gallery


def mosquitto_arguments(port: int, directory: Path) -> list[str]:
    config = directory / "mosquitto.conf"
    directory.chmod(0o777)  # started as root, Mosquitto writes its persistence as "mosquitto"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {directory}/\nautosave_interval 1\nmax_inflight_messages 64\n"
    )
    return [os.environ.get("RLLFPR_MOSQUITTO", "mosquitto"), "-c", str(config)]


def spawn_replica(settings: Settings, client_id: str, workdir: Path) -> subprocess.Popen[bytes]:
    """``rllfpr recognizer run`` in its own process, HTTP on a free port (for readiness)."""
    document = settings.model_dump(mode="json")
    document["recognizer"] |= {"http_port": free_port(), "http_host": "127.0.0.1"}
    config = workdir / f"{client_id}.yaml"
    config.write_text(yaml.safe_dump(document))
    command = [sys.executable, "-m", "rllfpr.cli", "recognizer", "run", "--config", str(config)]
    process = subprocess.Popen(
        [*command, "--client-id", client_id],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / f"{client_id}.log").open("ab"),
    )
    url = f"http://127.0.0.1:{document['recognizer']['http_port']}/readyz"
    wait_until(lambda: _ready(url, process), timeout_s=90)
    return process


def _ready(url: str, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, "the replica exited"
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
        return bool(response.status == 200)
    return False


@pytest.mark.slow
def test_a_crashed_replicas_faces_wait_for_it_and_nothing_is_lost(
    tmp_path: Path,
    mqtt_broker: Endpoint,
    redis_endpoint: Endpoint,
    model_store: Path,
    start_service: Callable[..., RecognizerService],
    client: Client,
) -> None:
    settings = make_settings(mqtt_broker, redis_endpoint, model_store, max_batch=4)
    survivor = start_service(settings)
    crashing = spawn_replica(settings, "replica-crashing", tmp_path)
    sent = []
    try:
        for index in range(40):
            topic, payload, message_id = face(image(100 + index), track=index)
            client.publish(topic, payload)
            sent.append(message_id)
        wait_until(lambda: len(client.received()) >= 10)
        crashing.send_signal(signal.SIGKILL)  # no DISCONNECT, no acknowledgement of its batch
        crashing.wait(10)
        for index in range(40, 60):
            topic, payload, message_id = face(image(100 + index), track=index)
            client.publish(topic, payload)
            sent.append(message_id)
        time.sleep(1.5)  # the survivor's share is processed within this
        # Mosquitto keeps the crashed member's in-flight faces and goes on assigning it its
        # share of new ones: they wait for that session, the survivor does not get them.
        stranded = set(sent) - covered(client.received())
        assert stranded
        assert counter(survivor, "rllfpr_faces_acknowledged_total") < len(sent)
    finally:
        crashing.kill()
        crashing.wait(10)
    start_service(settings, client_id="replica-crashing")  # it returns (same session)
    wait_until(lambda: covered(client.received()) == set(sent), timeout_s=60)
    events = client.received()
    per_message = {str(e.message_ids[0]) for e in events}
    assert per_message == set(sent)
    # a crash between PUBACK and bookkeeping may repeat an event, never under a new id
    assert len({e.event_id for e in events}) == len(sent)


def test_a_replica_leaving_for_good_strands_nothing(
    mqtt_broker: Endpoint,
    redis_endpoint: Endpoint,
    model_store: Path,
    start_service: Callable[..., RecognizerService],
    client: Client,
) -> None:
    settings = make_settings(mqtt_broker, redis_endpoint, model_store)
    leaving, staying = start_service(settings), start_service(settings)
    first = {face_id for face_id in _publish(client, range(10))}
    wait_until(lambda: covered(client.received()) == first)
    assert counter(leaving, "rllfpr_faces_processed_total", purpose="recognize") > 0
    leaving.stop(leave_group=True)
    later = {face_id for face_id in _publish(client, range(10, 30))}
    wait_until(lambda: covered(client.received()) == first | later, timeout_s=10)
    assert counter(staying, "rllfpr_faces_processed_total", purpose="recognize") >= 20


def _publish(client: Client, indices: range) -> Iterator[str]:
    for index in indices:
        topic, payload, message_id = face(image(200 + index), track=index)
        client.publish(topic, payload)
        yield message_id


def test_redis_going_away_leaves_faces_unacknowledged_until_it_returns(
    mqtt_broker: Endpoint,
    model_store: Path,
    start_service: Callable[..., RecognizerService],
    client: Client,
) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        arguments = redis_arguments(port, Path(directory))
        arguments += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        redis_endpoint = Endpoint("127.0.0.1", port)
        settings = make_settings(mqtt_broker, redis_endpoint, model_store)
        settings = settings.model_copy(
            update={"redis": RedisSettings(url=f"redis://127.0.0.1:{port}/0")}
        )
        with server(arguments, port) as redis_process:
            service = start_service(settings)
            alice = image(300)
            client.publish(*face(alice, subject="alice")[:2])
            wait_until(lambda: counter(service, "rllfpr_templates_enrolled_total") == 1)
            redis_process.terminate()
            redis_process.wait(10)
        sent = {face_id for face_id in _publish_noisy(client, alice, 5)}
        wait_until(
            lambda: counter(service, "rllfpr_transient_failures_total", component="redis") > 0
        )
        time.sleep(1.0)
        assert client.received() == []
        assert counter(service, "rllfpr_faces_acknowledged_total") == 1  # the enrollment only
        assert counter(service, "rllfpr_redis_up") == 0
        assert not service.readiness().ready
        with server(arguments, port):
            wait_until(lambda: covered(client.received()) == sent, timeout_s=20)
            assert {e.subject for e in client.received()} == {"alice"}  # the gallery survived
            wait_until(lambda: counter(service, "rllfpr_faces_acknowledged_total") == 6)
            assert service.readiness().redis


def _publish_noisy(client: Client, pixels: object, count: int) -> Iterator[str]:
    import numpy as np

    assert isinstance(pixels, np.ndarray)
    for index in range(count):
        topic, payload, message_id = face(noisy(pixels, index), track=index)
        client.publish(topic, payload)
        yield message_id


def test_the_service_rides_out_a_broker_restart(
    redis_endpoint: Endpoint,
    model_store: Path,
    start_service: Callable[..., RecognizerService],
) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        arguments = mosquitto_arguments(port, Path(directory))
        broker = Endpoint("127.0.0.1", port)
        with server(arguments, port) as broker_process:
            service = start_service(make_settings(broker, redis_endpoint, model_store))
            broker_process.terminate()
            broker_process.wait(10)
        wait_until(lambda: counter(service, "rllfpr_mqtt_connected") == 0)
        with server(arguments, port):
            wait_until(lambda: service.link.is_connected(), timeout_s=40)
            publisher = Client(broker, "after-restart")
            try:
                sent = {face_id for face_id in _publish(publisher, range(5))}
                wait_until(lambda: covered(publisher.received()) == sent, timeout_s=20)
            finally:
                publisher.close()
            assert counter(service, "rllfpr_mqtt_connected") == 1


def test_an_event_the_broker_confirmed_is_not_published_again_when_redis_fails_next(
    mqtt_broker: Endpoint,
    redis_endpoint: Endpoint,
    model_store: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis can fail between the broker's PUBACK of an event and the round's ``finish``; the
    retry (or the sweep after the lease) then finishes the round without a second event. The
    chaos benchmark's Redis kills repeated such events, under the same event id, before."""
    service = RecognizerService(make_settings(mqtt_broker, redis_endpoint, model_store))
    service.models.refresh()
    published: list[tuple[str, bytes]] = []
    service.processor.publisher = _Recorder(published)
    face_id = str(uuid.uuid4())
    observation = FaceObservation(face_id, utc_now(), "fleet", 1, Observation({"alice": 0.9}))
    track = TrackId("lobby", "cam-0", "agent-1", 7)
    [(status, ref)] = service.tracks.observe_many([(track, observation)])
    assert status is ObserveStatus.CLAIMED

    finish = service.tracks.finish
    monkeypatch.setattr(
        service.tracks, "finish", lambda refs: (_ for _ in ()).throw(redis.ConnectionError("down"))
    )
    with pytest.raises(redis.ConnectionError):
        service.processor.publish_rounds([ref])
    assert len(published) == 1
    monkeypatch.setattr(service.tracks, "finish", finish)
    assert service.processor.publish_rounds([ref]) == 0  # finished, not published again
    assert len(published) == 1
    [(again, _)] = service.tracks.observe_many([(track, observation)])  # a redelivered face
    assert again is ObserveStatus.PUBLISHED
    assert [e["action"] for e in service.audit.recent(10)].count("search") == 1


class _Recorder:
    """An event publisher that records instead of sending (the broker confirmed everything)."""

    def __init__(self, sink: list[tuple[str, bytes]]) -> None:
        self.sink = sink

    def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        self.sink.extend(messages)
