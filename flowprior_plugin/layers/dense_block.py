"""The five-convolution dense block the learned prior uses as its feature encoder."""

from __future__ import annotations

import torch
from basicsr.archs.arch_util import default_init_weights
from torch import Tensor, nn


class DenseBlock5(nn.Module):
    """Five 3x3 convolutions, each seeing the block input and every earlier output.

    ``conv1``..``conv4`` each add ``growth`` channels (followed by LeakyReLU 0.2); ``conv5`` reads
    the input and all four growths and its output is the block's result. There is no residual
    connection, so the input and output widths may differ (the learned prior uses it to lift a
    latent level of a few channels to a wide feature map).

    The parameter names ``conv1``..``conv5`` are those of the authors' released SRFlow-LP
    checkpoint, so its encoder weights load without renaming inside the block.

    Args:
        in_channels (int): Channels of the input.
        out_channels (int): Channels of the output.
        growth (int): Channels each of ``conv1``..``conv4`` adds. Default: 64.
        init_scale (float): Kaiming-normal initial weights are multiplied by this (biases start
            at zero); a small scale keeps the untrained block close to a small linear map, as in
            the release. Default: 0.1.
    """

    def __init__(self, in_channels: int, out_channels: int, growth: int = 64, init_scale: float = 0.1) -> None:
        super().__init__()
        if min(in_channels, out_channels, growth) < 1:
            raise ValueError(
                f'DenseBlock5 needs positive widths, got in_channels={in_channels}, '
                f'out_channels={out_channels}, growth={growth}'
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv1 = nn.Conv2d(in_channels, growth, 3, padding=1)
        self.conv2 = nn.Conv2d(in_channels + growth, growth, 3, padding=1)
        self.conv3 = nn.Conv2d(in_channels + 2 * growth, growth, 3, padding=1)
        self.conv4 = nn.Conv2d(in_channels + 3 * growth, growth, 3, padding=1)
        self.conv5 = nn.Conv2d(in_channels + 4 * growth, out_channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        default_init_weights([self.conv1, self.conv2, self.conv3, self.conv4, self.conv5], init_scale)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, in_channels, H, W) to (B, out_channels, H, W)."""
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(self.act(conv(torch.cat(features, dim=1))))
        return self.conv5(torch.cat(features, dim=1))
