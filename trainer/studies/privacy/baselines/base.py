"""What every protection method is: RGB faces in, one-channel 8-bit protected images out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from rllfpr.models.scrambler import PIXEL_CENTER, PIXEL_SCALE
from trainer.metrics import grayscale


@dataclass(frozen=True)
class Properties:
    """The descriptive columns of the paper's Tables 1 and 5."""

    label: str
    privacy: bool  # does the stored / transmitted form hide the face?
    key: str
    reversible: str
    revocable: str


class Protection(ABC):
    """A protection method. ``fit`` sees training faces only; ``protect`` is the fixed
    conversion to 8-bit grey levels that every metric and recognizer sees."""

    properties: Properties

    def fit(self, train_faces: np.ndarray) -> None:  # noqa: B027 - most methods need no fit
        """Learn what the method needs from (N, S, S, 3) uint8 training faces."""

    @abstractmethod
    def protect(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB faces -> (N, S, S) uint8 protected images."""


def grey_pixels(faces: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB -> (N, S, S) uint8 ITU-R BT.601 grey levels."""
    return np.clip(np.rint(grayscale(faces)), 0, 255).astype(np.uint8)


class Standardizer:
    """The SN's fixed pixel conversion for methods whose output is a real-valued image:
    standardize with a mean and std measured on training outputs, then round(128 + 32 z)."""

    def __init__(self) -> None:
        self.mean, self.std = 0.0, 1.0

    def fit(self, outputs: np.ndarray) -> None:
        self.mean = float(outputs.mean())
        self.std = max(float(outputs.std()), 1e-12)

    def __call__(self, outputs: np.ndarray) -> np.ndarray:
        z = (outputs - self.mean) / self.std
        return np.clip(np.rint(PIXEL_CENTER + PIXEL_SCALE * z), 0, 255).astype(np.uint8)


class Original(Protection):
    properties = Properties("original face (grey)", False, "none", "n/a", "no")

    def protect(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return grey_pixels(faces)
