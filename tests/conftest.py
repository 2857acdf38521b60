"""Session fixtures: a real Mosquitto and a real Redis >= 8 on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rllfpr import local_services
from rllfpr.local_services import Endpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[Endpoint]:
    with local_services.mosquitto() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def redis_endpoint() -> Iterator[Endpoint]:
    with local_services.redis_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[local_services.RedisCluster]:
    """A Redis 8 Cluster: three primaries, one replica each, on loopback ports."""
    with local_services.redis_cluster(primaries=3, replicas=1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared face datasets (``RLLFPR_DATA``); tests that need them skip without them."""
    root = Path(os.environ.get("RLLFPR_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not (root / "lfw").is_dir():
        pytest.skip(f"face datasets not found at {root} (set RLLFPR_DATA)")
    return root


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings tests must not see the developer's own RLLFPR_* configuration."""
    for name in list(os.environ):
        if name.startswith("RLLFPR_") and name not in {
            "RLLFPR_DATA",
            "RLLFPR_MOSQUITTO",
            "RLLFPR_REDIS_SERVER",
        }:
            monkeypatch.delenv(name)
