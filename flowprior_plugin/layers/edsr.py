"""EDSR-baseline feature encoder (Lim et al., 2017) without its upsampling tail.

The parameter names (``sub_mean``, ``add_mean``, ``head.0``, ``body.{i}.body.{0,2}``, ``body.16``)
are those of the EDSR-baseline encoder inside LINF's released checkpoints, so its weights load
without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# DIV2K RGB mean of the EDSR release: the initial value of the (fixed) mean-shift convolutions.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Conv2d):
    """A fixed 1x1 convolution ``x / std + sign * range * mean / std`` (EDSR's colour shift).

    Its weight and bias are parameters (they are in the released checkpoints) that never train.

    Args:
        rgb_range (float): Range of the pixel values. Default: 1.0.
        rgb_mean (Sequence[float]): Per-channel mean. Default: DIV2K mean.
        rgb_std (Sequence[float]): Per-channel std. Default: (1, 1, 1).
        sign (int): -1 subtracts the mean, +1 adds it. Default: -1.
    """

    def __init__(
        self,
        rgb_range: float = 1.0,
        rgb_mean: Sequence[float] = DIV2K_RGB_MEAN,
        rgb_std: Sequence[float] = (1.0, 1.0, 1.0),
        sign: int = -1,
    ) -> None:
        channels = len(rgb_mean)
        super().__init__(channels, channels, kernel_size=1)
        std = torch.tensor(rgb_std, dtype=torch.float32)
        with torch.no_grad():
            self.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1) / std.view(channels, 1, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean, dtype=torch.float32) / std)
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    """EDSR residual block: ``x + res_scale * conv(relu(conv(x)))`` (keys ``body.0``, ``body.2``).

    Args:
        nf (int): Feature channels. Default: 64.
        res_scale (float): Scale of the residual branch. Default: 1.0.
    """

    def __init__(self, nf: int = 64, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(nf, nf, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(nf, nf, 3, padding=1)
        )
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) * self.res_scale


class EDSRBaselineEncoder(nn.Module):
    """EDSR-baseline without the upsampling tail: LR image -> LR-resolution features.

    ``head`` (3x3 conv to ``nf``), ``body`` (``num_blocks`` residual blocks and a 3x3 conv) with a
    global skip from the head's output; the output has ``nf`` channels at the LR size.

    The mean-shift convolutions ``sub_mean``/``add_mean`` are kept so that released checkpoints
    load with ``strict=True``, but they are not applied: LINF feeds the encoder images already
    normalised to [-1, 1] (only an encoder without the mean shift reproduces the outputs of LINF's
    released code).

    Args:
        in_nc (int): Input channels. Default: 3.
        nf (int): Feature channels. Default: 64.
        num_blocks (int): Residual blocks. Default: 16.
        res_scale (float): Residual scale of the blocks. Default: 1.0.
    """

    def __init__(self, in_nc: int = 3, nf: int = 64, num_blocks: int = 16, res_scale: float = 1.0) -> None:
        super().__init__()
        self.sub_mean = MeanShift(sign=-1)
        self.add_mean = MeanShift(sign=1)
        self.head = nn.Sequential(nn.Conv2d(in_nc, nf, 3, padding=1))
        self.body = nn.Sequential(
            *[ResBlock(nf, res_scale) for _ in range(num_blocks)], nn.Conv2d(nf, nf, 3, padding=1)
        )
        self.out_channels = nf

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, in_nc, h, w) to features (B, nf, h, w)."""
        x = self.head(x)
        return x + self.body(x)
