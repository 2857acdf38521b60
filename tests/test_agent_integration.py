"""The edge agent end to end on a real Mosquitto: outages, restarts, key changes, bad input."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edge_agent.agent import Agent
from edge_agent.link import AgentLink
from edge_agent.metrics import AgentMetrics
from edge_agent.sources import Frame
from edge_agent.spool import Spool
from rllfpr import local_services
from rllfpr.cli import app
from rllfpr.config import MqttSettings
from rllfpr.faces.align import align
from rllfpr.faces.pixels import to_unit
from rllfpr.local_services import Endpoint
from rllfpr.models.scrambler import ScramblerNetwork
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import AgentStatus, FaceHeader, utc_now
from tests.support.agent import (
    KeyFactory,
    Outage,
    agent_settings,
    lfw_images,
    link_folder,
    moving_face_frames,
    network,
    read_rgb,
    retain,
    shared_detector,
    started,
)
from tests.support.mqtt import Capture, wait_until

pytestmark = pytest.mark.integration


def faces_of(capture: Capture, agent: Agent) -> list[FaceHeader]:
    return [codec.decode(m.payload).header for m in capture.on(agent.topic)]


@pytest.fixture
def photos(data_root: Path, tmp_path: Path) -> Path:
    return link_folder(lfw_images(data_root, 4, start=40), tmp_path / "photos")


@pytest.mark.slow
def test_a_broker_outage_and_an_agent_restart_lose_nothing(
    mqtt_broker: Endpoint, photos: Path, tmp_path: Path
) -> None:
    factory = KeyFactory(tmp_path / "trainer")
    factory.publish(mqtt_broker, network(1), epoch=1)
    outage = Outage(mqtt_broker)
    outage.up()
    settings = agent_settings(outage.port, factory.settings(tmp_path / "keys"), tmp_path)
    capture = Capture(mqtt_broker)
    agent = started(Agent(settings, str(photos), detector=shared_detector()))
    outage.down()
    wait_until(lambda: not agent.link.connected.is_set())
    wait_until(lambda: last_status(capture, agent).reason == "connection lost")  # the will
    assert last_status(capture, agent).state == "offline"
    assert last_status(capture, agent).key_epoch is None
    agent.run()  # the broker is unreachable: everything goes to the spool
    queued = int(agent.metrics.value("faces_queued"))
    assert queued >= 4
    assert agent.spool.depth == queued
    assert not capture.on(agent.topic)
    agent.close(flush_timeout_s=0)  # the agent stops with a full spool...

    outage.up()  # ...and a new one, started when the broker is back, sends it all
    again = started(Agent(settings, str(photos), detector=shared_detector()))
    try:
        assert again.drain(30)
        wait_until(lambda: len(capture.on(agent.topic)) >= queued)
        ids = [h.message_id for h in faces_of(capture, agent)]
        assert len(set(ids)) == queued  # all of them, each at least once
        assert again.metrics.value("faces_published") >= queued
        outage.down()  # and an outage in the middle of a run
        wait_until(lambda: not again.link.connected.is_set())
        again.run()
        outage.up()
        assert again.drain(30)
        wait_until(lambda: len({h.message_id for h in faces_of(capture, agent)}) >= 2 * queued)
    finally:
        again.close()
        outage.down()
        capture.close()
    statuses = [
        AgentStatus.model_validate_json(m.payload) for m in capture.on(topics.ROOT + "/agents/")
    ]
    assert {s.state for s in statuses} >= {"online"}
    assert all(s.key_epoch in (None, 1) for s in statuses)


def test_faces_nobody_subscribed_to_stay_spooled_until_a_recognizer_subscribes(
    photos: Path, tmp_path: Path
) -> None:
    """A broker with no subscriber for faces (no recognizer yet, or a restart that lost the
    recognizers' shared subscription: Mosquitto 2.0 does not restore those) answers "no
    matching subscribers" and delivers to nobody. Those faces stay in the spool until a
    recognizer subscribes; before, the agent deleted them (the soak's broker kills lost them)."""
    with local_services.mosquitto() as broker:  # its own broker: no subscriber left by others
        factory = KeyFactory(tmp_path / "trainer")
        factory.publish(broker, network(1), epoch=1)
        settings = agent_settings(broker, factory.settings(tmp_path / "keys"), tmp_path)
        agent = started(Agent(settings, str(photos), detector=shared_detector()))
        recognizer: Capture | None = None
        try:
            agent.run()
            queued = int(agent.metrics.value("faces_queued"))
            assert queued >= 4
            wait_until(lambda: agent.metrics.value("faces_unrouted") >= 1)
            time.sleep(2.5)  # a retry or two: still nobody subscribed
            assert agent.spool.depth == queued
            assert agent.metrics.value("faces_published") == 0
            recognizer = Capture(broker, topics.shared(topics.ALL_FACES))
            assert agent.drain(40)
            wait_until(lambda: len({h.message_id for h in faces_of(recognizer, agent)}) == queued)
            assert agent.metrics.value("faces_dropped", reason="refused") == 0
        finally:
            agent.close()
            if recognizer is not None:
                recognizer.close()


def last_status(capture: Capture, agent: Agent) -> AgentStatus:
    """The latest status of ``agent`` (an empty ``degraded`` one before any arrived)."""
    messages = capture.on(topics.agent_status(agent.who.agent))
    if not messages:
        return AgentStatus(agent=agent.who.agent, site="none", state="degraded", version="")
    return AgentStatus.model_validate_json(messages[-1].payload)


class LoopingCamera:
    """A live source: the same photos over and over, each frame its own scene."""

    live = True
    description = "test camera"

    def __init__(self, images: list[np.ndarray], fps: float) -> None:
        self.images = images
        self.period = 1.0 / fps

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        index = 0
        while not stop.is_set():
            image = self.images[index % len(self.images)]
            yield Frame(image, index, index, utc_now(), f"loop {index}")
            index += 1
            stop.wait(self.period)


@pytest.mark.slow
def test_key_rotation_on_a_running_stream_then_revocation(
    mqtt_broker: Endpoint, data_root: Path, tmp_path: Path
) -> None:
    images = [read_rgb(p) for p in lfw_images(data_root, 2, start=60)]
    factory = KeyFactory(tmp_path / "trainer")
    factory.publish(mqtt_broker, network(1), epoch=1)
    settings = agent_settings(
        mqtt_broker, factory.settings(tmp_path / "keys"), tmp_path, max_batch_frames=1
    )
    capture = Capture(mqtt_broker)
    agent = started(Agent(settings, LoopingCamera(images, fps=8), detector=shared_detector()))
    runner = threading.Thread(target=agent.run)
    runner.start()
    try:
        wait_until(lambda: any(h.key_epoch == 1 for h in faces_of(capture, agent)))
        factory.publish(mqtt_broker, network(2), epoch=2)  # rotate while frames flow
        wait_until(lambda: any(h.key_epoch == 2 for h in faces_of(capture, agent)))
        frames_at_swap = agent.metrics.value("frames")
        message = next(
            m
            for m in reversed(capture.on(agent.topic))
            if codec.decode(m.payload).header.key_epoch == 2
        )
        assert any(
            np.array_equal(codec.decode(message.payload).pixels, expected)
            for expected in recompute(images, network(2))
        )

        retain(mqtt_broker, topics.key_revocation(factory.scope, 2), factory.revocation(2))
        wait_until(lambda: agent.keys.current() is None)
        # what was spooled before the revocation is dropped or already acknowledged by the
        # broker; let the acknowledged ones reach the subscriber before counting
        wait_until(lambda: agent.spool.depth == 0)
        time.sleep(0.3)
        published_after_revocation = len(capture.on(agent.topic))
        dropped_before = agent.metrics.value("faces_dropped", reason="no_key")
        wait_until(
            lambda: agent.metrics.value("faces_dropped", reason="no_key") > dropped_before + 2
        )
        assert agent.metrics.value("frames") > frames_at_swap  # the stream never stopped
    finally:
        agent.stop_event.set()
        runner.join(timeout=30)
        agent.close()
    time.sleep(0.3)
    capture.close()
    assert len(capture.on(agent.topic)) == published_after_revocation  # nothing after it
    epochs = [h.key_epoch for h in faces_of(capture, agent)]
    assert epochs == sorted(epochs)  # never back to the old key
    status = AgentStatus.model_validate_json(
        capture.on(topics.agent_status(agent.who.agent))[-1].payload
    )
    assert status.state in {"degraded", "offline"}


def recompute(images: list[np.ndarray], sn: ScramblerNetwork) -> list[np.ndarray]:
    outputs = []
    for image in images:
        for detection in shared_detector().detect([image])[0]:
            face = align(image, detection.landmarks, 112)
            outputs.append(sn.scramble(to_unit(face[None], torch.device("cpu")))[0].numpy())
    return outputs


def test_forged_keys_mean_no_face_leaves(
    mqtt_broker: Endpoint, photos: Path, tmp_path: Path
) -> None:
    factory = KeyFactory(tmp_path / "trainer")
    impostor = KeyFactory(tmp_path / "impostor", scope=factory.scope)
    impostor.publish(mqtt_broker, network(1), epoch=1)  # right scope, wrong signer
    settings = agent_settings(mqtt_broker, factory.settings(tmp_path / "keys"), tmp_path)
    capture = Capture(mqtt_broker)
    agent = Agent(settings, str(photos), detector=shared_detector())
    agent.start()
    try:
        wait_until(lambda: agent.metrics.value("key_messages", kind="bundle", outcome="refused"))
        agent.run()
    finally:
        agent.close()
    capture.close()
    assert agent.keys.current() is None
    assert agent.metrics.value("faces_detected") >= 4
    assert agent.metrics.value("faces_dropped", reason="no_key") == agent.metrics.value(
        "faces_detected"
    )
    assert not capture.on(agent.topic)
    assert agent.spool.depth == 0
    assert agent.metrics.value("key_messages", kind="announcement", outcome="refused") == 1


def test_corrupt_and_faceless_frames_are_skipped_and_counted(
    mqtt_broker: Endpoint, data_root: Path, tmp_path: Path
) -> None:
    folder = link_folder(lfw_images(data_root, 1, start=80), tmp_path / "mixed")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(300))
    noise = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "noise.png"), noise)
    cv2.imwrite(str(folder / "blank.png"), np.zeros((480, 640, 3), np.uint8))
    factory = KeyFactory(tmp_path / "trainer")
    factory.publish(mqtt_broker, network(1), epoch=1)
    settings = agent_settings(mqtt_broker, factory.settings(tmp_path / "keys"), tmp_path)
    agent = started(Agent(settings, str(folder), detector=shared_detector()))
    try:
        agent.run()
        assert agent.drain(20)
    finally:
        agent.close()
    assert agent.metrics.value("frames") == 3
    assert agent.metrics.value("frames_skipped", reason="unreadable") == 1
    assert agent.metrics.value("faces_published") >= 1


def test_a_person_in_a_sequence_yields_few_messages_from_one_track(
    mqtt_broker: Endpoint, data_root: Path, tmp_path: Path
) -> None:
    image = read_rgb(lfw_images(data_root, 1, start=100)[0])
    folder = moving_face_frames(image, tmp_path / "sequence", 24)
    factory = KeyFactory(tmp_path / "trainer")
    factory.publish(mqtt_broker, network(1), epoch=1)
    settings = agent_settings(
        mqtt_broker,
        factory.settings(tmp_path / "keys"),
        tmp_path,
        sequence=True,
        detect_every=3,
        max_messages_per_track=2,
        improvement_ratio=1.0,
    )
    capture = Capture(mqtt_broker)
    agent = started(Agent(settings, str(folder), detector=shared_detector()))
    try:
        agent.run()
        assert agent.drain(20)
    finally:
        agent.close()
    wait_until(lambda: len(capture.on(agent.topic)) >= 2)
    time.sleep(0.2)
    capture.close()
    headers = faces_of(capture, agent)
    assert len(headers) == 2  # the budget, although the face is in 24 frames
    assert len({h.track_id for h in headers}) == 1
    assert agent.metrics.value("faces_detected") == 8  # detected on every third frame only
    assert agent.metrics.value("faces_suppressed", reason="track_budget") == 6
    assert all(h.crop.frame_width == 640 for h in headers)
    assert all(h.crop.width >= settings.agent.min_face_size for h in headers)


def test_metrics_and_health_endpoints(mqtt_broker: Endpoint, photos: Path, tmp_path: Path) -> None:
    factory = KeyFactory(tmp_path / "trainer")
    settings = agent_settings(mqtt_broker, factory.settings(tmp_path / "keys"), tmp_path)
    agent = Agent(settings, str(photos), detector=shared_detector())
    agent.start()
    try:
        assert agent.http is not None
        base = f"http://127.0.0.1:{agent.http.port}"
        wait_until(agent.link.connected.is_set)
        with urllib.request.urlopen(f"{base}/healthz") as response:
            health = json.loads(response.read())
        assert health["status"] == "degraded"
        assert health["key_epoch"] is None
        factory.publish(mqtt_broker, network(1), epoch=5)
        wait_until(lambda: agent.keys.current() is not None)
        agent.run()
        with urllib.request.urlopen(f"{base}/metrics") as response:
            text = response.read().decode()
        assert "rllfpr_agent_key_epoch 5.0" in text
        assert 'rllfpr_agent_stage_seconds_count{stage="detect"}' in text
        assert "rllfpr_agent_frames_total 4.0" in text
        with urllib.request.urlopen(f"{base}/healthz") as response:
            assert json.loads(response.read())["status"] == "ok"
        agent.config = agent.config.model_copy(update={"stale_after_s": 0.01})
        time.sleep(0.05)
        with pytest.raises(urllib.error.HTTPError) as failing:
            urllib.request.urlopen(f"{base}/healthz")
        assert failing.value.code == 503
    finally:
        agent.close()


def test_status_is_republished_with_fresh_figures(mqtt_broker: Endpoint, tmp_path: Path) -> None:
    metrics = AgentMetrics()
    spool = Spool(tmp_path / "spool.sqlite3", max_messages=10, max_bytes=10_000)
    capture = Capture(mqtt_broker, topics.agent_status("figures"))
    link = AgentLink(
        MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port),
        agent="figures",
        site="lab",
        camera="cam",
        key_scope="fleet",
        spool=spool,
        metrics=metrics,
        on_key_message=lambda _payload: None,
        max_inflight=4,
        reconnect_initial_s=1,
        reconnect_max_s=1,
        status_interval_s=1,
    )

    def statuses() -> list[AgentStatus]:
        return [AgentStatus.model_validate_json(m.payload) for m in capture.on(topics.ROOT)]

    link.start()
    try:
        wait_until(link.connected.is_set)
        link.set_status(4, None)
        metrics.frames.inc(50)  # frames read since the previous status
        spool.put(topics.faces("lab", "cam"), b"face", time.time() + 60, 4)
        link.wake()
        wait_until(lambda: (s := statuses()) and s[-1].faces_published == 1)
        seen = len(statuses())
        wait_until(lambda: len(statuses()) >= seen + 2)  # a whole interval without frames
    finally:
        link.close()
        capture.close()
    running = [s for s in statuses() if s.state == "online"]
    assert [s.at for s in running] == sorted(s.at for s in running)  # each one made afresh
    assert all(s.schema_version == 2 and s.key_epoch == 4 for s in running)
    assert any(s.fps is not None and 10 < s.fps <= 50 for s in running)  # 50 frames, < 5 s
    assert running[-1].fps == 0
    assert running[-1].spool_messages == 0
    stopped = statuses()[-1]
    assert (stopped.state, stopped.reason, stopped.faces_published) == ("offline", "stopped", 1)


def test_cli_runs_a_folder_with_config_file_and_options(
    mqtt_broker: Endpoint, photos: Path, tmp_path: Path
) -> None:
    factory = KeyFactory(tmp_path / "trainer")
    factory.publish(mqtt_broker, network(1), epoch=1)
    keys = factory.settings(tmp_path / "keys")
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"mqtt:\n  port: {mqtt_broker.port}\n"
        f"keys:\n  directory: {keys.directory}\n  scope: {factory.scope}\n"
        f"  trusted_signers: [{factory.public_path}]\n  fleet_key_file: {factory.fleet_path}\n"
        f"agent:\n  site: lab\n  metrics_port: 0\n  replay_fps: 0\n  key_settle_s: 0.05\n"
        f"  spool_dir: {tmp_path / 'spool'}\n  backend: onnxruntime\n"
    )
    capture = Capture(mqtt_broker, topics.faces("lab", "cli-cam"))
    result = CliRunner().invoke(
        app, ["agent", "run", "--source", str(photos), "--camera", "cli-cam", "-c", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "faces acknowledged by the broker" in result.output
    wait_until(lambda: capture.on(topics.faces("lab", "cli-cam")))
    capture.close()
    missing = CliRunner().invoke(
        app,
        ["agent", "run", "--source", str(tmp_path / "nowhere"), "--camera", "c", "-c", str(config)],
    )
    assert missing.exit_code == 2
    assert "source not found" in missing.output
