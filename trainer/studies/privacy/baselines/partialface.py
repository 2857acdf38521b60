"""PartialFace-style frequency protection (after Mi et al., ICCV 2023).

The grey face is cut into B x B blocks and each block DCT-transformed (orthonormal DCT-II),
giving B^2 frequency channels. The ``drop_low`` lowest channels in zig-zag order (the DC term
and the coarse shading that carries most visual appearance) are removed; of the remaining
high-frequency channels, a random subset of ``keep`` is kept per image and the rest zeroed.
The protected image is the inverse DCT of what is kept, put through the SN's fixed pixel
conversion (standardized with statistics of training outputs), so the recognizer sees an
ordinary one-channel image.
"""

from __future__ import annotations

import numpy as np

from trainer.studies.privacy.baselines.base import Properties, Protection, Standardizer, grey_pixels


def zigzag_order(block: int) -> list[tuple[int, int]]:
    """(u, v) frequency positions of a block in JPEG zig-zag order, lowest first."""
    cells = [(u, v) for u in range(block) for v in range(block)]
    return sorted(cells, key=lambda c: (c[0] + c[1], c[1] if (c[0] + c[1]) % 2 else c[0]))


def dct_matrix(block: int) -> np.ndarray:
    """Orthonormal DCT-II matrix D: coefficients = D @ block @ D.T, block = D.T @ c @ D."""
    k, n = np.mgrid[0:block, 0:block]
    matrix = np.cos(np.pi * (2 * n + 1) * k / (2 * block)) * np.sqrt(2.0 / block)
    matrix[0] /= np.sqrt(2.0)
    return matrix


def block_dct(images: np.ndarray, block: int) -> np.ndarray:
    """(N, S, S) -> (N, S/B, S/B, B, B) DCT coefficients of every block."""
    n, size, _ = images.shape
    if size % block:
        raise ValueError(f"image side {size} is not a multiple of the DCT block {block}")
    grid = size // block
    blocks = images.reshape(n, grid, block, grid, block).transpose(0, 1, 3, 2, 4)
    matrix = dct_matrix(block)
    return matrix @ blocks.astype(np.float64) @ matrix.T


def block_idct(coefficients: np.ndarray) -> np.ndarray:
    n, grid, _, block, _ = coefficients.shape
    matrix = dct_matrix(block)
    blocks = matrix.T @ coefficients @ matrix
    return blocks.transpose(0, 1, 3, 2, 4).reshape(n, grid * block, grid * block)


class PartialFace(Protection):
    properties = Properties("PartialFace-style (DCT)", True, "none", "partly", "no")

    def __init__(self, block: int, drop_low: int, keep: int, seed: int) -> None:
        if drop_low + keep > block * block:
            raise ValueError(f"cannot drop {drop_low} and keep {keep} of {block * block} channels")
        self.block, self.drop_low, self.keep = block, drop_low, keep
        self.high = zigzag_order(block)[drop_low:]
        self.standardizer = Standardizer()
        self._fit_rng = np.random.default_rng(seed)

    def _high_pass(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        coefficients = block_dct(grey_pixels(faces), self.block)
        mask = np.zeros((len(faces), self.block, self.block))
        for row in mask:
            chosen = rng.choice(len(self.high), self.keep, replace=False)
            for index in chosen:
                row[self.high[index]] = 1.0
        return block_idct(coefficients * mask[:, None, None])

    def fit(self, train_faces: np.ndarray) -> None:
        self.standardizer.fit(self._high_pass(train_faces, self._fit_rng))

    def protect(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.standardizer(self._high_pass(faces, rng))
