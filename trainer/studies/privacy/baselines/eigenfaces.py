"""Eigenfaces (PCA on grey faces) and eigenfaces with differential privacy.

Recognition uses the projections (the eigenface method's template); the image the metrics
see is the reconstruction from them, which is what a holder of the template can display.

Differential privacy (Laplace mechanism, one release per image, "local" DP): each projection
coefficient j is clipped to +-c sigma_j (sigma_j its std on the training faces), so replacing
an image changes the vector by at most Delta = sum_j 2 c sigma_j in L1 norm; Laplace noise of
scale Delta / epsilon is added to every coefficient. This gives epsilon-DP per released vector.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from trainer.studies.privacy.baselines.base import Properties, Protection, grey_pixels


class Eigenfaces(Protection):
    properties = Properties("Eigenfaces (PCA)", False, "none", "approximately", "no")

    def __init__(self, components: int) -> None:
        self.components = components
        self.pca: PCA | None = None

    def fit(self, train_faces: np.ndarray) -> None:
        grey = grey_pixels(train_faces).reshape(len(train_faces), -1).astype(np.float64)
        components = min(self.components, len(grey) - 1, grey.shape[1])
        self.pca = PCA(n_components=components, svd_solver="randomized", random_state=0)
        self.pca.fit(grey)

    def _fitted(self) -> PCA:
        if self.pca is None:
            raise RuntimeError("fit the eigenfaces before using them")
        return self.pca

    @property
    def component_std(self) -> np.ndarray:
        """Std of each projection coefficient on the training faces."""
        return np.sqrt(self._fitted().explained_variance_)

    def project(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(N, S, S, 3) faces -> (N, k) template vectors."""
        grey = grey_pixels(faces).reshape(len(faces), -1).astype(np.float64)
        return np.asarray(self._fitted().transform(grey))

    def reconstruct(self, projections: np.ndarray, size: int) -> np.ndarray:
        images = self._fitted().inverse_transform(projections).reshape(-1, size, size)
        return np.clip(np.rint(images), 0, 255).astype(np.uint8)

    def protect(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.reconstruct(self.project(faces, rng), faces.shape[1])


class DpEigenfaces(Eigenfaces):
    properties = Properties("Eigenfaces + DP (Laplace)", True, "none", "no (noisy)", "no")

    def __init__(self, components: int, epsilon: float, clip_sigmas: float) -> None:
        super().__init__(components)
        self.epsilon = epsilon
        self.clip_sigmas = clip_sigmas

    @property
    def bounds(self) -> np.ndarray:
        return self.clip_sigmas * self.component_std

    @property
    def laplace_scale(self) -> float:
        """Delta / epsilon, Delta = the L1 sensitivity of the clipped projection vector."""
        return float(2 * self.bounds.sum() / self.epsilon)

    def project(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        clean = np.clip(super().project(faces, rng), -self.bounds, self.bounds)
        return clean + rng.laplace(0.0, self.laplace_scale, clean.shape)
