"""CosFace (large margin cosine loss; Wang et al. 2018), the paper's loss (s = 30, m = 0.5)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


class CosFace(nn.Module):
    """logits = s * (cos(theta) - m * onehot(label)); cross-entropy on them."""

    def __init__(
        self, embedding_dim: int, classes: int, scale: float = 30.0, margin: float = 0.5
    ) -> None:
        super().__init__()
        self.scale = scale
        self.margin = margin
        self.weight = nn.Parameter(torch.empty(classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return functional.linear(
            functional.normalize(embeddings), functional.normalize(self.weight)
        )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = self.cosine(embeddings)
        margin = functional.one_hot(labels, cosine.shape[1]).to(cosine.dtype) * self.margin
        return functional.cross_entropy(self.scale * (cosine - margin), labels)
