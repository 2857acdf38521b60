"""Face pixels, in one place: photo -> RGB -> SN input -> wire pixels -> recognizer input.

Every program that turns a face into pixels (the edge agent, the enrollment station, the
trainer and the studies) goes through these functions, so training and serving cannot drift.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image


def load_rgb(path: Path) -> np.ndarray:
    """A photo file as (H, W, 3) uint8 RGB (PIL decodes; grey and palette images are converted)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def to_unit(faces_uint8: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, S, S, 3) uint8 RGB -> (N, 3, S, S) float32 in [0, 1] on ``device``."""
    return torch.from_numpy(faces_uint8).to(device).permute(0, 3, 1, 2).float().div(255.0)


def sharpness(face: np.ndarray) -> float:
    """Variance of the Laplacian of an RGB face's grey levels: low means blurred."""
    grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())
