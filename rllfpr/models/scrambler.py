"""The scrambler network (SN): the keyed, frozen, random encoder-decoder of the paper (§3).

One definition, used by the trainer, the ONNX exporter and the edge agent:

- ``levels`` encoder levels of (conv3x3 + BatchNorm + ReLU) x ``convs_per_level`` then a 2x2
  max-pool that remembers where each maximum was; a mirrored decoder that unpools into those
  positions; a last conv3x3 with one output channel and no activation.
- Conv kernels are drawn from N(0, ``kernel_std``^2) with the key's seed and never trained.
- BatchNorm "self-learns": affine fixed (gamma 1, beta 0), running statistics accumulated in
  train mode over training faces without any loss (``self_learn``), then frozen.
- Unpooling is built from MaxPool / nearest Resize / Equal / Mul only, so the trained graph is
  the exported graph: TensorRT parses neither ONNX ``MaxUnpool`` nor ``MaxPool`` with indices.
  Semantics equal ``max_pool2d(return_indices=True)`` + ``max_unpool2d``: each window's value
  goes to the *first* maximal position in row-major order, also when several positions tie
  (after ReLU, all-zero windows are common; a mask of every tied position would differ).
  The mask is computed at full resolution (the maxima of each window, weighted by a fixed
  position pattern, then the window's largest weight), which ONNX Runtime runs 1.8 times
  faster than window reshapes (issue 27); the values are the same, bit for bit.
- Inputs whose side is not a multiple of 2^levels (112 with five levels) are zero-padded
  symmetrically to the next multiple inside the SN and the output is cropped back, so
  112x112 in gives 112x112 out.
- Two keyless, fixed low-pass options (issue 4): ``input_blur`` smooths the face before the
  first conv (the deployed recipe uses it); ``pool_blur`` smooths every level's features before
  its max-pool and decides the maximum on a grid (measured: no gain; off).
- One fixed conversion to pixels (``to_pixels``): standardize with the output mean and std
  measured during self-learning (stored in the key), then ``round(128 + 32 z)`` clipped to
  0..255, i.e. +-4 standard deviations in 256 levels, one channel, uint8. The wire, training
  and every metric use exactly this; ``from_pixels`` is its inverse up to quantization.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable
from typing import Any, Final, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn
from torch.nn import functional

PIXEL_CENTER = 128.0
PIXEL_SCALE = 32.0  # grey levels per output standard deviation
# Smoothed features make nearly equal neighbours common: deciding the max on exact floats let
# float32 vs float64 change 44-47 % of wire pixels; on a 0.01 grid (features have about unit
# scale after BatchNorm), 0.2-0.3 % (docs/results/design-study.md, fifth round).
POOL_DECISION_STEP = 0.01


class ScramblerConfig(BaseModel):
    """Architecture of an SN key. Stored, with the seed, in the encrypted part of every key
    bundle. ``DEPLOYED_SN`` below is the one deployments use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    levels: int = Field(5, ge=1, le=6, description="Pool/unpool levels (paper: 5).")
    widths: tuple[int, ...] = Field(
        (16, 32, 64, 64, 64), description="Channels of each encoder level, shallow to deep."
    )
    convs_per_level: int = Field(1, ge=1, le=3, description="conv+BN+ReLU blocks per level.")
    in_channels: Literal[1, 3] = Field(3, description="3 for RGB faces, 1 for grayscale.")
    input_size: int = Field(112, ge=16, le=512, description="Side of the square input face.")
    kernel_distribution: Literal["normal", "uniform"] = Field(
        "normal", description="Distribution of the random kernels (paper: normal)."
    )
    kernel_std: float = Field(1.0, gt=0, description="Standard deviation of the kernels.")
    input_blur: float = Field(
        0.0,
        ge=0,
        le=3,
        description="Standard deviation, in pixels, of a fixed Gaussian low-pass of the face "
        "before the first conv (0: none). It is not part of the secret. Max-pool choices then "
        "follow coarser structure, so one scramble changes less when the face moves by a pixel. "
        "``DEPLOYED_SN`` sets it; why 0 by default: docs/results/defaults.md.",
    )
    pool_blur: bool = Field(
        False,
        description="Smooth each encoder level's features with a fixed 3x3 binomial low-pass "
        "before its max-pool (anti-aliased pooling), the maximum chosen on a 0.01 grid, so the "
        "positions the unpooling keeps move less when the face moves by a pixel. Not part of "
        "the secret. Why off by default: docs/results/defaults.md.",
    )

    @model_validator(mode="after")
    def _one_width_per_level(self) -> ScramblerConfig:
        if len(self.widths) != self.levels:
            raise ValueError(f"widths has {len(self.widths)} entries for {self.levels} levels")
        return self

    @property
    def padded_size(self) -> int:
        step = 2**self.levels
        return -(-self.input_size // step) * step


# The SN every deployment uses, the demo and the privacy report included (their configs say
# `scrambler: deployed`): the paper's five levels with widths 16-32-64-64-64, one conv per
# level, N(0, 1) kernels, and a Gaussian low-pass of sigma 1.2 px on the face before the first
# conv, chosen on 64 px faces (docs/results/design-study.md, fourth round; every privacy goal
# of docs/results/privacy.md met). ``input_size`` follows the faces, and so does the low-pass:
# ``deployed_sn(side)`` is this SN for faces of that side, at the sides in DEPLOYABLE_FACE_SIZES.
DEPLOYED_SN: Final = ScramblerConfig(input_blur=1.2)
DEPLOYED_FACE_SIZE: Final = 64


# The face sides at which the privacy report met every goal with ``deployed_sn(side)``:
# docs/results/privacy.md (64 px) and docs/results/privacy-112.json (112 px).
DEPLOYABLE_FACE_SIZES: Final = (DEPLOYED_FACE_SIZE, 112)


def deployed_sn(face_size: int = DEPLOYED_FACE_SIZE) -> ScramblerConfig:
    """The deployed SN for faces of ``face_size`` px. The low-pass's sigma is in pixels, so it
    scales with the face and blurs the same share of it at every side (rounded to 0.1 px):
    1.2 px at 64 px, 2.1 px at 112 px."""
    blur = round(DEPLOYED_SN.input_blur * face_size / DEPLOYED_FACE_SIZE, 1)
    return ScramblerConfig.model_validate(
        DEPLOYED_SN.model_dump() | {"input_size": face_size, "input_blur": blur}
    )


def _block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, affine=False, momentum=None),
        nn.ReLU(inplace=False),
    ]


def gaussian_kernel(sigma: float, channels: int) -> torch.Tensor:
    """(channels, 1, K, K) normalized Gaussian, K = 2 * ceil(3 sigma) + 1, for a depthwise conv."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    line = torch.exp(-0.5 * (offsets / sigma) ** 2)
    line = line / line.sum()
    return (line[:, None] * line[None, :]).expand(channels, 1, -1, -1).contiguous()


class FixedLowPass(nn.Module):
    """Depthwise convolution with a fixed (C, 1, K, K) kernel and mirrored edges. The kernel is
    a non-persistent buffer: not part of a key's state, and a constant of known shape in the
    exported graph."""

    kernel: torch.Tensor

    def __init__(self, kernel: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        radius = self.kernel.shape[-1] // 2
        padded = functional.pad(x, (radius,) * 4, mode="reflect")
        return functional.conv2d(padded, self.kernel, groups=self.kernel.shape[0])


class BinomialBlur(FixedLowPass):
    """Fixed 3x3 binomial low-pass ([1, 2, 1] x [1, 2, 1] / 16) of each channel."""

    def __init__(self, channels: int) -> None:
        line = torch.tensor([1.0, 2.0, 1.0]) / 4
        super().__init__((line[:, None] * line[None, :]).expand(channels, 1, 3, 3).contiguous())


# Weights of a 2x2 window's positions in row-major order, highest first: the largest weight
# among a window's maxima marks its first maximum.
_FIRST_POSITION = ((4.0, 3.0), (2.0, 1.0))


def _upsampled(x: torch.Tensor) -> torch.Tensor:
    """Each value repeated over its 2x2 window (nearest neighbour; ONNX Resize)."""
    return functional.interpolate(x, scale_factor=2.0, mode="nearest")


def _position_pattern(x: torch.Tensor) -> torch.Tensor:
    """``_FIRST_POSITION`` tiled over ``x``'s height and width (a constant when exported)."""
    height, width = int(x.shape[-2]), int(x.shape[-1])
    pattern = torch.tensor(_FIRST_POSITION, dtype=x.dtype, device=x.device)
    return pattern.repeat(height // 2, width // 2)


def pool_with_mask(
    x: torch.Tensor, decision_step: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 max-pool returning the pooled map (N, C, H/2, W/2) and a mask (N, C, H, W) that is
    1 at each window's first maximum (row-major) and 0 elsewhere. With a ``decision_step``,
    the maximum is chosen on the values rounded to that grid (ties: first), so float rounding
    of nearly equal values cannot flip it, and the pooled value is the chosen position's."""
    decided = x if decision_step is None else torch.round(x / decision_step)
    top = functional.max_pool2d(decided, 2)
    maxima = (decided == _upsampled(top)).to(x.dtype)
    ranked = maxima * _position_pattern(x)
    first = (ranked == _upsampled(functional.max_pool2d(ranked, 2))).to(x.dtype)
    if decision_step is None:
        return top, first
    # one non-zero value per window: the sum (4 x the mean) is that value exactly
    return functional.avg_pool2d(x * first, 2) * 4.0, first


def unpool_with_mask(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place each value of ``y`` at its window's remembered position; zeros elsewhere."""
    return _upsampled(y) * mask


# A key's kernels follow from its seed, so the seed is as secret as the kernels: it travels only
# inside a bundle's ciphertext (format 2; format 1 put it in the public header, issue 21). An
# attacker holding one face and its scramble but no bundle would search for it: 31 bits (our
# first draw) take about 32 H100-hours; 63 bits about 16 million GPU-years
# (docs/threat-model.md). torch seeds a generator with up to 64 bits; 63 stay within int64.
KEY_SEED_BITS = 63


def random_key_seed() -> int:
    """A fresh, unpredictable seed for a production key (tests and studies use small ones)."""
    return secrets.randbits(KEY_SEED_BITS)


class _KeyArchitecture(BaseModel):
    """The secret architecture document of a key bundle; validation errors hide the input."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    scrambler: ScramblerConfig
    seed: int = Field(ge=0, lt=2**KEY_SEED_BITS, strict=True)


class ScramblerNetwork(nn.Module):
    """The SN. ``forward`` gives the float output; ``scramble`` gives wire pixels (0..255)."""

    output_mean: torch.Tensor
    output_std: torch.Tensor

    def __init__(self, config: ScramblerConfig, seed: int) -> None:
        super().__init__()
        if not 0 <= seed < 2**KEY_SEED_BITS:
            # the value is not quoted: error messages end up in logs, and a seed is the key
            raise ValueError(f"a key seed is an integer in [0, 2**{KEY_SEED_BITS})")
        self.config = config
        self.seed = seed
        widths = config.widths
        encoder, decoder = [], []
        channels: int = config.in_channels
        for width in widths:
            layers: list[nn.Module] = []
            for _ in range(config.convs_per_level):
                layers += _block(channels, width)
                channels = width
            encoder.append(nn.Sequential(*layers))
        for level in reversed(range(config.levels)):
            target = widths[level - 1] if level > 0 else widths[0]
            layers = []
            for index in range(config.convs_per_level):
                last = index == config.convs_per_level - 1
                layers += _block(widths[level], target if last else widths[level])
            decoder.append(nn.Sequential(*layers))
        self.encoder = nn.ModuleList(encoder)
        self.decoder = nn.ModuleList(decoder)
        self.head = nn.Conv2d(widths[0], 1, 3, padding=1, bias=False)
        smoothing = [BinomialBlur(w) if config.pool_blur else nn.Identity() for w in widths]
        self.before_pool = nn.ModuleList(smoothing)
        self.input_low_pass = (
            FixedLowPass(gaussian_kernel(config.input_blur, config.in_channels))
            if config.input_blur
            else nn.Identity()
        )
        self.register_buffer("output_mean", torch.zeros(()))
        self.register_buffer("output_std", torch.ones(()))
        self._draw_kernels()
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def _draw_kernels(self) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                shape = module.weight.shape
                if self.config.kernel_distribution == "normal":
                    kernel = torch.randn(shape, generator=generator) * self.config.kernel_std
                else:
                    bound = self.config.kernel_std * 3**0.5  # same std as the normal draw
                    kernel = (torch.rand(shape, generator=generator) * 2 - 1) * bound
                module.weight.copy_(kernel)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) float faces in [0, 1] -> (N, 1, S, S) raw SN output."""
        size = self.config.input_size
        if faces.shape[1:] != (self.config.in_channels, size, size):
            raise ValueError(
                f"SN expects (N, {self.config.in_channels}, {size}, {size}), "
                f"got {tuple(faces.shape)}"
            )
        if faces.dtype != torch.float32:
            raise ValueError(f"SN expects float32 faces, got {faces.dtype}")
        # TF32 convolutions (PyTorch's cuDNN default) changed 22 % of the wire pixels, by up to
        # 46 grey levels, against the CPU on an H100 (docs/results/bench-gpu.json); float32
        # leaves < 0.01 % off by one grey level. Autocast would change them too.
        with (
            torch.backends.cudnn.flags(enabled=True, allow_tf32=False),
            torch.autocast(faces.device.type, enabled=False),
        ):
            return self._forward(faces, size)

    def _forward(self, faces: torch.Tensor, size: int) -> torch.Tensor:
        faces = self.input_low_pass(faces)
        pad = self.config.padded_size - size
        x = functional.pad(faces, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        masks = []
        step = POOL_DECISION_STEP if self.config.pool_blur else None
        for level, smooth in zip(self.encoder, self.before_pool, strict=True):
            x, mask = pool_with_mask(smooth(level(x)), step)
            masks.append(mask)
        for level, mask in zip(self.decoder, reversed(masks), strict=True):
            x = level(unpool_with_mask(x, mask))
        x = self.head(x)
        return x[..., pad // 2 : pad // 2 + size, pad // 2 : pad // 2 + size]

    def to_pixels(self, output: torch.Tensor) -> torch.Tensor:
        """The fixed conversion: raw output -> grey levels 0..255 (float, integral values)."""
        z = (output - self.output_mean) / self.output_std
        return torch.clamp(torch.round(PIXEL_CENTER + PIXEL_SCALE * z), 0.0, 255.0)

    def scramble(self, faces: torch.Tensor) -> torch.Tensor:
        """Faces in [0, 1] -> wire pixels as uint8, shape (N, S, S)."""
        with torch.no_grad():
            return self.to_pixels(self(faces)).to(torch.uint8)[:, 0]

    @torch.no_grad()
    def self_learn(self, batches: Iterable[torch.Tensor]) -> int:
        """BN self-learning (no loss): exact running statistics over ``batches``, then the
        output mean and std for ``to_pixels``. Returns the number of faces seen. Freezes."""
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
        self.train()
        cached = []
        for batch in batches:
            self(batch)
            cached.append(batch)
        if not cached:
            raise ValueError("BN self-learning needs at least one batch of faces")
        self.eval()
        total, sum_, sum_sq = 0, 0.0, 0.0
        for batch in cached:
            output = self(batch).double()
            total += output.numel()
            sum_ += float(output.sum())
            sum_sq += float((output**2).sum())
        mean = sum_ / total
        self.output_mean.fill_(mean)
        self.output_std.fill_(max((sum_sq / total - mean**2) ** 0.5, 1e-12))
        return sum(len(batch) for batch in cached)

    def key_state(self) -> dict[str, Any]:
        """Everything a key bundle must carry: architecture, seed and the numeric state. All of
        it is secret (the kernels follow from the seed): a bundle encrypts all of it."""
        return {
            "architecture": {"scrambler": self.config.model_dump(mode="json"), "seed": self.seed},
            "state": {
                name: tensor.detach().cpu().numpy().copy()
                for name, tensor in self.state_dict().items()
            },
        }

    @classmethod
    def from_key_state(
        cls, architecture: dict[str, Any], state: dict[str, Any]
    ) -> ScramblerNetwork:
        """The SN of a decrypted key; errors name what is wrong, never a value."""
        try:
            key = _KeyArchitecture.model_validate(architecture)
        except ValidationError as error:
            where = ", ".join(".".join(map(str, e["loc"])) or "-" for e in error.errors())
            raise ValueError(f"invalid key architecture at {where}") from None
        network = cls(key.scrambler, key.seed)
        network.load_state_dict({name: torch.as_tensor(array) for name, array in state.items()})
        network.eval()
        return network


def from_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """Wire pixels (uint8 or float grey levels) -> standardized float input of a recognizer."""
    return (pixels.float() - PIXEL_CENTER) / PIXEL_SCALE
