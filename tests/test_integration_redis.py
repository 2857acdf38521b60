"""Against a real Redis >= 8: vector sets (VADD / VSIM) as the gallery will use them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis

from rllfpr import local_services
from rllfpr.local_services import Endpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_endpoint: Endpoint) -> redis.Redis:
    client = redis.Redis(host=redis_endpoint.host, port=redis_endpoint.port)
    client.flushall()
    return client


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def test_vsim_returns_the_nearest_template_with_its_attributes(store: redis.Redis) -> None:
    rng = np.random.default_rng(0)
    key = "rllfpr:gallery:1"
    vectors = store.vset()
    templates = {f"subject-{i}": unit(rng.standard_normal(512)) for i in range(50)}
    for element, vector in templates.items():
        attributes = {"subject": element, "site": "lobby"}
        assert vectors.vadd(key, vector.tobytes(), element, attributes=attributes) == 1
    assert vectors.vcard(key) == 50
    assert vectors.vdim(key) == 512

    target = "subject-17"
    probe = unit(templates[target] + 0.3 * unit(rng.standard_normal(512)))
    scores = vectors.vsim(key, probe.tobytes(), with_scores=True, count=3, truth=True)
    assert isinstance(scores, dict)
    ranked = sorted(scores.items(), key=lambda item: -item[1])
    assert _name(ranked[0][0]) == target
    assert vectors.vgetattr(key, target) == {"subject": target, "site": "lobby"}

    filtered = vectors.vsim(key, probe.tobytes(), count=1, filter='.subject == "subject-3"')
    assert [_name(element) for element in filtered] == ["subject-3"]


def _name(element: bytes | str) -> str:
    return element.decode() if isinstance(element, bytes) else element


def test_removing_an_element_and_a_whole_epoch(store: redis.Redis) -> None:
    key = "rllfpr:gallery:2"
    vectors = store.vset()
    vector = unit(np.ones(8))
    vectors.vadd(key, vector.tobytes(), "a")
    vectors.vadd(key, (-vector).tobytes(), "b")
    assert vectors.vrem(key, "a") == 1
    assert vectors.vcard(key) == 1
    store.unlink(key)
    assert store.exists(key) == 0


def test_the_redis_that_setup_built_is_found_without_the_environment_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`.venv/bin/rllfpr demo` without sourcing .venv/rllfpr.env: the cache's build is used."""
    real = local_services.find_redis_server()  # the test environment's Redis 8
    build = tmp_path / "redis-8.0.2" / "bin"
    build.mkdir(parents=True)
    (build / "redis-server").symlink_to(real)
    monkeypatch.delenv("RLLFPR_REDIS_SERVER", raising=False)
    monkeypatch.setenv("RLLFPR_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert local_services.find_redis_server() == str(build / "redis-server")
    with local_services.redis_server() as endpoint:
        assert redis.Redis(port=endpoint.port).ping()
    monkeypatch.setenv("RLLFPR_CACHE", str(tmp_path / "empty"))
    with pytest.raises(local_services.ServiceError, match="scripts/setup"):
        local_services.find_redis_server()
