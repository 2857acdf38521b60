"""The paper's image metrics on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.metrics import adjacent_correlation
from trainer.studies.privacy import metrics


def smooth_faces(count: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random images (box-blurred noise): strongly correlated neighbours, like faces."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (count, size + 8, size + 8))
    windows = np.lib.stride_tricks.sliding_window_view(noise, (9, 9), axis=(1, 2))
    blurred = windows.mean(axis=(-2, -1))
    low, high = blurred.min(), blurred.max()
    return np.rint((blurred - low) / (high - low) * 255).astype(np.uint8)


def test_identical_images_are_not_fuzzy_at_all() -> None:
    images = smooth_faces()
    assert metrics.mean_ssim(images, images) == pytest.approx(1.0)
    assert metrics.fuzziness3(images, images) == pytest.approx(0.0, abs=1e-12)
    for block in (4, 8):
        assert metrics.fuzziness2(images, images, block) == pytest.approx(0.0)
    assert metrics.uaci(images, images) == 0.0
    assert math.isinf(metrics.psnr(images, images))


def test_psnr_and_uaci_of_known_offsets() -> None:
    black = np.zeros((2, 8, 8), np.uint8)
    assert metrics.psnr(black, black + 5) == pytest.approx(10 * math.log10(255**2 / 25))
    assert metrics.psnr(black, black + 255) == pytest.approx(0.0)
    assert metrics.uaci(black, black + 51) == pytest.approx(20.0)
    assert metrics.uaci(black, black + 255) == pytest.approx(100.0)


def test_a_constant_protected_image_has_fuzziness2_one() -> None:
    images = smooth_faces()
    flat = np.full_like(images, 128)
    for block in (4, 8):
        assert metrics.fuzziness2(images, flat, block) == pytest.approx(1.0)


def test_a_shifted_image_keeps_its_block_variance_but_not_its_pixels() -> None:
    images = smooth_faces(size=48)
    shifted = np.roll(images, 1, axis=2)
    assert abs(metrics.fuzziness2(images, shifted, 4)) < 0.1
    assert metrics.uaci(images, shifted) > 0.5
    assert metrics.fuzziness3(images, shifted) > 0.05


def test_block_mean_variance_of_a_checkerboard() -> None:
    board = np.indices((8, 8)).sum(axis=0) % 2 * 255.0
    assert metrics.block_mean_variance(board, 2) == pytest.approx(0.0)  # every 2x2 mean is 127.5
    assert metrics.block_mean_variance(board, 1) == pytest.approx(board.var())


def test_laplacian_matches_the_kernel_and_vanishes_on_planes() -> None:
    plane = np.add.outer(np.arange(6.0), 2 * np.arange(6.0))
    assert np.allclose(metrics.laplacian(plane)[1:-1, 1:-1], 0.0)
    impulse = np.zeros((5, 5))
    impulse[2, 2] = 1.0
    assert np.array_equal(metrics.laplacian(impulse)[1:4, 1:4], metrics.LAPLACIAN_KERNEL)


def test_noise_is_fuzzier_than_the_face_under_fuzziness3() -> None:
    images = smooth_faces()
    noise = np.random.default_rng(1).integers(0, 256, images.shape).astype(np.uint8)
    assert metrics.fuzziness3(images, noise) > 0.9
    # a larger data_range enlarges SSIM's constants, pulling SSIM towards 1
    assert metrics.fuzziness3(images, noise, 2040.0) < metrics.fuzziness3(images, noise)


def test_adjacent_correlation_of_smooth_and_random_images() -> None:
    smooth = adjacent_correlation(smooth_faces(), pairs=3000)
    # a 9x9 box blur shares 8/9 of its window with a side neighbour, 64/81 with a diagonal one
    assert smooth["horizontal"] > 0.75
    assert smooth["vertical"] > 0.75
    assert smooth["diagonal"] > 0.6
    noise = np.random.default_rng(2).integers(0, 256, (4, 32, 32))
    assert max(abs(v) for v in adjacent_correlation(noise, pairs=3000).values()) < 0.05


def test_histogram_and_its_entropy() -> None:
    flat = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    assert np.allclose(metrics.grey_histogram(flat), 1 / 256)
    assert metrics.histogram_entropy(flat) == pytest.approx(8.0)
    assert metrics.histogram_entropy(np.zeros((1, 4, 4))) == pytest.approx(0.0)


def test_mismatched_stacks_are_refused() -> None:
    with pytest.raises(ValueError, match="image stacks"):
        metrics.psnr(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="constant"):
        metrics.fuzziness2(np.zeros((1, 8, 8)), np.ones((1, 8, 8)), 4)
