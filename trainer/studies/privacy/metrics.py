"""The paper's image measurements (§4.3), on one-channel 8-bit images.

Every function takes ``original`` and ``protected`` as (N, S, S) arrays of grey levels (uint8
or float in 0..255) and returns the mean over the N images unless its name says otherwise.

- PSNR = 10 log10(255^2 / MSE); identical images give +inf, reported as such.
- UACI = mean |original - protected| / 255, in percent (the paper's "unified average changing
  intensity").
- Fuzziness2(s) = 1 - V(protected) / V(original), V = variance of the s x s local means, i.e. of
  the image convolved with the s x s averaging kernel (Eqs. 9-11), 'valid' positions only.
- Fuzziness3 = 1 - SSIM(L(original), L(protected)), L = convolution with the 4-neighbour
  Laplacian kernel [[0,-1,0],[-1,4,-1],[0,-1,0]] (Eq. 13), mirrored borders, float64 (Eqs.
  12-15). SSIM: scikit-image, Wang et al. 2004 settings (Gaussian window sigma 1.5, K1 0.01,
  K2 0.03, population covariance) with ``data_range`` 255 by default, the range of the images
  the Laplacian is taken of; the paper gives none. ``data_range`` sets SSIM's stabilizing
  constants, so it matters here: see the report.
- Adjacent-pixel correlation: ``trainer.metrics.adjacent_correlation`` (paper Table 2).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

LAPLACIAN_KERNEL = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=np.float64)


def _pairs(original: np.ndarray, protected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if original.shape != protected.shape or original.ndim != 3:
        raise ValueError(
            f"expected two (N, S, S) image stacks, got {original.shape} and {protected.shape}"
        )
    return original.astype(np.float64), protected.astype(np.float64)


def psnr(original: np.ndarray, protected: np.ndarray) -> float:
    a, b = _pairs(original, protected)
    mse = ((a - b) ** 2).mean(axis=(1, 2))
    with np.errstate(divide="ignore"):
        return float(np.mean(10 * np.log10(255.0**2 / mse)))


def uaci(original: np.ndarray, protected: np.ndarray) -> float:
    a, b = _pairs(original, protected)
    return float(np.abs(a - b).mean() / 255.0 * 100.0)


def block_mean_variance(image: np.ndarray, block: int) -> float:
    """V(img) of Eq. 9: variance of the s x s local means (valid convolution)."""
    windows = np.lib.stride_tricks.sliding_window_view(image.astype(np.float64), (block, block))
    return float(windows.mean(axis=(-2, -1)).var())


def fuzziness2(original: np.ndarray, protected: np.ndarray, block: int) -> float:
    """Mean over images of 1 - V(protected) / V(original); constant originals are skipped."""
    a, b = _pairs(original, protected)
    values = []
    for first, second in zip(a, b, strict=True):
        reference = block_mean_variance(first, block)
        if reference > 0:
            values.append(1.0 - block_mean_variance(second, block) / reference)
    if not values:
        raise ValueError("Fuzziness2 is undefined: every original image is constant")
    return float(np.mean(values))


def laplacian(image: np.ndarray) -> np.ndarray:
    """Convolution with ``LAPLACIAN_KERNEL``, borders mirrored (d c b | a b c d | c b a)."""
    padded = np.pad(image.astype(np.float64), 1, mode="reflect")
    centre = padded[1:-1, 1:-1]
    neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    return 4 * centre - neighbours


def ssim(first: np.ndarray, second: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM of two 2-D images, Wang et al. 2004 settings."""
    return float(
        structural_similarity(
            first.astype(np.float64),
            second.astype(np.float64),
            data_range=data_range,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def mean_ssim(original: np.ndarray, protected: np.ndarray, data_range: float = 255.0) -> float:
    a, b = _pairs(original, protected)
    return float(np.mean([ssim(x, y, data_range) for x, y in zip(a, b, strict=True)]))


def fuzziness3(original: np.ndarray, protected: np.ndarray, data_range: float = 255.0) -> float:
    a, b = _pairs(original, protected)
    values = [1.0 - ssim(laplacian(x), laplacian(y), data_range) for x, y in zip(a, b, strict=True)]
    return float(np.mean(values))


def grey_histogram(images: np.ndarray) -> np.ndarray:
    """Share of pixels at each of the 256 grey levels (rounded, clipped)."""
    levels = np.clip(np.rint(images), 0, 255).astype(np.int64).ravel()
    return np.bincount(levels, minlength=256) / levels.size


def histogram_entropy(images: np.ndarray) -> float:
    """Mean over images of the Shannon entropy of the grey-level histogram, bits (max 8)."""
    entropies = []
    for image in images:
        share = grey_histogram(image[None])
        share = share[share > 0]
        entropies.append(float(-(share * np.log2(share)).sum()))
    return float(np.mean(entropies))
