"""RRDB feature encoder (ESRGAN's trunk) without its upsampling tail.

Parameter names are those of ESRGAN's ``RRDBNet`` (``conv_first``, ``RRDB_trunk``, ``trunk_conv``,
``upconv{1,2}``, ``HRconv``, ``conv_last``), which LINF's released checkpoints use for their RRDB
encoder.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from flowprior_plugin.layers.rrdb import RRDB


class RRDBEncoder(nn.Module):
    """RRDB trunk giving LR-resolution features: ``f + trunk_conv(RRDB_trunk(f))``, ``f = conv_first(x)``.

    The SR head (``upconv*``, ``HRconv``, ``conv_last``) is kept for checkpoint compatibility only
    and never computed (LINF uses the trunk as a feature encoder).

    Args:
        in_nc (int): Input channels. Default: 3.
        out_nc (int): Channels of the unused ``conv_last``. Default: 3.
        nf (int): Feature channels. Default: 64.
        nb (int): Number of RRDB blocks. Default: 23.
        gc (int): Growth channels of the dense blocks. Default: 32.
        scale (int): Upscaling of the unused head; there are log2(scale) ``upconv`` layers. Default: 4.
    """

    def __init__(
        self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23, gc: int = 32, scale: int = 4
    ) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        for n in range(1, int(math.log2(scale)) + 1):
            setattr(self, f'upconv{n}', nn.Conv2d(nf, nf, 3, 1, 1))
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)
        self.out_channels = nf

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, in_nc, h, w) to features (B, nf, h, w)."""
        fea = self.conv_first(x)
        return fea + self.trunk_conv(self.RRDB_trunk(fea))
