"""Issue 21: nothing a party without the fleet key can see rebuilds an SN key.

Format-1 bundles published the kernel seed in their signed but unencrypted header. These tests
look at bytes as an attacker does (``trainer.studies.privacy.attacks.key_rebuild``): every
integer shown, every architecture, tried as a key. The format-1 control shows the same search
finding the key.
"""

from __future__ import annotations

import json
import logging
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from demo.people import Visit
from demo.run import ReplayCamera
from edge_agent.agent import Agent
from enrollment_station.enrollment import ScrambledFace, enrollment_messages
from recognizer_service.api import create_app
from recognizer_service.service import RecognizerService
from rllfpr import mqtt
from rllfpr.config import Settings
from rllfpr.keys import bundle, material
from rllfpr.keys.material import FleetKey
from rllfpr.keys.scrambler_key import open_scrambler_bundle
from rllfpr.local_services import Endpoint, free_port
from rllfpr.models.recognizer import Recognizer, RecognizerConfig
from rllfpr.models.scrambler import ScramblerConfig, ScramblerNetwork, random_key_seed
from rllfpr.models.store import ModelStore, OpenSetCalibration
from rllfpr.wire import topics
from rllfpr.wire.messages import CropBox
from tests.support.agent import KeyFactory, lfw_images, shared_detector
from tests.support.mqtt import Capture, Captured, wait_until
from trainer.metrics import adjacent_correlation
from trainer.rotation import KeyPublisher
from trainer.studies.privacy.attacks.key_rebuild import (
    PLAUSIBLE_SEED,
    best_rebuild,
    harvest,
    leaked,
    real_faces,
    rebuilds_a_kernel,
    seal_format_1,
    secret_fragments,
    to_input,
)

SIDE = 64
# The best |r| of numbers that are no seed of the key is chance, and it grows with the numbers
# tried: a CI run of the deployment test below drew 0.106 over 151 numbers and two random keys.
# A rebuilt key gives 0.5-0.63 (the format-1 test), so a bound of 0.2 is far above chance and far
# below a rebuild.
CHANCE_BOUND = 0.2
# The deployed SN's shape (input low-pass included) with narrower layers, for speed.
CONFIG = ScramblerConfig(widths=(8, 16, 16, 16, 16), input_size=SIDE, input_blur=1.2)
VICTIMS = 128  # people whose faces the key scrambles (LFW, in name order)
PUBLIC_HEADER_FIELDS = {
    "format_version",
    "bundle_id",
    "epoch",
    "scope",
    "created_at",
    "recognizer_id",
    "signer",
    "fleet_key_id",
    "nonce",
}


def sealed_key(network: ScramblerNetwork, epoch: int = 5) -> bytes:
    key = network.key_state()
    return bundle.seal(
        epoch=epoch,
        scope="site-a",
        recognizer_id=f"rec-e{epoch}",
        architecture=key["architecture"],
        state=key["state"],
        signing_key=Ed25519PrivateKey.generate(),
        fleet_key=FleetKey.generate(),
    )


def public_header(data: bytes) -> dict[str, object]:
    """The header as anyone reads it: no key, no library, the documented layout only."""
    magic, version, length = struct.unpack_from(">4sHI", data)
    assert (magic, version) == (b"RLKB", bundle.FORMAT_VERSION)
    document = json.loads(data[10 : 10 + length])
    assert isinstance(document, dict)
    return document


def test_a_public_header_holds_no_seed_and_nothing_that_rebuilds_a_kernel() -> None:
    key = ScramblerNetwork(CONFIG, random_key_seed())
    sealed = sealed_key(key)
    header = public_header(sealed)
    assert set(header) == PUBLIC_HEADER_FIELDS
    assert set(bundle.read_header(sealed).model_dump()) == PUBLIC_HEADER_FIELDS
    for word in (b"seed", b"architecture", b"scrambler", b"widths", b"input_blur"):
        assert word not in sealed
    assert leaked(sealed, secret_fragments(key)) == []
    found = harvest([sealed])
    assert len(found.seeds) > 10  # epoch, dates, ids, nonce, key ids: all tried as seeds
    assert not rebuilds_a_kernel(found, CONFIG, key)


def test_the_same_search_rebuilds_the_key_from_a_format_1_header() -> None:
    """The control: with the old format, the search above finds the seed and every kernel."""
    key = ScramblerNetwork(CONFIG, random_key_seed())
    legacy = seal_format_1(
        key,
        epoch=5,
        scope="site-a",
        signing_key=Ed25519PrivateKey.generate(),
        fleet_key=FleetKey.generate(),
    )
    assert "seed (decimal)" in leaked(legacy, secret_fragments(key))
    found = harvest([legacy])
    assert key.seed in found.seeds
    assert CONFIG in found.architectures
    assert rebuilds_a_kernel(found, ScramblerConfig(), key)  # even a wrong guess of the SN


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Many small SNs: threads only contend, on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.usefixtures("one_thread")
def test_a_format_1_header_rebuilds_the_key_on_real_faces(data_root: Path) -> None:
    """The measurement of issue 21 at test scale: the seed of a format-1 header plus BatchNorm
    statistics self-learned on other people's faces give wire pixels strongly correlated with
    the real key's; the same search on a format-2 bundle finds nothing (|r| at chance)."""
    victims = real_faces(data_root, VICTIMS, 0, SIDE)
    public = real_faces(data_root, 16, 300, SIDE)  # other people, as the attacker has them
    key = screened_key(data_root)
    signing, fleet = Ed25519PrivateKey.generate(), FleetKey.generate()
    legacy = seal_format_1(key, epoch=5, scope="site-a", signing_key=signing, fleet_key=fleet)
    [correlation], _ = best_rebuild(harvest([legacy]), CONFIG, public, [key], victims)
    # each run draws its own production key: over 12 draws r ranged 0.505-0.631 and one CI
    # run drew 0.499, so the bound sits below that spread and far above format 2's chance bound
    assert correlation > 0.4
    [correlation], tried = best_rebuild(harvest([sealed_key(key)]), CONFIG, public, [key], victims)
    assert tried >= 1  # the bundle id, key ids: numbers big enough to be seeds, tried as seeds
    assert correlation < CHANCE_BOUND


def test_decrypted_key_material_stays_out_of_reprs_and_errors() -> None:
    key = ScramblerNetwork(CONFIG, random_key_seed())
    signing, fleet = Ed25519PrivateKey.generate(), FleetKey.generate()
    state = key.key_state()
    sealed = bundle.seal(
        epoch=1,
        scope="fleet",
        recognizer_id="r1",
        architecture=state["architecture"],
        state=state["state"],
        signing_key=signing,
        fleet_key=fleet,
    )
    trusted = {material.signer_id(signing.public_key()): signing.public_key()}
    opened = bundle.open_bundle(sealed, trusted, {fleet.key_id: fleet})
    assert opened.architecture["seed"] == key.seed
    assert str(key.seed) not in repr(opened)
    assert "running_mean" not in repr(opened)
    for seed in (-key.seed, key.seed + 2**63):
        broken = {"scrambler": state["architecture"]["scrambler"], "seed": seed}
        with pytest.raises(ValueError, match="architecture at seed") as caught:
            ScramblerNetwork.from_key_state(broken, state["state"])
        assert str(abs(seed)) not in str(caught.value)
        assert caught.value.__cause__ is None  # pydantic's message would quote the input
    with pytest.raises(ValueError, match="key seed is an integer") as caught:
        ScramblerNetwork(CONFIG, 2**63 + key.seed)
    assert str(2**63 + key.seed) not in str(caught.value)
    assert np.array_equal(opened.state["head.weight"], state["state"]["head.weight"])


def production_seed() -> int:
    """A seed as rotation draws them, at least 2**32 so that the attack tries it (below that
    a seed is checked for kernels only, ``trainer.studies.privacy.attacks.key_rebuild``)."""
    while (seed := random_key_seed()) < PLAUSIBLE_SEED:
        pass
    return seed


def screened_key(data_root: Path) -> ScramblerNetwork:
    """A key as rotation makes them: a 63-bit seed, BatchNorm self-learned on corpus faces, and
    redrawn until its output passes the key screen (|adjacent-pixel r| <= 0.1). Keys that miss
    the screen also share more with unrelated keys: |r| up to 0.13 against one of 30 random
    seeds, where keys that pass stay within 0.05."""
    corpus = to_input(real_faces(data_root, 32, 400, SIDE))
    held_out = to_input(real_faces(data_root, 64, 600, SIDE))
    for _ in range(50):
        key = ScramblerNetwork(CONFIG, production_seed())
        key.self_learn([corpus])
        if (
            max(abs(r) for r in adjacent_correlation(key.scramble(held_out).numpy()).values())
            <= 0.1
        ):
            return key
    raise AssertionError("no key of 50 passed the screen")


class Everything:
    """Every message on the broker while it runs ('#', live), then the retained ones as a
    subscriber arriving last sees them."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.live = Capture(endpoint)

    def retained(self) -> list[Captured]:
        late = Capture(self.endpoint)
        time.sleep(1.0)  # retained messages come right after the subscription
        late.close()
        return [m for m in late.messages if m.retain]


def redis_dump(endpoint: Endpoint, prefix: str) -> list[bytes]:
    """What the Redis host holds for this deployment: every key's serialized value."""
    client = redis.Redis(host=endpoint.host, port=endpoint.port)
    try:
        return [key + b"\0" + (client.dump(key) or b"") for key in client.scan_iter(f"{prefix}*")]
    finally:
        client.close()


def files_under(*roots: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for root in roots for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.usefixtures("one_thread")
def test_nothing_a_party_without_the_fleet_key_sees_rebuilds_a_key(
    mqtt_broker: Endpoint,
    redis_endpoint: Endpoint,
    data_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A running deployment: the trainer stages, activates and revokes key epochs, an agent
    scrambles LFW photos, a station enrolls, the recognizer decides and serves its API, the
    agent loses its connection (last will). Then everything a party without the fleet key can
    read (every MQTT message, live and retained; the model store, the Redis data, every log
    line, the metrics and the HTTP API of the recognizer host) holds no byte of either key and
    no number that rebuilds one: every number found, tried as a seed with every architecture
    found and the public one, gives |r| at chance (``CHANCE_BOUND``) against the real keys' wire
    pixels."""
    caplog.set_level(logging.DEBUG)
    factory = KeyFactory(tmp_path / "trainer")
    site = f"s{uuid.uuid4().hex[:8]}"
    prefix = f"secrecy{site}"
    store = ModelStore(tmp_path / "models")
    keys = {epoch: screened_key(data_root) for epoch in (1, 2)}
    sealed = {}
    for epoch, network in keys.items():
        recognizer = Recognizer(RecognizerConfig(backbone="compact", input_size=SIDE))
        info = store.publish(
            factory.scope, epoch, recognizer.eval(), OpenSetCalibration(threshold=0.5)
        )
        state = network.key_state()
        sealed[epoch] = bundle.seal(
            epoch=epoch,
            scope=factory.scope,
            recognizer_id=info.recognizer_id,
            architecture=state["architecture"],
            state=state["state"],
            signing_key=factory.signing_key,
            fleet_key=factory.fleet_key,
        )
    settings = Settings.model_validate(
        {
            "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port},
            "redis": {
                "url": f"redis://{redis_endpoint.host}:{redis_endpoint.port}/0",
                "key_prefix": prefix,
            },
            "keys": factory.settings(tmp_path / "keys").model_dump(),
            "recognizer": {
                "scopes": [factory.scope],
                "model_store": str(store.root),
                "device": "cpu",
                "group": f"g{site}",
                "consensus_faces": 1,
                "api_token": "secrecy-test-token",
            },
            "agent": {
                "id": f"agent-{site}",
                "site": site,
                "camera": "cam",
                "detect_every": 1,
                "min_sharpness": 0.0,
                "min_detection_score": 0.9,
                "max_messages_per_track": 1,
                "spool_dir": str(tmp_path / "spool"),
                "metrics_port": free_port(),
                "key_settle_s": 0.1,
            },
        }
    )
    broker = Everything(mqtt_broker)
    trainer = mqtt.make_client(settings.mqtt, "t", client_id=f"t-{site}")
    mqtt.connect(trainer, settings.mqtt, clean_start=True)
    publisher = KeyPublisher(trainer, factory.signing_key)
    publisher.stage(sealed[1])
    publisher.activate(sealed[1], 1)
    service = RecognizerService(settings, client_id=f"r-{site}")
    service.start()
    photos = lfw_images(data_root, 4, start=40)
    camera = ReplayCamera([[Visit(p.parent.name, (p,), True) for p in photos]], fps=20)
    agent = Agent(settings, camera, detector=shared_detector())
    try:
        station_key = open_scrambler_bundle(sealed[1], settings.keys)
        faces = [
            ScrambledFace(
                Path("x.jpg"),
                pixels,
                0.99,
                CropBox(x=0, y=0, width=8, height=8, frame_width=8, frame_height=8),
            )
            for pixels in station_key.network.scramble(
                to_input(real_faces(data_root, 2, 500, SIDE))
            ).numpy()
        ]
        for topic, payload in enrollment_messages(faces, station_key, "subject-a", site, "station"):
            trainer.publish(topic, payload, qos=1).wait_for_publish(5)
        wait_until(lambda: service.gallery.size(factory.scope, 1) >= 2, 30)
        agent.start()
        assert agent.wait_for_key(20)
        agent.run()
        assert agent.drain(30)
        wait_until(lambda: len(broker.live.on(f"{topics.ROOT}/events/{site}/")) >= 1, 30)
        connection = agent.link.client.socket()
        assert connection is not None
        connection.close()  # the connection drops: the broker sends the will
        wait_until(
            lambda: any(
                b'"offline"' in m.payload
                for m in broker.live.on(topics.agent_status(agent.who.agent))
            ),
            30,
        )
        publisher.stage(sealed[2])
        publisher.activate(sealed[2], 0)
        wait_until(lambda: (k := agent.keys.current()) is not None and k.epoch == 2, 30)
        publisher.revoke(factory.scope, 1)
        wait_until(lambda: service.models.get(factory.scope, 1) is None, 30)
        api = TestClient(create_app(service))
        token = {"Authorization": "Bearer secrecy-test-token"}
        answers = [
            api.get(path, headers=token).content
            for path in (
                "/healthz",
                "/readyz",
                "/metrics",
                "/v1/models",
                "/v1/galleries",
                f"/v1/galleries/{factory.scope}/2/subjects",
                "/v1/audit",
            )
        ]
        metrics = [
            generate_latest(agent.metrics.registry),
            generate_latest(service.metrics.registry),
        ]
    finally:
        agent.close()
        service.stop()
        trainer.disconnect()
        trainer.loop_stop()
    retained = broker.retained()
    broker.live.close()

    messages = broker.live.messages + retained
    seen = {m.topic.split("/")[2] for m in messages if m.topic.startswith(f"{topics.ROOT}/")}
    assert {"faces", "enroll", "events", "keys", "agents"} <= seen  # every kind of payload
    key_topics = {
        m.topic.rsplit("/", 2)[-2] for m in messages if f"/keys/{factory.scope}/" in m.topic
    }
    assert key_topics == {"bundles", "announcements", "revocations"}
    assert any(b'"connection lost"' in m.payload for m in messages)  # the last will
    assert all(
        bundle.read_header(m.payload).format_version == 2
        for m in messages
        if m.payload.startswith(b"RLKB")
    )

    sources = {
        "broker": [m.topic.encode() + b"\0" + m.payload for m in messages],
        "model store": list(files_under(store.root).values()),
        "redis": redis_dump(redis_endpoint, prefix),
        "logs": [record.getMessage().encode() for record in caplog.records]
        + [caplog.text.encode()],
        "metrics and API": metrics + answers,
    }
    assert all(sources.values())
    for epoch, network in keys.items():
        fragments = secret_fragments(network)
        for source, blobs in sources.items():
            found = [name for blob in blobs for name in leaked(blob, fragments)]
            assert found == [], f"key {epoch}: {found} in the {source}"
    visible = harvest(blob for blobs in sources.values() for blob in blobs)
    victims = real_faces(data_root, VICTIMS, 0, SIDE)
    public = real_faces(data_root, 16, 300, SIDE)
    for epoch, network in keys.items():
        assert not rebuilds_a_kernel(visible, CONFIG, network), f"key {epoch}"
    correlations, tried = best_rebuild(visible, CONFIG, public, list(keys.values()), victims)
    assert tried >= 20, tried
    assert max(correlations) < CHANCE_BOUND, (correlations, tried)
