"""The privacy guarantee, on a real Mosquitto: only SN output leaves the agent.

The agent replays LFW photos; a subscriber to '#' records everything the broker carries.
The test recomputes every face independently (OpenCV decode, shared MTCNN and alignment, the
trainer's tensor conversion, the torch SN) and requires each face message to be exactly one
of those SN outputs plus a header with nothing else in it. It then looks for raw faces in
everything the agent wrote to disk.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.agent import Agent
from rllfpr.config import Settings
from rllfpr.faces.align import align
from rllfpr.faces.detect import crop_box
from rllfpr.faces.pixels import sharpness, to_unit
from rllfpr.local_services import Endpoint
from rllfpr.models.scrambler import ScramblerNetwork
from rllfpr.wire import codec, topics
from rllfpr.wire.messages import AgentStatus, FaceHeader
from tests.support.agent import (
    SMALL_SN,
    KeyFactory,
    agent_settings,
    lfw_images,
    link_folder,
    read_rgb,
    self_learned,
    shared_detector,
)
from tests.support.mqtt import Capture, wait_until
from trainer.metrics import grayscale

pytestmark = pytest.mark.integration
IMAGES = 12
MAX_CORRELATION = 0.3


def expected_faces(
    images: list[Path], settings: Settings, network: ScramblerNetwork
) -> list[tuple[np.ndarray, np.ndarray, dict[str, int]]]:
    """(aligned face, SN output, crop box) of every face that passes the agent's gates."""
    config = settings.agent
    size = network.config.input_size
    found = []
    for path in images:
        image = read_rgb(path)
        (detections,) = shared_detector().detect_downscaled(
            [image], config.detect_width, config.min_face_size
        )
        for detection in detections:
            if detection.size < config.min_face_size:
                continue
            if detection.score < config.min_detection_score:
                continue
            face = align(image, detection.landmarks, size)
            if sharpness(face) < config.min_sharpness:
                continue
            scrambled = network.scramble(to_unit(face[None], torch.device("cpu")))[0].numpy()
            box = crop_box(detection.box, image.shape).model_dump()
            found.append((face, scrambled, box))
    return found


def raw_fragments(faces: list[np.ndarray], images: list[Path]) -> list[bytes]:
    """Byte runs that would betray a raw face in a file: rows of aligned faces (RGB and
    grey) and pieces of the original JPEG files."""
    fragments = []
    for face in faces:
        middle = face.shape[0] // 2
        fragments.append(face[middle, 30:70].tobytes())
        grey = np.round(grayscale(face[None])[0]).astype(np.uint8)
        fragments.append(grey[middle, 30:90].tobytes())
    for path in images:
        data = path.read_bytes()
        fragments.append(data[len(data) // 2 : len(data) // 2 + 64])
    return fragments


def test_only_scrambled_faces_leave_the_agent(
    mqtt_broker: Endpoint, data_root: Path, tmp_path: Path
) -> None:
    images = lfw_images(data_root, IMAGES)
    folder = link_folder(images, tmp_path / "camera")
    factory = KeyFactory(tmp_path / "trainer")
    settings = agent_settings(
        mqtt_broker,
        factory.settings(tmp_path / "keys"),
        tmp_path,
        max_batch_frames=1,  # MTCNN batches differ from single images in the last bits
        min_sharpness=20.0,
    )
    warmup = np.stack([read_rgb(p) for p in images[:4]])
    network = self_learned(SMALL_SN, 7, warmup[:, 69:181, 69:181])
    capture = Capture(mqtt_broker)
    factory.publish(mqtt_broker, network, epoch=3)
    agent = Agent(settings, str(folder), detector=shared_detector())
    try:
        agent.start()
        wait_until(lambda: agent.keys.current() is not None)
        agent.run()
        assert agent.drain(30)
    finally:
        agent.close()
    expected = expected_faces(images, settings, network)
    assert len(expected) >= IMAGES  # every LFW photo has its person; some have more
    face_topic = topics.faces("lab", settings.agent.camera or "")
    wait_until(lambda: len(capture.on(face_topic)) >= len(expected))
    capture.close()

    allowed = {face_topic, topics.agent_status(agent.who.agent)}
    key_prefix = f"{topics.ROOT}/keys/{factory.scope}/"
    # Messages flagged retained were stored by earlier tests on the session's broker; the
    # ones published while this test ran are the agent's and the test trainer's.
    live = [m for m in capture.messages if not m.retain]
    stray = [m.topic for m in live if m.topic not in allowed]
    assert all(topic.startswith(key_prefix) for topic in stray), stray  # the trainer's own
    for message in capture.on(topics.agent_status(agent.who.agent)):
        AgentStatus.model_validate_json(message.payload)  # status is plain metadata

    unmatched = list(range(len(expected)))
    for message in capture.on(face_topic):
        assert message.expiry_s is not None
        assert 0 < message.expiry_s <= settings.mqtt.message_expiry_s  # stale faces expire
        decoded = codec.decode(message.payload)
        (header_length,) = struct.unpack(">I", message.payload[6:10])
        pixels = decoded.header.height * decoded.header.width
        assert len(message.payload) == 10 + header_length + pixels  # header, pixels, no more
        header_json = json.loads(message.payload[10 : 10 + header_length])
        assert set(header_json) == set(FaceHeader.model_fields)  # nothing smuggled beside
        assert decoded.header.key_epoch == 3
        assert decoded.header.key_scope == factory.scope
        matches = [i for i in unmatched if np.array_equal(decoded.pixels, expected[i][1])]
        assert matches, "a face message is not the SN output of any face in the photos"
        index = matches[0]
        unmatched.remove(index)
        face, _, box = expected[index]
        assert decoded.header.crop.model_dump() == box  # a coarse box, no landmarks
        correlation = np.corrcoef(
            decoded.pixels.ravel().astype(np.float64), grayscale(face[None])[0].ravel()
        )[0, 1]
        assert abs(correlation) < MAX_CORRELATION
    assert not unmatched, "faces found in the photos were not published"

    fragments = raw_fragments([face for face, _, _ in expected], images)
    written = [p for d in (settings.agent.spool_dir, settings.keys.directory) for p in d.rglob("*")]
    for path in (p for p in written if p.is_file()):
        data = path.read_bytes()
        assert not any(fragment in data for fragment in fragments), f"raw face bytes in {path}"
