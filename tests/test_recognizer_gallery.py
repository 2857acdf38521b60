"""The gallery and the audit log against a real Redis 8: sharded search, erasure, retention,
authentication."""

from __future__ import annotations

import ssl
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from recognizer_service.audit import AuditLog
from recognizer_service.decision import Observation
from recognizer_service.gallery import Gallery, RedisClient, Template, connect_redis, shard_of
from recognizer_service.tracks import FaceObservation, TrackId, Tracks
from rllfpr import local_services
from rllfpr.config import RedisSettings
from rllfpr.local_services import Endpoint

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["redis", "cluster"])
def client(request: pytest.FixtureRequest) -> RedisClient:
    """The same gallery code against one Redis and against a 3-primary Redis Cluster, chosen
    by configuration (``redis.cluster``) as the service chooses it."""
    if request.param == "redis":
        endpoint: Endpoint = request.getfixturevalue("redis_endpoint")
        url, cluster = f"redis://{endpoint.host}:{endpoint.port}/0", False
    else:
        url, cluster = request.getfixturevalue("redis_cluster").url, True
    return connect_redis(RedisSettings(url=url, cluster=cluster))


def all_keys(client: RedisClient, pattern: str) -> list[Any]:
    """KEYS on every primary (a cluster client asks one node by default)."""
    if isinstance(client, redis.RedisCluster):
        return list(client.keys(pattern, target_nodes=redis.RedisCluster.PRIMARIES))
    return list(client.keys(pattern))


def gallery(client: RedisClient, **options: object) -> Gallery:
    return Gallery(client, prefix=f"t{uuid.uuid4().hex[:8]}", **options)  # type: ignore[arg-type]


def unit_rows(rng: np.random.Generator, count: int, dim: int = 32) -> np.ndarray:
    rows = rng.standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_sharded_search_merges_to_the_exact_top_templates(client: RedisClient) -> None:
    store = gallery(client, shards=4, quantization="NOQUANT", search_count=5, search_ef=500)
    rng = np.random.default_rng(0)
    templates = unit_rows(rng, 120)
    for index, vector in enumerate(templates):
        store.enroll("fleet", 1, f"s{index % 40}", f"t{index}", vector, "lobby", NOW)
    assert store.size("fleet", 1) == 120
    assert {shard_of(f"t{i}", 4) for i in range(120)} == {0, 1, 2, 3}
    probes = unit_rows(rng, 10)
    results = store.search("fleet", 1, probes)
    exact = probes @ templates.T
    for probe_scores, hits in zip(exact, results, strict=True):
        best = np.argsort(-probe_scores)[:5]
        assert [hit.template_id for hit in hits] == [f"t{i}" for i in best]
        assert [hit.subject for hit in hits] == [f"s{i % 40}" for i in best]
        assert [hit.score for hit in hits] == pytest.approx(probe_scores[best], abs=1e-4)


def test_search_of_an_empty_or_missing_gallery_finds_nothing(client: RedisClient) -> None:
    store = gallery(client, shards=3)
    assert store.search("fleet", 9, unit_rows(np.random.default_rng(1), 2)) == [[], []]


def test_erasing_a_subject_removes_every_template_in_every_shard_and_epoch(
    client: RedisClient,
) -> None:
    store = gallery(client, shards=3)
    rng = np.random.default_rng(2)
    for epoch in (1, 2):
        for index, vector in enumerate(unit_rows(rng, 9)):
            subject = "alice" if index < 6 else "bob"
            store.enroll("fleet", epoch, subject, f"e{epoch}-{index}", vector, "lobby", NOW)
    assert store.subjects("fleet", 1) == {"alice": 6, "bob": 3}
    assert store.erase("alice") == 12
    for epoch in (1, 2):
        assert store.subjects("fleet", epoch) == {"bob": 3}
        assert store.size("fleet", epoch) == 3
        hits = store.search("fleet", epoch, unit_rows(rng, 1))[0]
        assert {hit.subject for hit in hits} == {"bob"}
    assert store.erase("nobody") == 0


def test_an_erasure_racing_an_enrollment_leaves_no_template_behind(client: RedisClient) -> None:
    """Enrollment writes the subject's index, then the vector set, then checks the index: an
    erasure that ran in between (it found the index entry, but no vector yet) must not leave
    the vector behind, unindexed and so beyond the reach of any later erasure."""

    class Racing(Gallery):
        raced = False

        def _vadd(self, *arguments: Any) -> list[Any]:
            if not self.raced:  # between the index write and the VADD
                self.raced = True
                assert self.erase("alice") == 1
            return super()._vadd(*arguments)

    store = Racing(client, prefix=f"t{uuid.uuid4().hex[:8]}", shards=3)
    vector = unit_rows(np.random.default_rng(8), 1)[0]
    store.enroll("fleet", 1, "alice", "t1", vector, "lobby", NOW)
    assert store.raced
    assert store.size("fleet", 1) == 0
    assert store.subjects("fleet", 1) == {}
    assert store.search("fleet", 1, [vector]) == [[]]


def test_enroll_many_writes_a_batch_in_a_few_round_trips(client: RedisClient) -> None:
    store = gallery(client, shards=3, max_templates_per_subject=2)
    vectors = unit_rows(np.random.default_rng(9), 5)
    results = store.enroll_many(
        "fleet",
        1,
        [
            Template("alice" if i < 3 else "bob", f"t{i}", v, "lobby", NOW + timedelta(seconds=i))
            for i, v in enumerate(vectors)
        ],
    )
    assert [(r.template_id, r.subject) for r in results] == [
        (f"t{i}", "alice" if i < 3 else "bob") for i in range(5)
    ]
    assert sum(r.evicted for r in results) == 1  # alice's oldest, beyond the limit of 2
    assert store.subjects("fleet", 1) == {"alice": 2, "bob": 2}
    assert store.size("fleet", 1) == 4
    assert store.enroll_many("fleet", 1, []) == []


def test_a_gallery_survives_a_redis_crash_with_its_append_only_file(tmp_path: Path) -> None:
    """deploy/redis/redis.conf keeps an AOF. Redis 8.0.2 cannot replay ``VADD ... CAS`` from
    it (assertion at aof.c:1653, the server never starts again), so enrollment writes no CAS;
    the soak benchmark's first Redis kill found it."""
    binary = local_services._find_binary("RLLFPR_REDIS_SERVER", "redis-server")
    port = local_services.free_port()
    log = tmp_path / "redis.log"
    arguments = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    arguments += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    arguments += ["--logfile", str(log)]
    endpoint = Endpoint("127.0.0.1", port)

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL)
        local_services._wait_for_port(endpoint, process, log)  # raises if it dies loading
        return process

    process = start()
    try:
        store = Gallery(redis.Redis(port=port), shards=2)
        for index, vector in enumerate(unit_rows(np.random.default_rng(10), 8)):
            store.enroll("fleet", 1, f"s{index % 2}", f"t{index}", vector, "lobby", NOW)
        process.kill()
        process.wait()
        process = start()
        assert store.size("fleet", 1) == 8
        assert store.subjects("fleet", 1) == {"s0": 4, "s1": 4}
        assert "ASSERTION FAILED" not in log.read_text()
    finally:
        process.kill()
        process.wait()


def test_the_per_subject_limit_evicts_the_oldest_templates(client: RedisClient) -> None:
    store = gallery(client, shards=2, max_templates_per_subject=3)
    vectors = unit_rows(np.random.default_rng(3), 5)
    evicted = [
        store.enroll("fleet", 1, "alice", f"t{i}", v, "lobby", NOW + timedelta(minutes=i)).evicted
        for i, v in enumerate(vectors)
    ]
    assert evicted == [0, 0, 0, 1, 1]
    kept = sorted(a["template_id"] for a in store.attributes("fleet", 1, "alice"))
    assert kept == ["t2", "t3", "t4"]
    assert store.size("fleet", 1) == 3


def test_enrolling_the_same_template_twice_stores_it_once(client: RedisClient) -> None:
    store = gallery(client)
    vector = unit_rows(np.random.default_rng(4), 1)[0]
    for _ in range(2):
        store.enroll("fleet", 1, "alice", "same-id", vector, "lobby", NOW)
    assert store.subjects("fleet", 1) == {"alice": 1}
    assert store.attributes("fleet", 1, "alice") == [
        {
            "template_id": "same-id",
            "subject": "alice",
            "site": "lobby",
            "enrolled_at": NOW.isoformat(),
        }
    ]


def test_retention_deletes_templates_older_than_the_cutoff(client: RedisClient) -> None:
    store = gallery(client, shards=2)
    vectors = unit_rows(np.random.default_rng(5), 4)
    for index, vector in enumerate(vectors):
        subject = "alice" if index < 3 else "bob"
        store.enroll("fleet", 1, subject, f"t{index}", vector, "lobby", NOW - timedelta(days=index))
    assert store.expire(NOW - timedelta(days=1, hours=12)) == 2  # t2 (alice) and t3 (bob)
    assert store.subjects("fleet", 1) == {"alice": 2}


def test_dropping_an_epoch_deletes_its_whole_gallery(client: RedisClient) -> None:
    store = gallery(client, shards=2)
    rng = np.random.default_rng(6)
    for epoch in (1, 2):
        for index, vector in enumerate(unit_rows(rng, 4)):
            store.enroll("fleet", epoch, f"s{index}", f"{epoch}-{index}", vector, "lobby", NOW)
    assert store.drop("fleet", 1) == 4
    assert store.galleries() == [("fleet", 2)]
    assert all_keys(client, f"{store.prefix}:*fleet:1*") == []
    assert all_keys(client, f"{store.prefix}:*fleet:2*") != []
    assert store.size("fleet", 2) == 4


def test_audit_log_records_trims_by_age_and_caps_its_length(client: RedisClient) -> None:
    audit = AuditLog(client, prefix=f"t{uuid.uuid4().hex[:8]}", max_entries=100)
    old_id = "1000-0"  # 1970: older than any retention
    client.xadd(audit.key, {"action": "enroll", "actor": "test"}, id=old_id)
    audit.record("erase", "http:abc@127.0.0.1", subject="alice", templates=3, scope=None)
    newest = audit.recent(10)
    assert newest[0]["action"] == "erase"
    assert newest[0]["subject"] == "alice"
    assert "scope" not in newest[0]
    assert audit.trim() == 1
    assert [entry["action"] for entry in audit.recent(10)] == ["erase"]
    for index in range(300):
        audit.record("search", "recognizer", event=index)
    assert client.xlen(audit.key) < 300  # approximate MAXLEN trimming


def test_connecting_to_a_password_protected_redis() -> None:
    with local_services.redis_server(password="s3cret-pass") as endpoint:
        url = f"redis://{endpoint.host}:{endpoint.port}/0"
        assert connect_redis(RedisSettings(url=url, password="s3cret-pass")).ping()
        with pytest.raises(redis.AuthenticationError):
            connect_redis(RedisSettings(url=url)).vset().vcard("x")
        with pytest.raises(redis.AuthenticationError):
            connect_redis(RedisSettings(url=url, password="wrong")).ping()


def test_tls_settings_reach_the_client() -> None:
    settings = RedisSettings(url="rediss://gallery.example:6380/0", ca_file="/etc/rllfpr/ca.crt")
    client = connect_redis(settings)
    assert isinstance(client, redis.Redis)
    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/rllfpr/ca.crt"
    assert pool.connection_kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_the_shipped_redis_acl_lets_the_recognizer_do_its_work(redis_endpoint: Endpoint) -> None:
    """deploy/redis/users.acl: every operation of the gallery, the tracks and the audit log
    succeeds as user ``rllfpr``, and keys outside ``rllfpr:*`` stay out of reach."""
    text = (Path(__file__).resolve().parents[1] / "deploy" / "redis" / "users.acl").read_text()
    line = next(row for row in text.splitlines() if row.startswith("user rllfpr "))
    rules = [rule for rule in line.split()[2:] if not rule.startswith("#")]
    admin = redis.Redis(host=redis_endpoint.host, port=redis_endpoint.port)
    user = f"rllfpr-{uuid.uuid4().hex[:6]}"
    admin.execute_command("ACL", "SETUSER", user, "reset", *rules, ">acl-test-password")
    client = redis.Redis(
        host=redis_endpoint.host,
        port=redis_endpoint.port,
        username=user,
        password="acl-test-password",
    )
    store, audit = Gallery(client, shards=2), AuditLog(client)
    tracks = Tracks(client, consensus_faces=2, consensus_timeout_ms=1)
    vector = unit_rows(np.random.default_rng(7), 1)[0]
    store.enroll("fleet", 1, "alice", "t1", vector, "lobby", NOW)
    assert store.search("fleet", 1, [vector])[0][0].subject == "alice"
    assert store.attributes("fleet", 1, "alice")[0]["site"] == "lobby"
    assert store.expire(NOW - timedelta(days=1)) == 0
    observation = FaceObservation("m1", NOW, "fleet", 1, Observation({"alice": 0.9}))
    tracks.observe_many([(TrackId("lobby", "cam-0", "agent-1", 1), observation)])
    time.sleep(0.01)  # past the round's 1 ms timeout
    assert tracks.sweep()
    audit.record("erase", "test", subject="alice")
    assert audit.trim() == 0
    assert store.erase("alice") == 1
    assert store.drop("fleet", 1) == 0
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("elsewhere", 1)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()
