"""The throw-away servers the integration tests run on: free ports that stay distinct, and a
start that lost its port to another process tried again on new ones (CI once failed when two
picks returned the same port and a cluster node's bus collided with its own client port)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import paho.mqtt.client as mqtt
import pytest
import redis

from rllfpr import local_services
from rllfpr.local_services import Endpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port bound by this process without listening, like an outgoing connection's:
    a server told to use it exits with "Address already in use", and a connect finds nobody."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def picks_with_taken(
    monkeypatch: pytest.MonkeyPatch, taken: int, tainted_picks: int
) -> list[list[int]]:
    """Make the first ``tainted_picks`` port picks hand out ``taken`` first; the picks are
    recorded and returned."""
    real = local_services.free_ports
    picks: list[list[int]] = []

    def free_ports(count: int) -> list[int]:
        ports = real(count)
        if len(picks) < tainted_picks:
            ports[0] = taken
        picks.append(ports)
        return ports

    monkeypatch.setattr(local_services, "free_ports", free_ports)
    return picks


def test_ports_picked_together_are_distinct_and_free() -> None:
    ports = local_services.free_ports(200)
    assert len(set(ports)) == 200
    for port in ports[:20]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", port))


def mqtt_answers(port: int) -> bool:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    try:
        return client.connect("127.0.0.1", port) == mqtt.MQTT_ERR_SUCCESS
    finally:
        client.disconnect()


SERVERS: dict[str, tuple[Callable[[], AbstractContextManager[Endpoint]], Callable[[int], bool]]] = {
    "mosquitto": (local_services.mosquitto, mqtt_answers),
    "redis": (local_services.redis_server, lambda port: bool(redis.Redis(port=port).ping())),
}


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_a_server_whose_port_was_taken_starts_on_a_new_one(
    server: str, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    start, answers = SERVERS[server]
    picks = picks_with_taken(monkeypatch, taken_port, tainted_picks=1)
    with start() as endpoint:
        assert [pick[0] for pick in picks] == [taken_port, endpoint.port]
        assert answers(endpoint.port)


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_a_port_taken_at_every_attempt_is_a_clear_error(
    server: str, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    start, _ = SERVERS[server]
    picks = picks_with_taken(monkeypatch, taken_port, tainted_picks=local_services.PORT_ATTEMPTS)
    with pytest.raises(local_services.PortTakenError, match="Address already in use"), start():
        pass
    assert len(picks) == local_services.PORT_ATTEMPTS


def test_a_server_that_fails_for_another_reason_is_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    picks = picks_with_taken(monkeypatch, 0, tainted_picks=0)
    bad_config = local_services.mosquitto(extra_config="no_such_option true\n")
    with pytest.raises(local_services.ServiceError) as failure, bad_config:
        pass
    assert not isinstance(failure.value, local_services.PortTakenError)
    assert "no_such_option" in str(failure.value)
    assert len(picks) == 1


def test_a_cluster_whose_bus_port_collides_with_a_node_port_starts_on_new_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CI failure: one node's cluster bus port equal to another node's client port."""
    real = local_services.free_ports
    picks: list[list[int]] = []

    def free_ports(count: int) -> list[int]:
        ports = real(count)
        if not picks:
            ports[-1] = ports[0]  # the last node's bus port is the first node's port
        picks.append(ports)
        return ports

    monkeypatch.setattr(local_services, "free_ports", free_ports)
    with local_services.redis_cluster(primaries=3, replicas=0) as cluster:
        assert len(picks) == 2
        assert cluster.ports == picks[1][:3]
        assert len(cluster.primaries()) == 3
        assert redis.RedisCluster.from_url(cluster.url).ping()
    assert not cluster.alive()
