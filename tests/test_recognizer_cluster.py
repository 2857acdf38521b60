"""The recognizer against a real Redis Cluster (3 primaries, 1 replica each, on loopback):
the same service code as with one Redis, chosen by ``redis.cluster``. Galleries shard over the
primaries, enrollment and search go through MQTT, erasure reaches every shard and epoch, and a
primary killed mid-stream costs no face and no template."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import torch

from recognizer_service.service import RecognizerService
from rllfpr.config import RedisSettings, Settings
from rllfpr.local_services import Endpoint, RedisCluster
from rllfpr.models.recognizer import Recognizer
from rllfpr.models.store import ModelStore, OpenSetCalibration
from tests.support.recognizer import (
    TINY,
    Client,
    counter,
    covered,
    face,
    image,
    make_settings,
    noisy,
    wait_until,
)
from tests.support.recognizer import client as client  # fixtures
from tests.support.recognizer import model_store as model_store
from tests.support.recognizer import start_service as start_service

pytestmark = pytest.mark.integration
SHARDS = 6
PEOPLE = ["alice", "bob", "carol", "dave"]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with tiny random recognizers for fleet epochs 1 and 2."""
    root = tmp_path_factory.mktemp("cluster-models")
    torch.manual_seed(0)
    for epoch in (1, 2):
        calibration = OpenSetCalibration(threshold=0.95, min_margin=0.0)
        ModelStore(root).publish("fleet", epoch, Recognizer(TINY), calibration)
    return root


def on_cluster(
    broker: Endpoint, cluster: RedisCluster, store: Path, **recognizer: object
) -> Settings:
    settings = make_settings(broker, Endpoint("127.0.0.1", 0), store, **recognizer)
    prefix = settings.redis.key_prefix
    redis_settings = RedisSettings(url=cluster.url, cluster=True, key_prefix=prefix)
    return settings.model_copy(update={"redis": redis_settings})


def primary_of(cluster_client: redis.RedisCluster, key: str) -> int:
    return int(cluster_client.get_node_from_key(key).port)


@pytest.mark.slow
def test_the_recognizer_runs_on_a_redis_cluster_and_survives_a_primary_crash(
    mqtt_broker: Endpoint,
    redis_cluster: RedisCluster,
    two_epochs: Path,
    start_service: Callable[..., RecognizerService],
    client: Client,
) -> None:
    settings = on_cluster(
        mqtt_broker, redis_cluster, two_epochs, shards=SHARDS, max_batch=4, search_count=10
    )
    service = start_service(settings)
    assert isinstance(service.redis, redis.RedisCluster)
    gallery = service.gallery

    # Enrollment through MQTT, under two epochs: the shards spread over the primaries.
    for epoch in (1, 2):
        for number, person in enumerate(PEOPLE):
            for shot in range(3):
                client.publish(*face(noisy(image(number), shot), subject=person, epoch=epoch)[:2])
    wait_until(lambda: counter(service, "rllfpr_templates_enrolled_total") == 24)
    for epoch in (1, 2):
        assert gallery.subjects("fleet", epoch) == dict.fromkeys(PEOPLE, 3)
        assert gallery.size("fleet", epoch) == 12
    shard_keys = [gallery.set_key("fleet", 1, shard) for shard in range(SHARDS)]
    held = [key for key in shard_keys if service.redis.exists(key)]
    assert len({primary_of(service.redis, key) for key in held}) >= 2

    # Search merges the shards' top-k: each person's probe finds that person.
    sent: dict[str, str] = {}
    for number, person in enumerate(PEOPLE):
        topic, payload, message_id = face(noisy(image(number), 50), track=number)
        client.publish(topic, payload)
        sent[message_id] = person
    wait_until(lambda: set(sent) <= covered(client.received()))
    for event in client.received():
        assert (event.decision, event.subject) == ("match", sent[str(event.message_ids[0])])

    # A primary that holds gallery shards is killed mid-stream; its replica takes over.
    victim = primary_of(service.redis, held[0])
    assert redis.Redis(port=victim).execute_command("WAIT", 1, 5000) == 1  # replica caught up
    streamed: set[str] = set()
    for index in range(30):
        if index == 10:
            redis_cluster.kill(victim)
        topic, payload, message_id = face(noisy(image(index % 4), 100 + index), track=10 + index)
        client.publish(topic, payload)
        streamed.add(message_id)
        time.sleep(0.05)
    wait_until(lambda: streamed <= covered(client.received()), timeout_s=60)
    during = [e for e in client.received() if {str(m) for m in e.message_ids} & streamed]
    assert len({e.event_id for e in during}) == len(streamed)  # one event per face, no repeats
    assert victim not in redis_cluster.primaries()
    assert counter(service, "rllfpr_transient_failures_total", component="redis") > 0
    for epoch in (1, 2):  # nothing enrolled was lost with the primary
        assert gallery.size("fleet", epoch) == 12

    # Erasure reaches every shard, on every primary, in every epoch.
    assert service.erase("alice", actor="test") == 6
    for epoch in (1, 2):
        assert gallery.subjects("fleet", epoch) == dict.fromkeys(PEOPLE[1:], 3)
        assert gallery.size("fleet", epoch) == 9
        model = service.models.get("fleet", epoch)
        assert model is not None
        probe = service.models.embed(model, [noisy(image(0), 7)])[0]
        assert "alice" not in {hit.subject for hit in gallery.search("fleet", epoch, [probe])[0]}

    redis_cluster.restart(victim)  # the old primary returns (from its AOF) as a replica
    redis_cluster.wait_healthy()
    assert victim in redis_cluster.alive()
    assert victim not in redis_cluster.primaries()
