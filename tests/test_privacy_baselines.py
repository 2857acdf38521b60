"""The comparison methods: exact inverses where they exist, and their known weaknesses."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.metrics import adjacent_correlation
from trainer.studies.privacy.baselines.aes import (
    AesCtr,
    AesEcb,
    crypt_ctr,
    decrypt_ecb,
    encrypt_ecb,
)
from trainer.studies.privacy.baselines.arnold import Arnold, arnold, period, recover_iterations
from trainer.studies.privacy.baselines.base import Standardizer, grey_pixels
from trainer.studies.privacy.baselines.eigenfaces import DpEigenfaces, Eigenfaces
from trainer.studies.privacy.baselines.noise import AdditiveNoise
from trainer.studies.privacy.baselines.partialface import (
    PartialFace,
    block_dct,
    block_idct,
    zigzag_order,
)
from trainer.studies.privacy.metrics import grey_histogram

KEY = bytes(range(32))


def faces(count: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth RGB test faces: a vertical gradient plus a blob, varying per face."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        cx, cy = rng.uniform(0.3, 0.7, 2)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.05)
        grey = 40 + 120 * y + 90 * blob
        images.append(np.repeat(grey[..., None], 3, axis=2))
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def test_arnold_inverts_exactly_and_returns_after_its_period() -> None:
    grey = grey_pixels(faces())
    size = grey.shape[-1]
    scrambled = arnold(grey, 5)
    assert not np.array_equal(scrambled, grey)
    assert np.array_equal(arnold(scrambled, -5), grey)
    assert np.array_equal(arnold(grey, period(size)), grey)
    once = grey
    for _ in range(period(size)):
        once = arnold(once, 1)
    assert np.array_equal(once, grey)  # each single step really is one step
    assert period(64) == 48


def test_arnold_keeps_the_histogram_and_its_key_is_found_by_brute_force() -> None:
    grey = grey_pixels(faces())
    protected = Arnold(7).protect(faces(), np.random.default_rng(0))
    assert np.array_equal(grey_histogram(protected), grey_histogram(grey))
    assert all(recover_iterations(image) == 7 for image in protected)


def test_arnold_needs_square_images() -> None:
    with pytest.raises(ValueError, match="square"):
        arnold(np.zeros((4, 6)), 1)


def test_aes_ecb_round_trips_and_leaks_equal_blocks() -> None:
    grey = grey_pixels(faces())
    encrypted = encrypt_ecb(grey, KEY)
    assert np.array_equal(decrypt_ecb(encrypted, KEY), grey)
    flat = np.full((1, 32, 32), 77, np.uint8)
    blocks = encrypt_ecb(flat, KEY).reshape(-1, 16)
    assert len(np.unique(blocks, axis=0)) == 1  # the ECB penguin: equal in, equal out
    assert np.array_equal(AesEcb(KEY).protect(faces(), np.random.default_rng(0)), encrypted)


def test_aes_ctr_ciphertext_is_uncorrelated_and_differs_per_encryption() -> None:
    method = AesCtr(KEY)
    rng = np.random.default_rng(0)
    first, second = method.protect(faces(), rng), method.protect(faces(), rng)
    assert not np.array_equal(first, second)  # a fresh counter block per image
    correlation = adjacent_correlation(first, pairs=3000)
    assert max(abs(v) for v in correlation.values()) < 0.05
    nonce = bytes(16)
    grey = grey_pixels(faces(1))[0]
    assert np.array_equal(crypt_ctr(crypt_ctr(grey, KEY, nonce), KEY, nonce), grey)


def test_aes_refuses_images_that_are_not_whole_blocks() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        encrypt_ecb(np.zeros((1, 5, 5), np.uint8), KEY)


def test_block_dct_round_trips_and_the_zigzag_starts_at_dc() -> None:
    grey = grey_pixels(faces()).astype(np.float64)
    coefficients = block_dct(grey, 8)
    assert coefficients.shape == (6, 4, 4, 8, 8)
    assert np.allclose(block_idct(coefficients), grey)
    assert np.allclose(coefficients[..., 0, 0], grey.reshape(6, 4, 8, 4, 8).mean(axis=(2, 4)) * 8)
    order = zigzag_order(8)
    assert order[0] == (0, 0)
    assert len(set(order)) == 64
    assert {u + v for u, v in order[:10]} == {0, 1, 2, 3}


def test_partialface_removes_low_frequencies() -> None:
    method = PartialFace(block=8, drop_low=10, keep=20, seed=0)
    method.fit(faces())
    protected = method.protect(faces(), np.random.default_rng(1)).astype(np.float64)
    blocks = block_dct(protected - 128.0, 8)  # 128 = the conversion's centre
    low = [blocks[..., u, v] for u, v in zigzag_order(8)[1:10]]
    high = [blocks[..., u, v] for u, v in zigzag_order(8)[10:]]
    assert np.abs(low).mean() < 0.2 * np.abs(high).mean()
    with pytest.raises(ValueError, match="cannot drop"):
        PartialFace(block=4, drop_low=10, keep=10, seed=0)


def test_eigenfaces_reconstruct_and_dp_noise_follows_epsilon() -> None:
    train = faces(12)
    full = Eigenfaces(components=11)
    full.fit(train)
    reconstruction = full.protect(train, np.random.default_rng(0))
    assert np.abs(reconstruction.astype(int) - grey_pixels(train)).max() <= 1
    private = DpEigenfaces(components=5, epsilon=2.0, clip_sigmas=3.0)
    private.fit(train)
    assert private.laplace_scale == pytest.approx(2 * 3.0 * private.component_std.sum() / 2.0)
    rng = np.random.default_rng(0)
    noise = private.project(train, rng) - np.clip(
        Eigenfaces.project(private, train, rng), -private.bounds, private.bounds
    )
    assert noise.std() == pytest.approx(np.sqrt(2) * private.laplace_scale, rel=0.35)


def test_additive_noise_has_the_configured_spread() -> None:
    mid_grey = np.full((20, 32, 32, 3), 128, np.uint8)
    noisy = AdditiveNoise(20.0).protect(mid_grey, np.random.default_rng(0)).astype(np.float64)
    assert noisy.std() == pytest.approx(20.0, rel=0.05)
    assert noisy.mean() == pytest.approx(128.0, abs=1.0)


def test_standardizer_is_the_sn_pixel_conversion() -> None:
    values = np.random.default_rng(0).normal(5.0, 2.0, (10, 8, 8))
    convert = Standardizer()
    convert.fit(values)
    pixels = convert(values).astype(np.float64)
    assert pixels.mean() == pytest.approx(128.0, abs=1.0)
    assert pixels.std() == pytest.approx(32.0, rel=0.05)
