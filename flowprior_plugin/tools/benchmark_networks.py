"""The networks the CPU benchmarks run: one table of configurations, built through BasicSR's
``ARCH_REGISTRY`` with random, well-conditioned weights (eval mode, frozen)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

import flowprior_plugin.archs  # noqa: F401  (registers the networks)
from flowprior_plugin.archs.hcflow_arch import official_hcflow_options
from flowprior_plugin.archs.linf_arch import official_linf_options
from flowprior_plugin.archs.srflow_arch import official_srflow_options
from flowprior_plugin.layers.pointwise_flow import InvertibleLinear
from flowprior_plugin.layers.random_init import randomize_parameters_

RELEASE = 'DF2K 4X'  # the released architecture of the fixed-scale flows
LINF_CONFIG = 'edsr-baseline-linf-patch'  # the 3x3-patch model LINF-LP runs on
TINY_OPTIONS = dict(scale=4, nf=16, nb=2, gc=8, K=2, hidden_channels=16, stacked_blocks=(0, 1))
HCFLOW_TINY_OPTIONS = dict(scale=4, nf=16, nb=1, gc=8, K=4, n_additional_steps=2, hidden_channels=16)
LINF_TINY_OPTIONS = dict(encoder_opt={'nf': 8, 'num_blocks': 1}, hidden_dim=16, flow_layers=2, mlp_layers=1)


@torch.no_grad()
def randomize_invertible_linear_(net: nn.Module, generator: torch.Generator) -> None:
    """Each invertible linear map of ``net`` a random orthogonal matrix with small random biases;
    every other weight keeps its seeded default init (LINF's flow: no ActNorm, no zero-convs)."""
    for module in net.modules():
        if isinstance(module, InvertibleLinear):
            q = torch.linalg.qr(torch.randn(module.weight.shape, generator=generator, dtype=torch.float64))[0]
            module.weight.copy_(q)
            module.bias.copy_(0.01 * torch.randn(module.bias.shape, generator=generator))


@dataclass(frozen=True)
class BenchmarkedFlow:
    """One benchmarked flow.

    Args:
        arch_type: Its ``ARCH_REGISTRY`` name.
        title: Its name in the printed lines.
        release: Which released architecture ``official`` is.
        official: Constructor options of the released architecture.
        tiny: Constructor options of the tiny one (``--tiny``, tests).
        randomize: Gives the built network random weights, in place, from a seeded generator.
            Default: :func:`randomize_parameters_`.
    """

    arch_type: str
    title: str
    release: str
    official: dict
    tiny: dict
    randomize: Callable[[nn.Module, torch.Generator], None] = randomize_parameters_

    def options(self, tiny: bool) -> dict:
        """Constructor options of the tiny or the released architecture."""
        return dict(self.tiny if tiny else self.official)


FLOWS = {
    'srflow': BenchmarkedFlow('SRFlowNet', 'SRFlow', RELEASE, official_srflow_options(RELEASE), TINY_OPTIONS),
    'hcflow': BenchmarkedFlow('HCFlowNet', 'HCFlow', RELEASE, official_hcflow_options(RELEASE), HCFLOW_TINY_OPTIONS),
    'linf': BenchmarkedFlow(
        'LINFNet',
        'LINF',
        LINF_CONFIG,
        dict(official_linf_options(LINF_CONFIG), scale=4),
        dict(official_linf_options(LINF_CONFIG), **LINF_TINY_OPTIONS, scale=4),
        randomize=randomize_invertible_linear_,
    ),
}


def build_flow(name: str, tiny: bool, seed: int = 0, **overrides) -> nn.Module:
    """A benchmarked flow (a key of :data:`FLOWS`): released or tiny architecture, random weights,
    eval mode, frozen.

    Args:
        name: The key in :data:`FLOWS`.
        tiny: The tiny architecture instead of the released one.
        seed: Seed of the weights. Default: 0.
        **overrides: Constructor options that replace the table's (e.g. ``cache_flow_params``).
    """
    if name not in FLOWS:
        raise ValueError(f'unknown flow {name!r}; known: {", ".join(FLOWS)}')
    flow = FLOWS[name]
    torch.manual_seed(seed)
    net = ARCH_REGISTRY.get(flow.arch_type)(**{**flow.options(tiny), **overrides})
    flow.randomize(net, torch.Generator().manual_seed(seed))
    return net.eval().requires_grad_(False)


def arch_line(name: str, tiny: bool, threads: int) -> str:
    """The line that says which architecture of a benchmarked flow runs, and how."""
    flow = FLOWS[name]
    arch = f'tiny {flow.title} 4X {flow.tiny}' if tiny else f'{flow.title}, official {flow.release} architecture'
    return f'{arch}: random weights, eval, no_grad, CPU float32, {threads} threads'
