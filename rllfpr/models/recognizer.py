"""Recognizers that embed (scrambled or original) one-channel faces into 512-d vectors.

Backbones from torchvision, trained from scratch (no pretrained weights can be fetched here):
ResNet-50 (the paper's), ResNet-18 (CPU scale), DenseNet-121 (the paper's alternative); and two
small ones that two CPU cores can train: ``compact`` and ``compact_residual``.

``stem="full_resolution"`` replaces the ImageNet stem (7x7 stride-2 conv + max-pool) with a
3x3 stride-1 conv and no pool, as face recognizers (ArcFace "IR" nets) do; it matters more
here, because the identity signal of a scrambled face sits in exact pixel positions of a
noise-like image that early striding aliases. The embedding head flattens the last feature
map (keeping positions) instead of global average pooling, as ArcFace's output layer does.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional
from torchvision import models


class RecognizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: Literal["compact", "compact_residual", "resnet18", "resnet50", "densenet121"] = Field(
        "resnet18",
        description="torchvision backbone, randomly initialized; or `compact`: two "
        "stride-1 3x3 convs (32 channels) then two 4x4 stride-4 convs (64, 128), a CPU-scale "
        "model that keeps positions; or `compact_residual`: the same stride-1 convs, then "
        "4x4 stride-4 convs to 64 and 256 channels, each followed by two residual blocks "
        "of 3x3 convs (3.3 M parameters against 0.44 M).",
    )
    stem: Literal["imagenet", "full_resolution"] = Field(
        "full_resolution", description="Stride-2 ImageNet stem, or stride-1 3x3 conv."
    )
    head: Literal["flatten", "average"] = Field(
        "flatten", description="Flatten the last feature map, or average-pool it."
    )
    input_size: int = Field(112, ge=32, le=256, description="Side of the one-channel input.")
    embedding_dim: int = Field(512, ge=16, description="Size of the L2-normalized embedding.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout before the embedding.")


def _block(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
    """Conv (3x3 padded, or 4x4 unpadded), BN, PReLU."""
    padding = 1 if kernel == 3 else 0
    return [
        nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(cout),
        nn.PReLU(cout),
    ]


class _Residual(nn.Module):
    """x + (3x3 conv, BN, PReLU, 3x3 conv, BN)(x), then PReLU: same side, same channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            *_block(channels, channels, 3, 1),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.activation = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x + self.branch(x))


def _compact(residual: bool) -> tuple[nn.Module, int]:
    stem = _block(1, 32, 3, 1) + _block(32, 32, 3, 1)
    if not residual:
        return nn.Sequential(*stem, *_block(32, 64, 4, 4), *_block(64, 128, 4, 4)), 128
    layers = [*stem, *_block(32, 64, 4, 4), _Residual(64), _Residual(64)]
    layers += [*_block(64, 256, 4, 4), _Residual(256), _Residual(256)]
    return nn.Sequential(*layers), 256


def _trunk(config: RecognizerConfig) -> tuple[nn.Module, int]:
    """The backbone without its classifier, for one-channel input; returns (module, channels)."""
    if config.backbone in ("compact", "compact_residual"):
        return _compact(residual=config.backbone == "compact_residual")
    if config.backbone == "densenet121":
        densenet = models.densenet121(weights=None)
        features = densenet.features
        stride = 1 if config.stem == "full_resolution" else 2
        features.conv0 = nn.Conv2d(
            1, 64, 7 if stride == 2 else 3, stride, 3 if stride == 2 else 1, bias=False
        )
        if config.stem == "full_resolution":
            features.pool0 = nn.Identity()
        return nn.Sequential(features, nn.ReLU()), densenet.classifier.in_features
    resnet = (
        models.resnet18(weights=None)
        if config.backbone == "resnet18"
        else models.resnet50(weights=None)
    )
    if config.stem == "full_resolution":
        resnet.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
        resnet.maxpool = nn.Identity()
    else:
        resnet.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    trunk = nn.Sequential(*(list(resnet.children())[:-2]))
    return trunk, resnet.fc.in_features


class Recognizer(nn.Module):
    def __init__(self, config: RecognizerConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk, channels = _trunk(config)
        with torch.no_grad():
            side = self.trunk(torch.zeros(1, 1, config.input_size, config.input_size)).shape[-1]
        flat = channels * side * side if config.head == "flatten" else channels
        self.head = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.Dropout(config.dropout),
            nn.Flatten()
            if config.head == "flatten"
            else nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            nn.Linear(flat, config.embedding_dim),
            nn.BatchNorm1d(config.embedding_dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) standardized grey levels -> (N, D) L2-normalized embeddings."""
        return functional.normalize(self.head(self.trunk(images)), dim=1)
