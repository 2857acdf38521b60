"""Issue 21: nothing a party without the fleet key can see rebuilds an SN key.

Format-1 bundles published the kernel seed in their signed but unencrypted header. These tests
look at bytes as an attacker does (``tests/key_secrecy.py``): every integer shown, every
architecture, tried as a key. The format-1 control shows the same search finding the key.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rllfpr.keys import bundle, material
from rllfpr.keys.material import FleetKey
from rllfpr.models.scrambler import ScramblerConfig, ScramblerNetwork, random_key_seed
from tests.key_secrecy import (
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


@pytest.mark.integration
@pytest.mark.usefixtures("one_thread")
def test_a_format_1_header_rebuilds_the_key_on_real_faces(data_root: Path) -> None:
    """The measurement of issue 21 at test scale: the seed of a format-1 header plus BatchNorm
    statistics self-learned on other people's faces give wire pixels strongly correlated with
    the real key's; the same search on a format-2 bundle finds nothing (|r| < 0.1)."""
    victims = real_faces(data_root, VICTIMS, 0, SIDE)
    public = real_faces(data_root, 16, 300, SIDE)  # other people, as the attacker has them
    key = ScramblerNetwork(CONFIG, random_key_seed())
    key.self_learn([to_input(real_faces(data_root, 32, 400, SIDE))])
    signing, fleet = Ed25519PrivateKey.generate(), FleetKey.generate()
    legacy = seal_format_1(key, epoch=5, scope="site-a", signing_key=signing, fleet_key=fleet)
    correlation, _ = best_rebuild(harvest([legacy]), CONFIG, public, key, victims)
    assert correlation > 0.5
    correlation, tried = best_rebuild(harvest([sealed_key(key)]), CONFIG, public, key, victims)
    assert tried >= 3  # nonce, key ids: numbers big enough to be seeds, tried as seeds
    assert correlation < 0.1


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
