"""EDSR-baseline generator: a trunk of plain residual blocks at constant resolution."""

from __future__ import annotations

from basicsr.archs.arch_util import ResidualBlockNoBN
from torch import Tensor, nn

from flowprior_plugin.generators import GENERATOR_REGISTRY


@GENERATOR_REGISTRY.register()
class EDSRBaseline(nn.Module):
    """EDSR-baseline trunk without upsampling: head conv, residual blocks, body conv + global skip,
    tail conv.

    All convolutions are 3x3 with padding 1 and there is no pooling, so any H, W >= 1 works.

    With ``plain=True`` the head, body and tail convolutions and the global skip are left out,
    leaving only the residual blocks; that is the layout whose parameter count matches the
    authors' EDSR ablation (16 blocks of width 64 fed directly by the concatenated 32 + 32
    encoder features), and it needs ``in_channels == out_channels == width``.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        num_blocks (int): Residual blocks. Default: 16.
        width (int): Channels inside the trunk. Default: 64.
        res_scale (float): Scale of each block's residual branch. Default: 1.0.
        plain (bool): Residual blocks only (see above). Default: False.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int = 16,
        width: int = 64,
        res_scale: float = 1.0,
        plain: bool = False,
    ) -> None:
        super().__init__()
        if num_blocks < 0 or width < 1:
            raise ValueError(f'EDSRBaseline needs num_blocks >= 0 and width >= 1, got {num_blocks}, {width}')
        if plain and not in_channels == out_channels == width:
            raise ValueError(
                f'EDSRBaseline with plain: true needs in_channels == out_channels == width, got '
                f'{in_channels}, {out_channels}, {width}'
            )
        self.plain = plain
        self.head = nn.Identity() if plain else nn.Conv2d(in_channels, width, 3, padding=1)
        # BasicSR's block (keys conv1, conv2) with PyTorch's default init, as these blocks always had.
        self.blocks = nn.Sequential(
            *(ResidualBlockNoBN(width, res_scale, pytorch_init=True) for _ in range(num_blocks))
        )
        self.body = nn.Identity() if plain else nn.Conv2d(width, width, 3, padding=1)
        self.tail = nn.Identity() if plain else nn.Conv2d(width, out_channels, 3, padding=1)

    @classmethod
    def default_out_channels(cls, num_blocks: int = 16, width: int = 64, **_: object) -> int:
        """Output width when the caller lets the generator choose: ``width``."""
        return width

    # A heuristic floor, not a hard limit: below 8x8 most cells of a 3x3-conv trunk read zero
    # padding through the first residual block already.
    min_training_grid = 8
    min_grid_option = 'num_blocks'

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, in_channels, H, W) to (B, out_channels, H, W)."""
        x = self.head(x)
        y = self.blocks(x)
        if not self.plain:
            y = self.body(y) + x  # global skip around the trunk, as in EDSR
        return self.tail(y)
