"""Unlinkability across keys: Gomez-Barrero et al., "General framework to evaluate
unlinkability in biometric template protection systems", IEEE TIFS 13(6), 2018.

Mated scores compare two protected templates of the same person made with different keys;
non-mated scores, templates of different people. With the score densities p(s|Hm), p(s|Hnm)
estimated by histograms on shared bins and the prior ratio omega = p(Hm)/p(Hnm) (1 here),

    D<->(s) = 2 LR(s) omega / (1 + LR(s) omega) - 1   where LR(s) omega > 1, else 0,
    D<->sys = sum over bins of p(s|Hm) D<->(s),

from 0 (fully unlinkable: the two distributions coincide) to 1 (fully linkable: disjoint).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Linkability:
    d_sys: float
    edges: np.ndarray  # bin edges of the score axis
    local: np.ndarray  # D<->(s) per bin
    mated_density: np.ndarray  # p(s|Hm) per bin, sums to 1
    non_mated_density: np.ndarray
    mated_count: int


def linkability(
    mated: np.ndarray, non_mated: np.ndarray, bins: int = 100, prior_ratio: float = 1.0
) -> Linkability:
    if len(mated) == 0 or len(non_mated) == 0:
        raise ValueError("D<->sys needs mated and non-mated scores")
    low = float(min(mated.min(), non_mated.min()))
    high = float(max(mated.max(), non_mated.max()))
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    p_mated = np.histogram(mated, edges)[0] / len(mated)
    p_non_mated = np.histogram(non_mated, edges)[0] / len(non_mated)
    with np.errstate(divide="ignore", invalid="ignore"):
        odds = prior_ratio * p_mated / p_non_mated  # inf where only mated scores fall
        local = np.where(odds > 1, 2 * odds / (1 + odds) - 1, 0.0)
    local = np.where(np.isinf(odds), 1.0, np.nan_to_num(local))
    d_sys = float((p_mated * local).sum())
    return Linkability(d_sys, edges, local, p_mated, p_non_mated, len(mated))
