"""Shared pieces of the edge-agent tests: keys, an on/off TCP link, LFW photos, a detector."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.agent import Agent
from rllfpr import mqtt
from rllfpr.config import AgentSettings, KeySettings, MqttSettings, Settings
from rllfpr.faces.detect import FaceDetector
from rllfpr.faces.pixels import faces_to_sn_input
from rllfpr.keys import bundle, envelope, material
from rllfpr.local_services import Endpoint
from rllfpr.models.scrambler import ScramblerConfig, ScramblerNetwork
from rllfpr.wire import topics
from rllfpr.wire.messages import KeyAnnouncement, KeyState, Revocation
from tests.support.mqtt import wait_until

SMALL_SN = ScramblerConfig(widths=(8, 16, 16, 16, 16))  # fast enough for integration tests


def read_rgb(path: Path) -> np.ndarray:
    """Decoded as the agent decodes (OpenCV), written independently of the agent's code."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def lfw_images(data_root: Path, count: int, start: int = 0) -> list[Path]:
    """The first image of ``count`` LFW people (sorted by name, from ``start``)."""
    people = sorted(p for p in (data_root / "lfw").iterdir() if p.is_dir())
    return [sorted(person.glob("*.jpg"))[0] for person in people[start : start + count]]


def link_folder(images: list[Path], folder: Path) -> Path:
    """A folder of symbolic links to dataset images (the dataset is never copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        (folder / f"{index:04d}-{image.name}").symlink_to(image)
    return folder


def self_learned(config: ScramblerConfig, seed: int, faces: np.ndarray) -> ScramblerNetwork:
    network = ScramblerNetwork(config, seed)
    network.self_learn([faces_to_sn_input(faces, config.in_channels)])
    return network


@dataclass
class KeyFactory:
    """A trainer's key material and the messages it publishes, for one unique scope."""

    directory: Path
    scope: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:12]}")
    signing_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    fleet_key: material.FleetKey = field(default_factory=material.FleetKey.generate)

    def __post_init__(self) -> None:
        material.save_public_key(self.signing_key.public_key(), self.public_path)
        material.save_fleet_key(self.fleet_key, self.fleet_path)

    @property
    def public_path(self) -> Path:
        return self.directory / "signing.pub.pem"

    @property
    def fleet_path(self) -> Path:
        return self.directory / "fleet.key"

    def settings(self, key_dir: Path) -> KeySettings:
        return KeySettings(
            directory=key_dir,
            trusted_signers=[self.public_path],
            fleet_key_file=self.fleet_path,
            scope=self.scope,
        )

    def bundle(
        self, network: ScramblerNetwork, epoch: int, signer: Ed25519PrivateKey | None = None
    ) -> bytes:
        state = network.key_state()
        return bundle.seal(
            epoch=epoch,
            scope=self.scope,
            recognizer_id=f"test-e{epoch}",
            architecture=state["architecture"],
            state=state["state"],
            signing_key=signer or self.signing_key,
            fleet_key=self.fleet_key,
        )

    def announcement(self, sealed: bytes, state: KeyState = KeyState.ACTIVE) -> bytes:
        header = bundle.read_header(sealed)
        message = KeyAnnouncement(
            scope=self.scope,
            epoch=header.epoch,
            state=state,
            bundle_id=header.bundle_id,
            bundle_sha256=hashlib.sha256(sealed).hexdigest(),
        )
        return envelope.sign(message, self.signing_key)

    def revocation(self, epoch: int) -> bytes:
        return envelope.sign(Revocation(scope=self.scope, epoch=epoch), self.signing_key)

    def publish(self, endpoint: Endpoint, network: ScramblerNetwork, epoch: int) -> bytes:
        """Publish a bundle and its activation (retained), as the trainer would."""
        sealed = self.bundle(network, epoch)
        retain(endpoint, topics.key_bundle(self.scope, epoch), sealed)
        retain(endpoint, topics.key_announcements(self.scope, epoch), self.announcement(sealed))
        return sealed


def retain(endpoint: Endpoint, topic: str, payload: bytes) -> None:
    settings = MqttSettings(host=endpoint.host, port=endpoint.port)
    client = mqtt.make_client(settings, "trainer", client_id=f"trainer-{uuid.uuid4().hex[:8]}")
    mqtt.connect(client, settings, clean_start=True)
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


class Outage:
    """A TCP forwarder to the broker that can be cut and restored: the agent connects through
    it, so the broker becomes unreachable for the agent alone while a capture stays on."""

    def __init__(self, target: Endpoint) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        listener.settimeout(0.05)  # closing a socket does not wake a blocked accept()
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection((self.target.host, self.target.port))
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def agent_settings(
    endpoint: Endpoint | int, keys: KeySettings, tmp_path: Path, **agent: Any
) -> Settings:
    """Settings of a test agent: fast key settling, no pacing, a private spool, any port."""
    port = endpoint if isinstance(endpoint, int) else endpoint.port
    options: dict[str, Any] = {
        "site": "lab",
        "camera": f"cam-{uuid.uuid4().hex[:6]}",
        "replay_fps": 0,
        "spool_dir": tmp_path / "spool",
        "metrics_port": 0,
        "backend": "torch",
        "device": "cpu",
        "key_settle_s": 0.05,
        "reconnect_initial_s": 1,
        "reconnect_max_s": 1,
        "min_sharpness": 0.0,
    }
    options.update(agent)
    return Settings(
        mqtt=MqttSettings(host="127.0.0.1", port=port),
        keys=keys,
        agent=AgentSettings(**options),
    )


@functools.cache
def shared_detector(min_face_size: int = 40) -> FaceDetector:
    """One MTCNN per test session (loading it takes a while on two cores)."""
    return FaceDetector(min_face_size=min_face_size, min_score=0.0)


@functools.cache
def network(seed: int) -> ScramblerNetwork:
    noise = np.random.default_rng(seed).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    return self_learned(SMALL_SN, seed, noise)


def started(agent: Agent) -> Agent:
    agent.start()
    wait_until(lambda: agent.keys.current() is not None and agent.link.connected.is_set())
    return agent


def moving_face_frames(image: np.ndarray, folder: Path, count: int) -> Path:
    """640x480 frames of one face drifting right by 3 pixels a frame."""
    folder.mkdir(parents=True)
    for index in range(count):
        frame = np.full((480, 640, 3), 90, np.uint8)
        x = 100 + 3 * index
        frame[100:350, x : x + 250] = image
        cv2.imwrite(str(folder / f"{index:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder
