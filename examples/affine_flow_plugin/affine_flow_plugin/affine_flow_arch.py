"""AffineFlowNet: a small conditional affine-coupling flow for fixed-scale super-resolution.

The worked example of flowprior-plugin's ``docs/adding_a_flow.md``: a flow of a third-party
package that likelihood training (``FlowLikelihoodModel``) and the learned prior (``FlowPriorModel``) use
through the flow protocol alone. It models the HR residual over the bilinearly upsampled LR,
rearranged to the LR grid (``scale**2 * in_nc`` channels per LR pixel), with couplings
conditioned on a small LR encoder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn

from flowprior_plugin.archs.base_flow_net import BaseFlowNet
from flowprior_plugin.checkpoints import CheckpointFormat
from flowprior_plugin.flow_protocol import FlowCondition, HRWindow, Latents, OutputSize


@dataclass
class AffineFlowCondition(FlowCondition):
    """What the flow computes from the LR alone.

    Attributes:
        base: The bilinearly upsampled LR (B, C, H, W): the flow models the HR minus this.
        features: LR features every coupling reads (B, features, h, w).
    """

    base: Tensor
    features: Tensor


class ConditionalCoupling(nn.Module):
    """A learned per-channel scale, then an affine coupling of the second half of the channels
    given the first half and the LR features; the channel order is reversed at the end so that
    the next coupling transforms the other half.

    Args:
        channels (int): Channels of the flow (even).
        features (int): Channels of the LR features.
        hidden_channels (int): Hidden channels of the coupling network.
        max_log_scale (float): Bound of the coupling's log-scale (the inverse never divides by
            less than ``exp(-max_log_scale)``).
    """

    def __init__(self, channels: int, features: int, hidden_channels: int, max_log_scale: float) -> None:
        super().__init__()
        self.half = channels // 2
        self.max_log_scale = max_log_scale
        self.channel_log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.net = nn.Sequential(
            nn.Conv2d(self.half + features, hidden_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, 2 * (channels - self.half), 3, padding=1),
        )
        # A zero last layer: every coupling starts as the identity.
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _shift_and_log_scale(self, kept: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = self.net(torch.cat((kept, features), 1)).chunk(2, dim=1)
        return shift, self.max_log_scale * torch.tanh(raw / self.max_log_scale)

    def encode(self, x: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the output and the log-determinant of this step per image, shape (B,)."""
        x = x * torch.exp(self.channel_log_scale)
        kept, changed = x[:, : self.half], x[:, self.half :]
        shift, log_scale = self._shift_and_log_scale(kept, features)
        changed = changed * torch.exp(log_scale) + shift
        logdet = self.channel_log_scale.sum() * x.shape[2] * x.shape[3] + log_scale.flatten(1).sum(1)
        return torch.cat((kept, changed), 1).flip(1), logdet

    def decode(self, z: Tensor, features: Tensor) -> Tensor:
        z = z.flip(1)
        kept, changed = z[:, : self.half], z[:, self.half :]
        shift, log_scale = self._shift_and_log_scale(kept, features)
        changed = (changed - shift) * torch.exp(-log_scale)
        return torch.cat((kept, changed), 1) * torch.exp(-self.channel_log_scale)


def read_affine_flow_architecture(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """What a state dict reveals: the coupling steps and the LR encoder's width (None: nothing)."""
    steps = {key.split('.')[1] for key in state_dict if key.startswith('steps.')}
    encoder = state_dict.get('encoder.0.weight')
    return {'num_steps': len(steps) or None, 'features': None if encoder is None else int(encoder.shape[0])}


def describe_affine_flow_architecture(arch: Mapping[str, Any], differ: Sequence[str]) -> str:
    return 'AffineFlow ' + ', '.join(f'{key}={value}' for key, value in arch.items())


@ARCH_REGISTRY.register()
class AffineFlowNet(BaseFlowNet):
    """A conditional affine-coupling flow HR <-> one latent map given the LR.

    Latents: ``[z]`` with z of shape (B, in_nc * scale**2, h, w) for an LR of h x w.

    Args:
        in_nc (int): Image channels. Default: 3.
        scale (int): Upscaling factor. Default: 2.
        num_steps (int): Coupling steps. Default: 4.
        features (int): Channels of the LR encoder. Default: 16.
        hidden_channels (int): Hidden channels of each coupling network. Default: 32.
        max_log_scale (float): Bound of each coupling's log-scale. Default: 2.0.
        quant (int): Quantisation levels of the dequantisation noise in :meth:`nll`. Default: 256.
    """

    family = 'AffineFlow'
    condition_type = AffineFlowCondition
    # Optional: a checkpoint of another configuration is then refused in one line.
    checkpoint_format = CheckpointFormat('AffineFlow', read_affine_flow_architecture, describe_affine_flow_architecture)
    lr_multiple = 1
    arbitrary_scale = False

    def __init__(
        self,
        in_nc: int = 3,
        scale: int = 2,
        num_steps: int = 4,
        features: int = 16,
        hidden_channels: int = 32,
        max_log_scale: float = 2.0,
        quant: int = 256,
    ) -> None:
        super().__init__()
        self.in_nc, self.scale, self.quant = in_nc, scale, quant
        channels = in_nc * scale * scale
        self.encoder = nn.Sequential(
            nn.Conv2d(in_nc, features, 3, padding=1), nn.ReLU(), nn.Conv2d(features, features, 3, padding=1)
        )
        self.steps = nn.ModuleList(
            ConditionalCoupling(channels, features, hidden_channels, max_log_scale) for _ in range(num_steps)
        )

    # ------------------------------------------------------------------ checks
    def _check_lq(self, lq: Tensor, out_size: OutputSize = None, gt: Tensor | None = None) -> None:
        """An LR batch of ``in_nc`` channels; ``out_size`` and ``gt`` (if given) exactly ``scale`` times it."""
        if lq.dim() != 4 or lq.shape[1] != self.in_nc:
            raise ValueError(f'AffineFlowNet expects an LR of shape (B, {self.in_nc}, h, w), got {tuple(lq.shape)}')
        hr = (lq.shape[2] * self.scale, lq.shape[3] * self.scale)
        if isinstance(out_size, HRWindow):
            whole = out_size.is_whole() and out_size.size == hr
        else:
            whole = out_size is None or tuple(int(s) for s in out_size) == hr
        if not whole:
            raise ValueError(f'AffineFlowNet is a fixed-scale flow ({self.scale}X): the HR must be {hr} for this LR')
        if gt is not None and tuple(gt.shape) != (lq.shape[0], self.in_nc, *hr):
            raise ValueError(f'AffineFlowNet needs gt exactly {self.scale}x the LR, got {tuple(gt.shape)}')

    # ------------------------------------------------------------------ protocol
    def condition(self, lq: Tensor) -> AffineFlowCondition:
        self._check_lq(lq)
        base = F.interpolate(lq, scale_factor=self.scale, mode='bilinear', align_corners=False)
        return AffineFlowCondition(lq_shape=tuple(lq.shape), base=base, features=self.encoder(lq))

    def _encode(
        self, lq: Tensor, gt: Tensor, cond: FlowCondition | None, out_size: OutputSize
    ) -> tuple[Tensor, Tensor]:
        """(z, log-determinant per image) of ``gt``."""
        self._check_lq(lq, out_size, gt)
        cond = self._resolve_cond(lq, cond)
        z = F.pixel_unshuffle(gt - cond.base, self.scale)
        logdet = gt.new_zeros(gt.shape[0])
        for step in self.steps:
            z, step_logdet = step.encode(z, cond.features)
            logdet = logdet + step_logdet
        return z, logdet

    def encode(self, lq: Tensor, gt: Tensor, cond: FlowCondition | None = None, out_size: OutputSize = None) -> Latents:
        return [self._encode(lq, gt, cond, out_size)[0]]

    def decode(
        self, lq: Tensor, latents: Latents, cond: FlowCondition | None = None, out_size: OutputSize = None
    ) -> Tensor:
        self._check_lq(lq, out_size)
        cond = self._resolve_cond(lq, cond)
        (z,) = latents
        for step in reversed(self.steps):
            z = step.decode(z, cond.features)
        return F.pixel_shuffle(z, self.scale) + cond.base

    def sampled_shapes(self, lq: Tensor, out_size: OutputSize) -> list[tuple[int, ...]]:
        """What ``BaseFlowNet.sample_latents`` draws: one map on the LR grid."""
        self._check_lq(lq, out_size)
        b, _, h, w = lq.shape
        return [(b, self.in_nc * self.scale**2, h, w)]

    def nll(
        self,
        lq: Tensor,
        gt: Tensor,
        cond: FlowCondition | None = None,
        dequantize: bool = False,
        generator: torch.Generator | None = None,
        out_size: OutputSize = None,
    ) -> Tensor:
        """Bits per HR pixel, shape (B,); ``dequantize`` adds U(-0.5, 0.5) / quant to every value of
        ``gt`` and its log-determinant, so the result is a discrete likelihood."""
        logdet = gt.new_zeros(gt.shape[0])
        if dequantize:
            device = generator.device if generator is not None else gt.device
            noise = torch.rand(gt.shape, generator=generator, device=device, dtype=gt.dtype).to(gt.device)
            gt = gt + (noise - 0.5) / self.quant
            logdet = logdet - math.log(self.quant) * gt[0].numel()
        z, flow_logdet = self._encode(lq, gt, cond, out_size)
        log_prior = (-0.5 * (z * z + math.log(2 * math.pi))).flatten(1).sum(1)
        return -(log_prior + flow_logdet + logdet) / (math.log(2.0) * gt.shape[2] * gt.shape[3])

    def initial_prior(self, lq: Tensor, cond: FlowCondition | None = None, out_size: OutputSize = None) -> Latents:
        """z0 of the learned prior: the encoding of the bilinearly upsampled LR (a zero residual)."""
        cond = self._resolve_cond(lq, cond)
        return self.encode(lq, cond.base, cond, out_size)

    def latent_channels(self) -> list[int]:
        return [self.in_nc * self.scale**2]

    def initialize_from_batch(self, lq: Tensor, gt: Tensor) -> bool:
        return False  # no data-dependent initialisation: every coupling starts as the identity
