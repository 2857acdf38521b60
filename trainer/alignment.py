"""Aligning two key epochs' galleries of the same people without labels (issue 22).

The attacker holds the templates of one set of people under two epochs (say epoch e's gallery
from a backup and epoch e+1's from a compromised recognizer host) but nothing that says which
template of one gallery is which of the other. Two recognizers that embed people with the same
similarity structure (who resembles whom) give that correspondence away, whatever orthogonal
map separates their spaces; students of one teacher whose targets differ by a secret rotation
``Q_e`` are such recognizers. With the correspondence comes a rotation between the spaces,
which carries old templates of anyone, people absent from the new gallery included, into the
new epoch's space.

The attack is borrowed from unsupervised cross-lingual word-embedding alignment, which faces
the same problem (two point clouds, an unknown rotation, no dictionary):

1. seeds from the similarity structure alone, no map assumed:

   a. sorted-similarity signatures (Artetxe, Labaka, Agirre, "A robust self-learning method
      for fully unsupervised cross-lingual mappings of word embeddings", ACL 2018): each
      template's sorted row of the square-rooted similarity matrix is unchanged by a rotation
      of the space and by the gallery's order; signatures are paired one to one by the
      Hungarian method (``scipy.optimize.linear_sum_assignment``);
   b. graph matching of the two similarity matrices A and B, max trace(A P B Pᵀ) over
      permutations P, relaxed to doubly stochastic P: entropic Gromov-Wasserstein transport
      (Peyré, Cuturi, Solomon, ICML 2016; used for the same problem by Alvarez-Melis and
      Jaakkola, EMNLP 2018) with the entropy annealed from large to small, started from the
      uniform plan, from (a)'s signature similarities and from randomly perturbed plans, the
      plan rounded by the Hungarian method;
   c. the Fast Approximate QAP algorithm (Vogelstein et al., PLoS ONE 2015;
      ``scipy.optimize.quadratic_assignment``) on the same objective, from the barycentre and
      as a local polish of every (a) and (b) seed;

2. refinement of each seed by iterative orthogonal Procrustes and Hungarian assignment (the
   one-to-one form of Wasserstein Procrustes, Grave, Joulin, Berthet, AISTATS 2019): fit the
   rotation on the current pairs (``scipy.linalg.orthogonal_procrustes``), pair again by the
   rotated cosines, until the pairs stop changing;

3. of all candidates, the attacker keeps the one under which the two similarity matrices agree
   best (Pearson correlation of their off-diagonal entries): no ground truth is used.

Galleries are (n, d) templates, one per person, the same n people in each (in any order).
Used by the key rotation's aligned-linkage measurement (``trainer.rotation``) and the privacy
study ``trainer.studies.privacy.gallery_alignment``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import orthogonal_procrustes
from scipy.optimize import linear_sum_assignment, quadratic_assignment


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Frame:
    """How one gallery is normalized (Artetxe et al.): unit length, centred on the gallery's
    mean, unit length again, zero-padded to the width both galleries share. A shared component,
    such as a face descriptor's common direction, then no longer dominates the similarities."""

    mean: np.ndarray  # (d,) mean of the gallery's unit templates
    width: int

    @classmethod
    def of(cls, gallery: np.ndarray, width: int | None = None) -> Frame:
        if gallery.ndim != 2 or len(gallery) < 2:
            raise ValueError(f"a gallery is (n >= 2, d) templates, got shape {gallery.shape}")
        return cls(_unit(_finite(gallery)).mean(axis=0), width or gallery.shape[1])

    def apply(self, templates: np.ndarray) -> np.ndarray:
        """Templates of this gallery's space (its own or anyone's) in the normalized frame."""
        if templates.ndim != 2 or templates.shape[1] != len(self.mean):
            raise ValueError(f"templates of width {len(self.mean)} expected: {templates.shape}")
        centred = _unit(_unit(_finite(templates)) - self.mean)
        return np.pad(centred, ((0, 0), (0, self.width - centred.shape[1])))


def _finite(values: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise ValueError("a gallery holds a non-finite value")
    return values


@dataclass(frozen=True)
class Alignment:
    """``matching[i]``: the second gallery's template paired with the first's template ``i``.
    ``rotation``: the orthogonal map with ``first.apply(g1) @ rotation`` close to
    ``second.apply(g2)[matching]``."""

    matching: np.ndarray  # (n,) int
    rotation: np.ndarray  # (width, width)
    first: Frame
    second: Frame
    agreement: float  # correlation of the two similarity matrices under ``matching``
    candidates: dict[str, np.ndarray] = field(default_factory=dict)  # every seed and refinement

    def carry(self, templates: np.ndarray) -> np.ndarray:
        """Templates of the first gallery's space (anyone's) into the second's frame."""
        return self.first.apply(templates) @ self.rotation


def similarity(gallery: np.ndarray) -> np.ndarray:
    """Cosine similarities within a normalized gallery, the diagonal set to 0."""
    scores = gallery @ gallery.T
    np.fill_diagonal(scores, 0.0)
    return scores


def structure_agreement(first: np.ndarray, second: np.ndarray, matching: np.ndarray) -> float:
    """Pearson correlation between the off-diagonal similarities of two normalized galleries
    under ``matching``: 1 when one is a rotated copy of the other, about 0 when unrelated."""
    a, b = similarity(first), similarity(second)[np.ix_(matching, matching)]
    upper = np.triu_indices(len(a), 1)
    x, y = a[upper], b[upper]
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def signatures(gallery: np.ndarray) -> np.ndarray:
    """Each template's sorted row of the square-rooted similarity matrix (X Xᵀ)^½ = U S Uᵀ,
    normalized like a gallery: invariant to a rotation of the space and to the gallery order."""
    u, s, _ = np.linalg.svd(gallery, full_matrices=False)
    root = (u * s) @ u.T
    rows = -np.sort(-root, axis=1)
    return Frame.of(rows).apply(rows)


def signature_matching(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """One-to-one pairing of the two galleries' signatures (step 1a)."""
    _, columns = linear_sum_assignment(-(signatures(first) @ signatures(second).T))
    return np.asarray(columns, dtype=np.int64)


def graph_matching(
    first: np.ndarray, second: np.ndarray, start: np.ndarray | str, rng: np.random.Generator
) -> np.ndarray:
    """FAQ on the similarity matrices (step 1c) from ``start``: a matching, "barycenter" or
    "randomized"."""
    n = len(first)
    initial: np.ndarray | str = start
    if isinstance(start, np.ndarray):
        initial = np.zeros((n, n))
        initial[np.arange(n), start] = 1.0
    result = quadratic_assignment(
        similarity(first),
        similarity(second),
        method="faq",
        options={"maximize": True, "P0": initial, "maxiter": 100, "tol": 1e-4, "rng": rng},
    )
    return np.asarray(result.col_ind, dtype=np.int64)


def _sinkhorn(kernel: np.ndarray, scale: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Row scaling u of ``kernel`` whose plan u K v has unit row and column sums (v follows)."""
    for _ in range(iterations):
        scale = 1.0 / (kernel @ (1.0 / (kernel.T @ scale)))
    return scale


def gromov_wasserstein(
    first: np.ndarray,
    second: np.ndarray,
    plan: np.ndarray,
    entropies: tuple[float, ...] = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005),
    steps: int = 10,
) -> np.ndarray:
    """Entropic Gromov-Wasserstein (step 1b) from ``plan`` (n, n, positive): each step solves
    the entropic transport whose cost is the linearized objective -A T Bᵀ, rescaled to [0, 1],
    at a decreasing entropy; the last finite plan is rounded to a matching."""
    a, b = similarity(first), similarity(second)
    plan = plan / plan.sum(axis=1, keepdims=True)
    for entropy in entropies:
        scale = np.ones(len(plan))
        for _ in range(steps):
            gain = a @ plan @ b.T
            cost = (gain.max() - gain) / max(float(np.ptp(gain)), 1e-12)
            kernel = np.exp(-cost / entropy)
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                scale = _sinkhorn(kernel, scale)
                column = 1.0 / (kernel.T @ scale)
                update = scale[:, None] * kernel * column[None, :]
            if not np.all(np.isfinite(update)):
                break  # the entropy got too small for this plan: keep the last finite one
            plan = update
    _, columns = linear_sum_assignment(-plan)
    return np.asarray(columns, dtype=np.int64)


def signature_plan(first: np.ndarray, second: np.ndarray, temperature: float = 0.05) -> np.ndarray:
    """A soft pairing from the signatures' cosine similarities (a start for step 1b)."""
    scores = signatures(first) @ signatures(second).T
    return np.exp((scores - scores.max()) / temperature)


def procrustes(first: np.ndarray, second: np.ndarray, matching: np.ndarray) -> np.ndarray:
    """The rotation R minimizing ||first @ R - second[matching]|| (galleries of one width)."""
    rotation, _ = orthogonal_procrustes(first, second[matching])
    return np.asarray(rotation)


def linear_map(
    first: np.ndarray, second: np.ndarray, matching: np.ndarray, ridge: float = 1.0
) -> np.ndarray:
    """The ridge least-squares map W with ``first @ W`` close to ``second[matching]``: what an
    attacker who knows the pairing may fit where the two spaces are not rotations of one
    another (two recognizers trained apart)."""
    gram = first.T @ first + ridge * np.eye(first.shape[1])
    return np.asarray(np.linalg.solve(gram, first.T @ second[matching]))


def refine(
    first: np.ndarray, second: np.ndarray, matching: np.ndarray, iterations: int = 50
) -> np.ndarray:
    """Iterative Procrustes and Hungarian assignment from ``matching`` (step 2)."""
    for _ in range(iterations):
        rotation = procrustes(first, second, matching)
        _, columns = linear_sum_assignment(-(first @ rotation @ second.T))
        if np.array_equal(columns, matching):
            break
        matching = np.asarray(columns, dtype=np.int64)
    return matching


def align_galleries(
    first: np.ndarray, second: np.ndarray, restarts: int = 4, seed: int = 0
) -> Alignment:
    """The attack: pair two galleries of the same people and find the rotation between them."""
    if len(first) != len(second):
        raise ValueError(
            f"galleries of the same people hold as many templates: {len(first)} != {len(second)}"
        )
    width = max(first.shape[1], second.shape[1])
    frames = Frame.of(first, width), Frame.of(second, width)
    first, second = frames[0].apply(first), frames[1].apply(second)
    rng = np.random.default_rng(seed)
    n = len(first)
    seeds = {
        "signatures": signature_matching(first, second),
        "graph_matching": graph_matching(first, second, "barycenter", rng),
        "gromov_wasserstein": gromov_wasserstein(first, second, np.ones((n, n))),
        "gromov_wasserstein_from_signatures": gromov_wasserstein(
            first, second, signature_plan(first, second)
        ),
    }
    for index in range(restarts):
        noisy = np.exp(rng.normal(0.0, 1.0, (n, n)))
        seeds[f"gromov_wasserstein_random_{index}"] = gromov_wasserstein(first, second, noisy)
    for name in [name for name in seeds if name != "graph_matching"]:
        seeds[f"{name}+graph_matching"] = graph_matching(first, second, seeds[name], rng)
    candidates = dict(seeds)
    for name, matching in seeds.items():
        candidates[f"{name}+procrustes"] = refine(first, second, matching)
    scores = {name: structure_agreement(first, second, m) for name, m in candidates.items()}
    best = max(scores, key=lambda name: scores[name])
    matching = candidates[best]
    rotation = procrustes(first, second, matching)
    return Alignment(matching, rotation, *frames, scores[best], candidates)


def correspondence_accuracy(matching: np.ndarray, truth: np.ndarray) -> float:
    """Share of the first gallery's templates paired with their own person's template."""
    if matching.shape != truth.shape:
        raise ValueError(f"matching {matching.shape} and truth {truth.shape} differ in shape")
    return float(np.mean(matching == truth))
