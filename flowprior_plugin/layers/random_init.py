"""Random, well-conditioned parameters for flows built from this package's layers (tests, benchmarks)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowprior_plugin.layers.flow_layers import ActNorm, Conv2dZeros, InvertibleConv1x1


@torch.no_grad()
def randomize_parameters_(net: nn.Module, generator: torch.Generator | None = None, strength: float = 1.0) -> None:
    """Give every parameter of a flow (or of a learned prior) a random, well-conditioned value, in place.

    Zero-initialised convolutions and ActNorms get small random values (so no coupling is the
    identity), invertible 1x1 convolutions random orthogonal matrices, and every ActNorm is marked
    initialised (so training mode does not overwrite the values). Other weights keep their random
    init; convolution biases get small random values. Afterwards every submodule that defines
    ``rebalance_after_randomize_()`` calls it: a family's own correction (SRFlow's coupled steps
    let their ActNorm undo the couplings' average scale, as the data-dependent init would).

    Args:
        net: The network (any module built from this package's layers).
        generator: Random generator on the CPU. Default: None.
        strength: Multiplier of the random magnitudes of zero-convs and ActNorms. Default: 1.0.
    """

    def randn_(t: Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=generator, dtype=t.dtype) * std)

    for module in net.modules():
        if isinstance(module, ActNorm):
            randn_(module.bias, 0.1 * strength)
            randn_(module.logs, 0.05 * strength)
            module.initialized = True
        elif isinstance(module, InvertibleConv1x1):
            q = torch.linalg.qr(torch.randn(module.weight.shape, generator=generator, dtype=torch.float64))[0]
            module.weight.copy_(q)
        elif isinstance(module, Conv2dZeros):
            # Scaled by fan-in: the hidden activations they read are not normalised by a data init.
            randn_(module.weight, 0.05 * strength / math.sqrt(module.weight[0].numel()))
            randn_(module.bias, 0.1 * strength)
            randn_(module.logs, 0.05 * strength)
        elif isinstance(module, nn.Conv2d) and module.bias is not None:
            randn_(module.bias, 0.01)
    for module in net.modules():
        rebalance = getattr(module, 'rebalance_after_randomize_', None)
        if callable(rebalance):
            rebalance()
