"""A whole fleet rotates its key: two agents, two recognizers, real Mosquitto and Redis 8.

Faces flow before, during (staged, then active within the grace window) and after the rotation;
every face a camera published yields exactly one event, none is lost or counted twice, no face
of the revoked epoch is accepted after the revocation, and forged or replayed key messages
change nothing.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from demo.people import Visit
from demo.run import ReplayCamera
from edge_agent.agent import Agent
from recognizer_service.service import RecognizerService
from rllfpr import mqtt
from rllfpr.config import Settings
from rllfpr.faces.detect import FaceDetector
from rllfpr.keys import bundle, envelope
from rllfpr.local_services import Endpoint, free_port
from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from rllfpr.models.store import ModelStore, OpenSetCalibration
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import RecognitionEvent
from tests.support.agent import SMALL_SN, KeyFactory, lfw_images, self_learned
from tests.support.mqtt import Capture, wait_until
from trainer.rotation import KeyPublisher

SIDE = 64
GRACE_S = 3


class SiteCapture(Capture):
    """Every face message and event of one site on the broker."""

    def __init__(self, endpoint: Endpoint, site: str) -> None:
        super().__init__(
            endpoint, f"{topics.ROOT}/faces/{site}/+", f"{topics.ROOT}/events/{site}/+"
        )

    def faces(self) -> dict[str, tuple[int, bytes]]:
        """message id -> (key epoch, payload)"""
        found = {}
        for message in self.on(f"{topics.ROOT}/faces/"):
            header = codec.decode(message.payload).header
            found[str(header.message_id)] = (header.key_epoch, message.payload)
        return found

    def events(self) -> list[RecognitionEvent]:
        return [
            RecognitionEvent.model_validate_json(message.payload)
            for message in self.on(f"{topics.ROOT}/events/")
        ]


def _publish_model(store: ModelStore, scope: str, epoch: int) -> str:
    torch.manual_seed(epoch)
    recognizer = Recognizer(RecognizerConfig(backbone="compact", input_size=SIDE, embedding_dim=16))
    info = store.publish(scope, epoch, recognizer.eval(), OpenSetCalibration(threshold=0.5))
    return info.recognizer_id


def _rejected(recognizers: list[RecognizerService], reason: str) -> float:
    registry = "rllfpr_faces_rejected_total"
    return sum(
        r.metrics.registry.get_sample_value(registry, {"reason": reason}) or 0.0
        for r in recognizers
    )


@pytest.mark.slow
@pytest.mark.integration
def test_two_agents_and_two_recognizers_rotate_without_loss(
    mqtt_broker: Endpoint, redis_endpoint: Endpoint, data_root: Path, tmp_path: Path
) -> None:
    keys = KeyFactory(tmp_path)
    site = f"s{uuid.uuid4().hex[:8]}"
    store = ModelStore(tmp_path / "models")
    config = SMALL_SN.model_copy(update={"input_size": SIDE})
    probe_faces = (torch.rand(8, SIDE, SIDE, 3) * 255).to(torch.uint8).numpy()
    bundles, networks = {}, {}
    for epoch in (1, 2):
        recognizer_id = _publish_model(store, keys.scope, epoch)
        network = networks[epoch] = self_learned(config, epoch, probe_faces)
        state = network.key_state()
        bundles[epoch] = bundle.seal(
            epoch=epoch,
            scope=keys.scope,
            recognizer_id=recognizer_id,
            architecture=state["architecture"],
            state=state["state"],
            signing_key=keys.signing_key,
            fleet_key=keys.fleet_key,
        )

    def settings(role: str, **extra: object) -> Settings:
        return Settings.model_validate(
            {
                "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port},
                "redis": {
                    "url": f"redis://{redis_endpoint.host}:{redis_endpoint.port}/0",
                    "key_prefix": f"fleet{site}",
                },
                "keys": keys.settings(tmp_path / f"keys-{role}").model_dump(),
                "recognizer": {
                    "scopes": [keys.scope],
                    "model_store": str(store.root),
                    "device": "cpu",
                    "group": f"g{site}",
                    "consensus_faces": 1,
                    "maintenance_interval_s": 0.5,
                },
            }
            | extra
        )

    trainer_settings = settings("trainer")
    trainer = mqtt.make_client(trainer_settings.mqtt, "t", client_id=f"t-{uuid.uuid4().hex}")
    mqtt.connect(trainer, trainer_settings.mqtt, clean_start=True)
    publisher = KeyPublisher(trainer, keys.signing_key)
    publisher.stage(bundles[1])
    first_activation = publisher.activate(bundles[1], GRACE_S)
    capture = SiteCapture(mqtt_broker, site)

    recognizers = [RecognizerService(settings("r"), client_id=f"r{i}-{site}") for i in range(2)]
    for recognizer in recognizers:
        recognizer.start()
    detector = FaceDetector(min_face_size=40, min_score=0.0)
    photos = lfw_images(data_root, 16, start=40)
    cameras, agents = [], []
    for index in range(2):
        mine = photos[index::2]  # 8 photos per camera, in 4 rounds of 2
        rounds = [
            [Visit(p.parent.name, (p,), True) for p in mine[r * 2 : r * 2 + 2]] for r in range(4)
        ]
        camera = ReplayCamera(rounds, fps=20)
        agent_settings = settings(
            f"a{index}",
            agent={
                "id": f"agent{index}",
                "site": site,
                "camera": f"cam{index}",
                "detect_every": 1,
                "min_sharpness": 0.0,
                "min_detection_score": 0.9,
                "max_messages_per_track": 1,
                "spool_dir": str(tmp_path / f"spool{index}"),
                "metrics_port": free_port(),
                "key_settle_s": 0.1,
            },
        )
        agent = Agent(agent_settings, camera, detector=detector)
        agent.start()
        assert agent.wait_for_key(20)
        cameras.append(camera)
        agents.append(agent)
    runners = [threading.Thread(target=a.run, daemon=True) for a in agents]
    for runner in runners:
        runner.start()

    def settled() -> bool:  # every face seen on the broker has its event
        decided = {str(m) for e in capture.events() for m in e.message_ids}
        faces = capture.faces()
        return bool(faces) and set(faces) <= decided

    def round_done(round_: int) -> None:
        for camera in cameras:
            assert camera.finished[round_].wait(60)
        time.sleep(0.5)
        wait_until(settled, 60)

    try:
        round_done(0)  # epoch 1
        publisher.stage(bundles[2])
        for camera in cameras:
            camera.release(1)
        round_done(1)  # epoch 2 staged, 1 still active
        publisher.activate(bundles[2], GRACE_S)
        wait_until(lambda: all((k := a.keys.current()) and k.epoch == 2 for a in agents), 20)
        for camera in cameras:
            camera.release(2)
        round_done(2)  # epoch 2 active, 1 within its grace window

        # a forged bundle and a replayed old activation change nothing
        forged = keys.bundle(networks[2], 3, signer=Ed25519PrivateKey.generate())
        retain = {
            topics.key_bundle(keys.scope, 3): forged,
            topics.key_announcements(keys.scope, 1): envelope.sign(
                first_activation, keys.signing_key
            ),
        }
        for topic, payload in retain.items():
            trainer.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
        time.sleep(1.0)
        assert [a.keys.current().epoch for a in agents] == [2, 2]  # type: ignore[union-attr]

        time.sleep(GRACE_S)
        publisher.revoke(keys.scope, 1)
        revoked_at = time.time()
        wait_until(lambda: all(r.models.get(keys.scope, 1) is None for r in recognizers), 20)
        for camera in cameras:
            camera.release(3)
        round_done(3)  # after the revocation

        old_face = next(payload for epoch, payload in capture.faces().values() if epoch == 1)
        before = _rejected(recognizers, "revoked_epoch")
        old_header = codec.decode(old_face).header
        old_topic = topics.faces(old_header.site, old_header.camera)
        trainer.publish(old_topic, old_face, qos=1).wait_for_publish(5)
        wait_until(lambda: _rejected(recognizers, "revoked_epoch") > before, 20)
    finally:
        for agent in agents:
            agent.close()
        for recognizer in recognizers:
            recognizer.stop()
        capture.close()
        trainer.disconnect()
        trainer.loop_stop()

    faces, events = capture.faces(), capture.events()
    published = sum(
        a.metrics.registry.get_sample_value("rllfpr_agent_faces_published_total") or 0
        for a in agents
    )
    decided = [str(m) for e in events for m in e.message_ids]
    assert published >= 8  # faces flowed in every round
    assert sorted(decided) == sorted(set(decided))  # no face decided twice (two replicas)
    assert set(decided) == set(faces)  # every published face has its event: nothing lost
    assert len({e.event_id for e in events}) == len(events)
    epochs = {epoch for epoch, _ in faces.values()}
    assert epochs == {1, 2}
    late = [e for e in events if e.key_epoch == 1 and e.decided_at.timestamp() > revoked_at]
    assert late == []  # nothing of the revoked epoch accepted after the revocation
    served = [
        r.metrics.registry.get_sample_value(
            "rllfpr_faces_processed_total", {"purpose": "recognize"}
        )
        or 0
        for r in recognizers
    ]
    assert sum(served) == len(faces)
