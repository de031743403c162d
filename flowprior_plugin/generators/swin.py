"""Swin Transformer generator built from timm's ``SwinTransformerBlock`` (no pretrained weights)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowprior_plugin.generators import GENERATOR_REGISTRY


@GENERATOR_REGISTRY.register()
class SwinT(nn.Module):
    """Swin-T blocks at constant resolution, as in the authors' Swin generator ablation.

    1x1 conv embedding to ``embed_dim`` (left out when the input already has ``embed_dim``
    channels, which is the authors' layout: 96 + 96 encoder features), then the stages of
    ``depths`` blocks with ``num_heads`` heads each, with no patch merging (every stage works at
    the input resolution), windows alternately unshifted and shifted by half a window within each
    stage, stochastic depth rising linearly from 0 to ``drop_path_rate`` over all blocks, a final
    LayerNorm, and a head of 1x1 convs through ``head_channels``, each followed by LeakyReLU 0.2.
    A last 1x1 conv to ``out_channels`` is added only when that differs from the last head width
    (the prior network's own 1x1 head then completes the authors' 192 -> 96 -> 48 -> C).

    The blocks are timm's, built directly (nothing is downloaded). Any H, W >= 1 works: the input
    is replicate-padded at the bottom/right to a multiple of the window and the output cropped
    back, and the shifted-window attention mask is computed for the padded size on each call.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        embed_dim (int): Token width of every stage. Default: 192.
        depths (Sequence[int]): Blocks per stage. Default: (2, 2, 6, 2).
        num_heads (Sequence[int]): Attention heads per stage; each must divide ``embed_dim``.
            Default: (3, 6, 12, 24).
        window_size (int): Side of the square attention windows. Default: 7.
        mlp_ratio (float): Hidden width of each block's MLP relative to ``embed_dim``. Default: 4.0.
        drop_path_rate (float): Stochastic-depth rate of the last block. Default: 0.1.
        head_channels (Sequence[int]): Widths of the 1x1 conv head after the final norm.
            Default: (96, 48).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        embed_dim: int = 192,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        head_channels: Sequence[int] = (96, 48),
    ) -> None:
        # Imported here: timm adds a third of a second to ``import flowprior_plugin`` otherwise.
        from timm.models.swin_transformer import SwinTransformerBlock

        super().__init__()
        depths, num_heads, head_channels = list(depths), list(num_heads), list(head_channels)
        if len(depths) != len(num_heads):
            raise ValueError(f'SwinT needs one num_heads entry per stage: depths {depths}, num_heads {num_heads}')
        if any(embed_dim % h for h in num_heads):
            raise ValueError(f'SwinT embed_dim {embed_dim} must be divisible by every num_heads entry {num_heads}')
        if window_size < 1:
            raise ValueError(f'SwinT window_size must be >= 1, got {window_size}')
        self.window_size = window_size
        self.embed = nn.Identity() if in_channels == embed_dim else nn.Conv2d(in_channels, embed_dim, 1)

        rates = torch.linspace(0, drop_path_rate, max(sum(depths), 1)).tolist()
        stages, index = [], 0
        for depth, heads in zip(depths, num_heads):
            blocks = []
            for j in range(depth):
                blocks.append(
                    SwinTransformerBlock(
                        dim=embed_dim,
                        # Nominal only: always_partition keeps the window and shift whatever the
                        # input size, and dynamic_mask builds the shift mask for each input.
                        input_resolution=(window_size, window_size),
                        num_heads=heads,
                        window_size=window_size,
                        shift_size=0 if j % 2 == 0 else window_size // 2,
                        always_partition=True,
                        dynamic_mask=True,
                        mlp_ratio=mlp_ratio,
                        drop_path=rates[index],
                    )
                )
                index += 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(embed_dim)

        head: list[nn.Module] = []
        width = embed_dim
        for channels in head_channels:
            head += [nn.Conv2d(width, channels, 1), nn.LeakyReLU(0.2, inplace=True)]
            width = channels
        if out_channels != width:
            head.append(nn.Conv2d(width, out_channels, 1))
        self.head = nn.Sequential(*head)

    @classmethod
    def default_out_channels(cls, embed_dim: int = 192, head_channels: Sequence[int] = (96, 48), **_: object) -> int:
        """Output width when the caller lets the generator choose: the last head width."""
        return list(head_channels)[-1] if len(head_channels) else embed_dim

    @property
    def min_training_grid(self) -> int:
        """Smallest latent grid side worth training on: two attention windows per side, so that
        shifted windows mix tokens of different windows instead of padding."""
        return 2 * self.window_size

    min_grid_option = 'window_size'

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, in_channels, H, W) to (B, out_channels, H, W)."""
        h, w = x.shape[-2:]
        ws = self.window_size
        ph, pw = -h % ws, -w % ws
        if ph or pw:
            x = F.pad(x, [0, pw, 0, ph], mode='replicate')
        y = self.embed(x).permute(0, 2, 3, 1)  # timm's blocks take channels last: (B, H, W, C)
        for stage in self.stages:
            y = stage(y)
        y = self.norm(y).permute(0, 3, 1, 2)
        return self.head(y)[..., :h, :w]
