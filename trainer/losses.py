"""Training losses: CosFace (large margin cosine loss; Wang et al. 2018), the paper's loss
(s = 30, m = 0.5), the regression to the face teacher's targets, the consistency of one face's
augmented copies, and the reconstruction of the original face from a scrambled run's
intermediate features."""

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


def target_cosine(embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(e_i, t_i): the student's embeddings regressing the teacher's (unit)
    targets of the same photos (trainer.targets)."""
    return (1 - functional.cosine_similarity(embeddings.float(), targets.float(), dim=1)).mean()


def copy_consistency(embeddings: torch.Tensor, copies: int) -> torch.Tensor:
    """Mean of 1 - cos(e_k, m) over (copies * B, D) embeddings stacked copy by copy (rows k * B
    + i are copy k of face i), m being the normalized mean of face i's unit copies: the
    embedding test-time augmentation would use. m is held fixed; its own gradient would be zero
    anyway, since m maximizes the summed cosine."""
    unit = functional.normalize(embeddings.float(), dim=1).view(copies, -1, embeddings.shape[1])
    target = functional.normalize(unit.mean(0), dim=1).detach()
    return (1 - (unit * target).sum(-1)).mean()


class FaceReconstruction(nn.Module):
    """Auxiliary head of scrambled runs (training only, never shipped): predicts the grey
    original face, area-downsampled to a feature map's side, from that map; the loss is the
    mean squared error against the face standardized per image. A class label gives a scrambled
    run a few bits per face; the face's pixels are a dense target, which asks the early layers
    to undo the scramble locally."""

    def __init__(self, channels: int, width: int = 32) -> None:
        super().__init__()
        self.decode = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.PReLU(width),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, features: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
        """(N, C, s, s) features and (N, 1, S, S) grey faces -> scalar loss."""
        target = functional.adaptive_avg_pool2d(
            grey.float(), (features.shape[-2], features.shape[-1])
        )
        mean = target.mean((2, 3), keepdim=True)
        spread = target.std((2, 3), keepdim=True).clamp_min(1e-6)
        return functional.mse_loss(self.decode(features).float(), (target - mean) / spread)
