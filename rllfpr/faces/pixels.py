"""Face pixels, in one place: photo -> RGB -> SN input -> wire pixels -> recognizer input.

This is the train/serve skew surface of the method, so it has one definition. The edge agent,
the enrollment station, the recognizer, the trainer and the studies all go through it:

- ``load_rgb``: a photo file to (H, W, 3) uint8 RGB (PIL; EXIF orientation applied, as a
  camera meant it). Video frames come from OpenCV and are converted by the agent's sources.
- ``to_unit``: (N, S, S, 3) uint8 RGB to (N, 3, S, S) float32 in [0, 1], the SN's value range.
- ``sn_input``: those RGB faces to what an SN of ``in_channels`` takes: unchanged for 3, the
  ITU-R BT.601 luma (``grey``) for 1. ``faces_to_sn_input`` does both steps.
- ``scramble``: aligned uint8 faces to (N, S, S) uint8 wire pixels with an SN key (through the
  SN's one fixed conversion, ``ScramblerNetwork.to_pixels``).
- ``recognizer_input``: (N, S, S) wire pixels (uint8 or float grey levels) to the
  (N, 1, S, S) standardized input of a recognizer; ``embed_wire`` runs a recognizer on them.
- ``pick_device``: ``auto`` / ``cpu`` / ``cuda`` to a torch device.
- ``sharpness``: the variance of the Laplacian of a face's grey levels (blur gate, quality).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from rllfpr.models.scrambler import ScramblerNetwork, from_pixels

GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma of R, G, B


def pick_device(choice: str) -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU; otherwise the named device."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def load_rgb(path: Path) -> np.ndarray:
    """A photo file as (H, W, 3) uint8 RGB. PIL decodes it (grey and palette images are
    converted) and applies its EXIF orientation; raises ``OSError`` or ``ValueError`` when the
    file is not a readable image."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def to_unit(faces_uint8: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, S, S, 3) uint8 RGB -> (N, 3, S, S) float32 in [0, 1] on ``device``."""
    return torch.from_numpy(faces_uint8).to(device).permute(0, 3, 1, 2).float().div(255.0)


def grey(faces: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) RGB -> (N, S, S) luma, in the faces' value range."""
    weights = torch.tensor(GREY_WEIGHTS, device=faces.device)
    return torch.einsum("nchw,c->nhw", faces, weights)


def sn_input(faces: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(N, 3, S, S) float RGB in [0, 1] -> (N, in_channels, S, S), what the SN takes."""
    if faces.ndim != 4 or faces.shape[1] != 3:
        raise ValueError(f"expected (N, 3, S, S) RGB faces, got {tuple(faces.shape)}")
    if in_channels == 3:
        return faces
    if in_channels == 1:
        return grey(faces).unsqueeze(1)
    raise ValueError(f"an SN takes 1 or 3 channels, not {in_channels}")


def faces_to_sn_input(
    faces: np.ndarray, in_channels: int, device: torch.device | None = None
) -> torch.Tensor:
    """(N, S, S, 3) uint8 RGB -> (N, in_channels, S, S) float32 SN input on ``device`` (CPU).

    The RGB tensor keeps the photo's channels-last memory layout: BatchNorm self-learning sums in
    layout order, and every published key's statistics were learned from this layout."""
    if faces.ndim != 4 or faces.shape[3] != 3 or faces.dtype != np.uint8:
        raise ValueError(f"expected (N, S, S, 3) uint8 faces, got {faces.dtype} {faces.shape}")
    return sn_input(to_unit(faces, device or torch.device("cpu")), in_channels)


def network_device(network: nn.Module) -> torch.device:
    """The device a network's weights and buffers are on."""
    return next(network.buffers()).device


def scramble(network: ScramblerNetwork, faces: np.ndarray, batch: int | None = None) -> np.ndarray:
    """(N, S, S, 3) uint8 aligned RGB faces -> (N, S, S) uint8 wire pixels, computed on the
    network's device, ``batch`` faces at a time (all at once by default)."""
    size = network.config.input_size
    if not len(faces):
        return np.zeros((0, size, size), np.uint8)
    device = network_device(network)
    step = batch or len(faces)
    parts = [
        network.scramble(faces_to_sn_input(faces[i : i + step], network.config.in_channels, device))
        .cpu()
        .numpy()
        for i in range(0, len(faces), step)
    ]
    return np.concatenate(parts)


def recognizer_input(pixels: torch.Tensor) -> torch.Tensor:
    """(N, S, S) wire pixels (uint8 or float grey levels) -> (N, 1, S, S) standardized input."""
    if pixels.ndim != 3:
        raise ValueError(f"expected (N, S, S) wire pixels, got {tuple(pixels.shape)}")
    return from_pixels(pixels).unsqueeze(1)


@torch.no_grad()
def embed_wire(
    recognizer: nn.Module,
    pixels: np.ndarray | Sequence[np.ndarray],
    device: torch.device,
    batch: int | None = None,
    bf16_on_gpu: bool = False,
) -> np.ndarray:
    """(N, S, S) wire pixels -> (N, D) unit float32 embeddings from a recognizer in eval mode,
    ``batch`` at a time (all at once by default); in float32, or under bf16 autocast on a GPU
    with ``bf16_on_gpu`` (the recognizer service's setting)."""
    recognizer.eval()
    stacked = np.stack(pixels) if not isinstance(pixels, np.ndarray) else pixels
    step = batch or max(1, len(stacked))
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and bf16_on_gpu
        else nullcontext()
    )
    parts = []
    with torch.inference_mode(), autocast:
        for start in range(0, len(stacked), step):
            chunk = torch.from_numpy(stacked[start : start + step]).to(device, non_blocking=True)
            parts.append(recognizer(recognizer_input(chunk)).float().cpu().numpy())
    return np.concatenate(parts)


def sharpness(face: np.ndarray) -> float:
    """Variance of the Laplacian of an RGB face's grey levels: low means blurred."""
    grey_levels = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey_levels, cv2.CV_64F).var())
