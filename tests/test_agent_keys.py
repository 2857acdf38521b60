"""The agent's key manager without a broker: staging, activation, replays, revocation."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.agent import Agent
from edge_agent.backends import TorchBackend
from edge_agent.keys import AgentKeys
from edge_agent.metrics import AgentMetrics
from edge_agent.sources import Frame
from rllfpr.keys.material import KeyMaterialError
from rllfpr.local_services import free_port
from rllfpr.models.scrambler import ScramblerNetwork
from rllfpr.wire.messages import KeyState, utc_now
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
from tests.support.mqtt import wait_until
from trainer.studies.privacy.attacks.key_rebuild import seal_format_1

FACES = np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)


@functools.cache
def network(seed: int) -> ScramblerNetwork:
    return self_learned(SMALL_SN, seed, FACES)


def handled(metrics: AgentMetrics) -> float:
    """Key messages applied or refused so far."""
    return sum(
        metrics.value("key_messages", kind=kind, outcome=outcome)
        for kind in ("bundle", "announcement", "revocation", "unknown")
        for outcome in ("applied", "refused")
    )


class Harness:
    """An ``AgentKeys`` on a temporary directory, recording what it told the agent."""

    def __init__(self, factory: KeyFactory, key_dir: Path, accept_format_1: bool = False) -> None:
        self.factory = factory
        self.metrics = AgentMetrics()
        self.changes: list[int | None] = []
        self.revoked: list[int] = []
        settings = factory.settings(key_dir)
        self.keys = AgentKeys(
            settings.model_copy(update={"accept_format_1": accept_format_1}),
            key_dir / "agent",
            lambda net, _engine_dir: TorchBackend(net),
            self.metrics,
            settle_s=0.05,
            on_change=lambda key: self.changes.append(None if key is None else key.epoch),
            on_revoke=self.revoked.append,
        )
        self.keys.start()

    def send(self, *payloads: bytes) -> None:
        before = self.applied_or_refused()
        for payload in payloads:
            self.keys.submit(payload)
        wait_until(lambda: self.applied_or_refused() >= before + len(payloads))

    def applied_or_refused(self) -> float:
        return handled(self.metrics)

    def refused(self, kind: str) -> float:
        return self.metrics.value("key_messages", kind=kind, outcome="refused")

    @property
    def epoch(self) -> int | None:
        key = self.keys.current()
        return None if key is None else key.epoch


@pytest.fixture
def factory(tmp_path: Path) -> KeyFactory:
    return KeyFactory(tmp_path / "trainer")


@pytest.fixture
def harness(factory: KeyFactory, tmp_path: Path) -> Harness:
    return Harness(factory, tmp_path / "keys")


def test_the_sn_comes_from_the_bundle_and_activates_in_any_arrival_order(
    harness: Harness, factory: KeyFactory
) -> None:
    sn = network(1)
    sealed = factory.bundle(sn, epoch=1)
    harness.send(factory.announcement(sealed), sealed)  # retained order is arbitrary
    assert harness.epoch == 1
    key = harness.keys.current()
    assert key is not None
    expected = TorchBackend(sn).scramble(FACES)
    assert np.array_equal(key.backend.scramble(FACES), expected)
    assert harness.changes == [1]
    assert harness.metrics.value("key_epoch") == 1


def test_staged_is_not_active_until_announced(harness: Harness, factory: KeyFactory) -> None:
    sealed = factory.bundle(network(1), epoch=1)
    harness.send(sealed, factory.announcement(sealed, KeyState.STAGED))
    assert harness.epoch is None
    harness.send(factory.announcement(sealed))
    assert harness.epoch == 1


def test_forged_bundles_and_announcements_are_refused(
    harness: Harness, factory: KeyFactory
) -> None:
    impostor = Ed25519PrivateKey.generate()
    forged = factory.bundle(network(1), epoch=1, signer=impostor)
    harness.send(forged, b'{"kind": "nonsense"}', b"RLKB garbage")
    assert harness.epoch is None
    assert harness.refused("bundle") == 1
    assert harness.refused("unknown") == 2
    genuine = factory.bundle(network(2), epoch=2)
    tampered = bytearray(factory.announcement(genuine))
    tampered[tampered.index(b'\\"epoch\\":2') + 10] = ord("3")
    harness.send(genuine, bytes(tampered))
    assert harness.epoch is None
    assert harness.refused("announcement") == 1


def test_stale_bundles_and_replayed_activations_never_roll_back(
    harness: Harness, factory: KeyFactory
) -> None:
    first = factory.bundle(network(1), epoch=1)
    second = factory.bundle(network(2), epoch=2)
    harness.send(first, factory.announcement(first))
    harness.send(second, factory.announcement(second))
    assert harness.epoch == 2
    assert not (harness.keys.state_dir / "bundles" / f"{factory.scope}-1.rlkb").exists()
    old_again = factory.bundle(network(3), epoch=1)  # a new bundle claiming an old epoch
    harness.send(old_again, factory.announcement(old_again), factory.announcement(first))
    assert harness.epoch == 2
    assert harness.refused("bundle") == 1
    assert harness.refused("announcement") == 2


def test_activation_must_name_the_staged_bundle(harness: Harness, factory: KeyFactory) -> None:
    staged = factory.bundle(network(1), epoch=1)
    other = factory.bundle(network(2), epoch=1)  # same epoch, another bundle
    harness.send(staged)
    harness.send(factory.announcement(other))
    assert harness.epoch is None
    assert harness.refused("announcement") == 1


def test_revocation_forgets_the_key_in_memory_and_on_disk(
    harness: Harness, factory: KeyFactory
) -> None:
    sealed = factory.bundle(network(1), epoch=1)
    harness.send(sealed, factory.announcement(sealed))
    state_dir = harness.keys.state_dir
    (harness.keys.engine_dir(1) / "cached.engine").parent.mkdir(parents=True)
    (harness.keys.engine_dir(1) / "cached.engine").write_bytes(b"engine with the weights")
    stored = sorted(p.name for p in state_dir.rglob("*") if p.is_file())
    assert f"{factory.scope}-1.rlkb" in stored
    assert f"active-{factory.scope}.json" in stored
    harness.send(factory.revocation(1))
    assert harness.keys.current() is None
    assert harness.changes == [1, None]
    assert harness.revoked == [1]
    left = sorted(p.name for p in state_dir.rglob("*") if p.is_file())
    assert left == ["keyring.json"]  # only the policy state (epochs and ids, no weights)
    harness.send(sealed, factory.announcement(sealed))  # retained copies come back
    assert harness.keys.current() is None
    assert harness.refused("bundle") == 1


def test_a_restarted_agent_resumes_its_key_without_the_broker(
    factory: KeyFactory, tmp_path: Path
) -> None:
    first = Harness(factory, tmp_path / "keys")
    sealed = factory.bundle(network(1), epoch=1)
    first.send(sealed, factory.announcement(sealed))
    first.keys.close()
    again = Harness(factory, tmp_path / "keys")
    assert again.epoch == 1
    again.send(sealed, factory.announcement(sealed))  # the retained copies: no-ops
    assert again.epoch == 1
    assert again.refused("bundle") == again.refused("announcement") == 0


def test_an_agent_without_key_material_refuses_to_start(tmp_path: Path) -> None:
    factory = KeyFactory(tmp_path / "trainer")
    settings = factory.settings(tmp_path / "keys").model_copy(update={"fleet_key_file": None})
    with pytest.raises(KeyMaterialError, match="fleet_key_file"):
        AgentKeys(settings, tmp_path / "agent", lambda n, _d: TorchBackend(n), AgentMetrics(), 0)


def test_a_backend_that_fails_to_build_is_refused_and_the_keys_keep_flowing(
    factory: KeyFactory, tmp_path: Path
) -> None:
    attempts: list[int] = []

    def flaky(net: ScramblerNetwork, _engine_dir: Path) -> TorchBackend:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("GPU out of memory")
        return TorchBackend(net)

    metrics = AgentMetrics()
    keys = AgentKeys(factory.settings(tmp_path / "keys"), tmp_path / "agent", flaky, metrics, 0.05)
    keys.start()
    first = factory.bundle(network(1), epoch=1)
    keys.submit(first)
    wait_until(lambda: metrics.value("key_messages", kind="bundle", outcome="refused") == 1)
    second = factory.bundle(network(2), epoch=2)
    keys.submit(second)
    keys.submit(factory.announcement(second))
    wait_until(lambda: keys.current() is not None)
    key = keys.current()
    assert key is not None
    assert key.epoch == 2
    keys.close()


def test_a_format_1_bundle_is_refused_unless_accepted_for_the_upgrade(
    factory: KeyFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    production = network(6525962073862236617)  # a 63-bit seed, as rotation draws them
    legacy = seal_format_1(
        production,
        epoch=1,
        scope=factory.scope,
        signing_key=factory.signing_key,
        fleet_key=factory.fleet_key,
    )
    refusing = Harness(factory, tmp_path / "refusing")
    refusing.send(legacy, factory.announcement(legacy))
    assert refusing.refused("bundle") == 1
    assert refusing.epoch is None  # the activation waits for a bundle that never comes
    assert "format 1 is refused" in caplog.text
    assert not list((tmp_path / "refusing").rglob("*.rlkb"))  # nothing kept on disk
    refusing.keys.close()

    caplog.clear()
    upgrading = Harness(factory, tmp_path / "upgrading", accept_format_1=True)
    upgrading.send(legacy, factory.announcement(legacy))
    assert upgrading.epoch == 1
    assert "format-1 bundle, whose seed is public" in caplog.text
    assert str(production.seed) not in caplog.text
    upgrading.keys.close()


def test_a_revocation_during_scrambling_drops_the_batch_it_interrupted(
    factory: KeyFactory, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revocation arrives while a batch is being scrambled and the agent is made to
    linger before spooling it, long enough for an unguarded revocation to complete first. The
    batch must end up dropped with its epoch, not spooled under the revoked key afterwards
    (spooling it after the key was released, as the agent once did, fails here)."""
    settings = agent_settings(free_port(), factory.settings(tmp_path / "keys"), tmp_path)
    photo = lfw_images(data_root, 1, start=60)
    camera = link_folder(photo, tmp_path / "camera")
    agent = Agent(settings, str(camera), detector=shared_detector())  # no broker: not started
    agent.keys.start()
    try:
        sealed = factory.bundle(network(1), epoch=1)
        agent.keys.submit(sealed)
        agent.keys.submit(factory.announcement(sealed))
        wait_until(lambda: handled(agent.metrics) >= 2)
        assert agent.keys.current() is not None
        spooled: list[int] = []
        put = agent.spool.put

        def put_late(topic: str, payload: bytes, expires_at: float, key_epoch: int) -> None:
            if not spooled:  # the revocation gets its chance before the batch is spooled
                agent.keys.submit(factory.revocation(1))
                deadline = time.monotonic() + 1.0
                while handled(agent.metrics) < 3 and time.monotonic() < deadline:
                    time.sleep(0.02)
            spooled.append(key_epoch)
            put(topic, payload, expires_at, key_epoch)

        monkeypatch.setattr(agent.spool, "put", put_late)
        agent.process([Frame(read_rgb(photo[0]), 0, 0, utc_now(), "one face")])
        assert spooled == [1]  # a face was scrambled with epoch 1 and handed to the spool
        wait_until(lambda: handled(agent.metrics) >= 3)
        assert agent.keys.current() is None
        assert agent.spool.depth == 0  # dropped with its epoch: nothing left to publish
        assert agent.spool.dropped() == {"revoked": 1}
    finally:
        agent.close(flush_timeout_s=0)
