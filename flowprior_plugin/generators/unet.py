"""UNet generator: the released learned prior's trunk (SRFlow-LP and LINF-LP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowprior_plugin.generators import GENERATOR_REGISTRY


class DoubleConv(nn.Sequential):
    """[3x3 conv without bias, BatchNorm, LeakyReLU 0.2] twice.

    A plain ``nn.Sequential`` so its parameters are numbered 0 (conv), 1 (norm), 3 (conv),
    4 (norm), which keeps the mapping from the released checkpoint a pure prefix rename.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        mid = out_channels if mid_channels is None else mid_channels
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.2, inplace=True),
        )


class _Down(nn.Module):
    """Max-pool by 2, then a double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.pool(x))


class _Up(nn.Module):
    """Bilinear x2 (align_corners True), zero-pad to the skip's size, concat [skip, up], double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode='bilinear', align_corners=True)
        # Pooling floors odd sides, so the upsampled map can be one short of the skip; the release
        # pads the difference split as floor/ceil between the two sides.
        dh = skip.shape[-2] - x.shape[-2]
        dw = skip.shape[-1] - x.shape[-1]
        if dh or dw:
            x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
        return self.conv(torch.cat([skip, x], dim=1))


@GENERATOR_REGISTRY.register()
class UNet(nn.Module):
    """UNet with bilinear upsampling, as in the authors' released learned prior.

    Widths for ``depth`` d and ``width`` w: the stem maps the input to w; down step k (1..d)
    goes to w * 2**min(k, d - 1) (the deepest step keeps the width, since bilinear upsampling adds
    no channels: 64 -> 128 -> 256 -> 256 for the release's d=3, w=64); each up step concatenates
    the skip, so its input is twice the skip width, its double conv runs at half its input width,
    and it ends at the next shallower width (512 -> 256 -> 128, 256 -> 128 -> 64,
    128 -> 64 -> 64). A 1x1 conv to ``out_channels`` is added only when that differs from
    ``width`` (the release has none).

    Inputs with a side shorter than 2**depth (which max-pooling would reduce to nothing) are
    replicate-padded at the bottom/right up to 2**depth and the output is cropped back; in
    training with a batch of one, an input whose deepest map would be a single pixel (which
    BatchNorm cannot normalise) is padded further. Every other input is processed exactly as the
    release does.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        depth (int): Number of down (and up) steps. Default: 3.
        width (int): Width of the stem and the last up step. Default: 64.
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int = 3, width: int = 64) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f'UNet depth must be >= 1, got {depth}')
        if width < 2:
            raise ValueError(f'UNet width must be >= 2, got {width}')
        self.depth = depth
        self.width = width
        plan = [width * 2 ** min(k, depth - 1) for k in range(depth + 1)]
        self.stem = DoubleConv(in_channels, width)
        self.downs = nn.ModuleList(_Down(plan[k], plan[k + 1]) for k in range(depth))
        ups = []
        current = plan[depth]
        for k in range(depth - 1, -1, -1):
            out = plan[k - 1] if k > 0 else width
            ups.append(_Up(plan[k] + current, out))
            current = out
        self.ups = nn.ModuleList(ups)
        self.proj = nn.Identity() if out_channels == width else nn.Conv2d(width, out_channels, 1)

    @classmethod
    def default_out_channels(cls, depth: int = 3, width: int = 64, **_: object) -> int:
        """Output width when the caller lets the generator choose: ``width``."""
        return width

    @property
    def min_training_grid(self) -> int:
        """Smallest latent grid side this UNet learns from more than its borders: its deepest map
        (``grid / 2**depth``) must be at least 2x2, else every pooled feature is one border pixel."""
        return 2 ** (self.depth + 1)

    # The option that lowers :attr:`min_training_grid`, named by the training-geometry warning.
    min_grid_option = 'depth'

    def _padded_size(self, x: Tensor) -> tuple[int, int]:
        minimum = 2**self.depth
        h, w = max(x.shape[-2], minimum), max(x.shape[-1], minimum)
        if self.training and x.shape[0] * (h // minimum) * (w // minimum) == 1:
            h = max(h, 2 * minimum)  # BatchNorm in training needs more than one value per channel
        return h, w

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, in_channels, H, W) to (B, out_channels, H, W)."""
        h, w = x.shape[-2:]
        ph, pw = self._padded_size(x)
        if (ph, pw) != (h, w):
            x = F.pad(x, [0, pw - w, 0, ph - h], mode='replicate')
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.proj(y[..., :h, :w])
