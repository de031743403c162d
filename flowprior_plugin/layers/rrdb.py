"""Residual-in-residual dense blocks (ESRGAN), the trunk of SRFlow's conditioning encoder.

Module names (``conv1``..``conv5``, ``RDB1``..``RDB3``) are those of the released checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _scaled_kaiming_(conv: nn.Conv2d, scale: float) -> None:
    # ESRGAN's init: Kaiming normal shrunk by 0.1 so that a deep stack of residual blocks starts
    # close to the identity.
    nn.init.kaiming_normal_(conv.weight, a=0, mode='fan_in')
    with torch.no_grad():
        conv.weight.mul_(scale)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions with dense connections: ``0.2 * conv5(...) + x``.

    ``conv_k`` reads the input and all previous outputs (``nf + (k-1) * gc`` channels); LeakyReLU(0.2)
    follows conv1..conv4; conv5 returns to ``nf`` channels.

    Args:
        nf (int): Feature channels of the input and output. Default: 64.
        gc (int): Growth channels of conv1..conv4. Default: 32.
        init_scale (float): Scale applied to the Kaiming init. Default: 0.1.
    """

    def __init__(self, nf: int = 64, gc: int = 32, init_scale: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):
            _scaled_kaiming_(conv, init_scale)

    def forward(self, x: Tensor) -> Tensor:
        x1 = F.leaky_relu(self.conv1(x), 0.2)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), 0.2)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), 0.2)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), 0.2)
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Three residual dense blocks inside a residual connection: ``0.2 * RDB3(RDB2(RDB1(x))) + x``.

    Args:
        nf (int): Feature channels. Default: 64.
        gc (int): Growth channels of the dense blocks. Default: 32.
    """

    def __init__(self, nf: int = 64, gc: int = 32) -> None:
        super().__init__()
        self.RDB1 = ResidualDenseBlock(nf, gc)
        self.RDB2 = ResidualDenseBlock(nf, gc)
        self.RDB3 = ResidualDenseBlock(nf, gc)

    def forward(self, x: Tensor) -> Tensor:
        out = self.RDB3(self.RDB2(self.RDB1(x)))
        return out * 0.2 + x
