"""The Arnold cat map on a square image: pixel (x, y) moves to (x + y, x + 2y) mod S.

A permutation of pixel positions, so the grey-level histogram is unchanged, and periodic:
after ``period(S)`` iterations the image is back (48 for S = 64, 24 for S = 112). Its "key"
is the iteration count, one of ``period(S)`` values, found by trying them all
(``recover_iterations``).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from trainer.studies.privacy.baselines.base import Properties, Protection, grey_pixels


@cache
def _source_index(size: int) -> np.ndarray:
    """Flat index into the input of each output pixel of one forward iteration."""
    y, x = np.mgrid[0:size, 0:size]
    # output (x', y') = (x + y, x + 2y): invert to find the input pixel of each output one
    source_x = (2 * x - y) % size
    source_y = (y - x) % size
    return (source_y * size + source_x).ravel()


def _check_square(images: np.ndarray) -> int:
    if images.ndim < 2 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"the Arnold transform needs square images, got {images.shape}")
    return int(images.shape[-1])


def arnold(images: np.ndarray, iterations: int) -> np.ndarray:
    """Apply ``iterations`` forward steps (negative: inverse steps) to (..., S, S) images."""
    size = _check_square(images)
    index = _source_index(size)
    if iterations < 0:
        inverse = np.empty_like(index)
        inverse[index] = np.arange(index.size)
        index, iterations = inverse, -iterations
    flat = images.reshape(*images.shape[:-2], size * size)
    for _ in range(iterations % period(size)):
        flat = flat[..., index]
    return flat.reshape(images.shape)


@cache
def period(size: int) -> int:
    """Smallest n > 0 with cat-map^n = identity on an S x S grid."""
    index = _source_index(size)
    current, steps = index.copy(), 1
    while not np.array_equal(current, np.arange(index.size)):
        current, steps = current[index], steps + 1
    return steps


def recover_iterations(scrambled: np.ndarray) -> int:
    """Brute-force the key of one Arnold image: the inverse count whose result has the highest
    horizontal adjacent-pixel correlation (natural images are smooth)."""
    size = _check_square(scrambled)
    image = scrambled.astype(np.float64)

    def smoothness(candidate: np.ndarray) -> float:
        left, right = candidate[:, :-1].ravel(), candidate[:, 1:].ravel()
        if left.std() == 0 or right.std() == 0:
            return -1.0
        return float(np.corrcoef(left, right)[0, 1])

    scores = [smoothness(arnold(image, -k)) for k in range(period(size))]
    return int(np.argmax(scores))


class Arnold(Protection):
    properties = Properties("Arnold transform", True, "iteration count", "yes", "weak")

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def protect(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return arnold(grey_pixels(faces), self.iterations)
