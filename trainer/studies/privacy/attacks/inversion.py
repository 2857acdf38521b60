"""Inversion attack: a U-Net decoder learns scrambled -> original from (original, scrambled)
pairs the attacker holds, then reconstructs faces of people it never saw.

Input: the SN's wire pixels through ``from_pixels``; target: the grey face in [0, 1]; L1
loss, Adam with cosine decay. Reconstructions are compared to the true grey faces with PSNR
and SSIM (``trainer.studies.privacy.metrics``); identity leakage is measured by the caller.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from tqdm import tqdm

from rllfpr.models.scrambler import from_pixels
from trainer.studies.privacy.config import InversionConfig


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A small U-Net: ``len(widths)`` levels, the last one the bottleneck."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError("a U-Net needs at least two levels")
        self.down = nn.ModuleList()
        channels = 1
        for width in widths:
            self.down.append(_double_conv(channels, width))
            channels = width
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(channels, width, 2, stride=2))
            self.merge.append(_double_conv(2 * width, width))
            channels = width
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = len(self.down)
        if x.shape[-1] % 2 ** (levels - 1) or x.shape[-2] % 2 ** (levels - 1):
            raise ValueError(f"input side must be a multiple of {2 ** (levels - 1)}")
        skips = []
        for index, block in enumerate(self.down):
            x = block(x)
            if index < levels - 1:
                skips.append(x)
                x = functional.max_pool2d(x, 2)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return torch.sigmoid(self.out(x))


@dataclass
class Decoder:
    network: UNet
    losses: list[float]  # mean L1 per epoch
    seconds: float
    device: torch.device

    @torch.no_grad()
    def reconstruct(self, scrambled: np.ndarray, batch: int = 256) -> np.ndarray:
        """(N, S, S) uint8 wire pixels -> (N, S, S) uint8 grey reconstructions."""
        self.network.eval()
        parts = []
        for start in range(0, len(scrambled), batch):
            pixels = torch.from_numpy(scrambled[start : start + batch]).to(self.device)
            output = self.network(from_pixels(pixels).unsqueeze(1))[:, 0]
            parts.append(torch.round(output * 255).clamp(0, 255).to(torch.uint8).cpu().numpy())
        return np.concatenate(parts)


def train_decoder(
    scrambled: np.ndarray,
    grey: np.ndarray,
    config: InversionConfig,
    device: torch.device,
    seed: int = 0,
    progress: bool = False,
) -> Decoder:
    """Fit a U-Net on (N, S, S) uint8 scrambled inputs and their (N, S, S) uint8 grey faces."""
    if scrambled.shape != grey.shape or len(scrambled) < 2:
        raise ValueError(f"need matching pairs, got {scrambled.shape} and {grey.shape}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = UNet(config.widths).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(len(scrambled) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs * steps_per_epoch
    )
    inputs = from_pixels(torch.from_numpy(scrambled)).unsqueeze(1)
    targets = torch.from_numpy(grey).float().div(255.0).unsqueeze(1)
    losses, started = [], time.perf_counter()
    network.train()
    for _ in tqdm(range(config.epochs), desc="inversion decoder", disable=not progress):
        order = torch.randperm(len(inputs), generator=generator)
        epoch_loss = []
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            if len(index) < 2:
                continue  # BatchNorm needs two samples
            output = network(inputs[index].to(device))
            loss = functional.l1_loss(output, targets[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            epoch_loss.append(loss.item())
        losses.append(float(np.mean(epoch_loss)))
    return Decoder(network, losses, time.perf_counter() - started, device)
