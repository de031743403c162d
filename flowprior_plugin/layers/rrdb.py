"""Residual-in-residual dense blocks (ESRGAN), the trunk of SRFlow's, HCFlow's and LINF's RRDB encoders.

The dense block is BasicSR's (same keys ``conv1``..``conv5``, same forward and init); the RRDB is
ours only for its key names ``RDB1``..``RDB3``, those of the released checkpoints (BasicSR's
``RRDB`` names them ``rdb1``..``rdb3``).
"""

from __future__ import annotations

from basicsr.archs.rrdbnet_arch import ResidualDenseBlock
from torch import Tensor, nn


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
