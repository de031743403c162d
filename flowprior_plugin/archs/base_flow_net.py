"""Behaviour our flow networks share, written once.

- :class:`BaseFlowNet`: what every flow network of this package shares (the family name its
  messages use, the check of a reused conditioning).
- :class:`ActNormFlowNet`: fixed-scale flows with data-dependent ActNorm (SRFlow, HCFlow): input
  checks, temperature sampling, the learned prior's initial latents, the start of the likelihood,
  initialisation from a first batch, and ``forward`` as the likelihood so DDP-wrapped training
  goes through it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowprior_plugin.flow_protocol import FlowCondition, HRWindow, Latents, OutputSize
from flowprior_plugin.layers.flow_layers import ActNorm, standardize_per_pixel
from flowprior_plugin.tiling import TileInputs


def gaussian_latents(
    shapes: Sequence[Sequence[int]], temperature: float, generator: torch.Generator | None, like: Tensor
) -> Latents:
    """Temperature sampling: one N(0, temperature^2) tensor per shape (zeros at 0), on ``like``'s
    device and dtype. The draw happens on the generator's device (a CPU generator may drive a CUDA
    model), then moves."""
    if temperature == 0:
        return [like.new_zeros(tuple(shape)) for shape in shapes]
    device = generator.device if generator is not None else like.device
    return [
        (torch.randn(tuple(shape), generator=generator, device=device, dtype=like.dtype) * temperature).to(like.device)
        for shape in shapes
    ]


class BaseFlowNet(nn.Module):
    """Base of every flow network of this package (SRFlow, HCFlow, LINF).

    Attributes:
        family (str): The family name in messages ('SRFlow'); the class is ``family + 'Net'``.
        condition_type (type[FlowCondition]): What the subclass's ``condition(lq)`` returns.
    """

    family: ClassVar[str]
    condition_type: ClassVar[type[FlowCondition]]
    # Tiled prediction (flowprior_plugin.tiling) works with every flow of this package: the
    # optional tiling hooks of the protocol are below, with defaults a subclass may override.
    supports_tiling: ClassVar[bool] = True

    def forward(
        self,
        lq: Tensor,
        gt: Tensor | None = None,
        latents: Latents | None = None,
        dequantize: bool = False,
        out_size: OutputSize = None,
    ) -> Tensor:
        """The protocol's ``forward``: with ``gt``, ``nll`` (likelihood training calls the
        DDP-wrapped module, whose gradients DDP synchronises only through ``forward``); else
        ``decode`` of ``latents`` at ``out_size`` (zeros, i.e. temperature 0, when None)."""
        if gt is not None:
            return self.nll(lq, gt, dequantize=dequantize, out_size=out_size)
        if latents is None:
            latents = self.sample_latents(lq, 0.0, out_size=out_size)
        return self.decode(lq, latents, out_size=out_size)

    def sample_latents(
        self,
        lq: Tensor,
        temperature: float,
        generator: torch.Generator | None = None,
        cond: FlowCondition | None = None,
        out_size: OutputSize = None,
    ) -> Latents:
        """Latents of temperature sampling as the releases draw them: every value ~ N(0,
        temperature^2), independently (zeros at 0), shaped by the subclass's ``sampled_shapes``.

        Args:
            lq: LR batch; fixes the shapes, device and dtype.
            temperature: Standard deviation tau of the latents.
            generator: Random generator (any device; the draws move to lq's device). Default: None.
            cond: Checked against ``lq`` if given (the sampling itself needs no conditioning).
                Default: None.
            out_size: The HR the latents describe (see :mod:`flowprior_plugin.flow_protocol`).
                Default: None (``lq * scale``).

        Returns:
            list[Tensor]: One tensor per latent level, in the flow's latent order.
        """
        self._check_lq(lq)
        shapes = self.sampled_shapes(lq, out_size)
        if cond is not None:
            self._resolve_cond(lq, cond)
        return gaussian_latents(shapes, temperature, generator, like=lq)

    # ------------------------------------------------------------------ tiling hooks
    def latent_strides(self) -> list[int]:
        """HR pixels per latent cell of each level, in latent order (SRFlow 4X: [2, 8]); read from
        the latent shapes of a small LR. Tiled prediction slices whole-image latents with them."""
        side = 8 * self.lr_multiple
        probe = torch.empty(1, self.in_nc, side, side, device='meta')
        return [side * self.scale // shape[-2] for shape in self.sampled_shapes(probe, None)]

    def tile_alignment(self) -> int:
        """HR grid (pixels) that tile borders sit on: whole LR pixels (``lr_multiple`` of them) and
        whole cells of every latent level."""
        return math.lcm(self.scale * self.lr_multiple, *self.latent_strides())

    def tile_context(self, lq: Tensor, hr_size: Sequence[int]) -> Any:
        """What tiled prediction computes once on the whole LR and hands to every
        :meth:`tile_inputs`. Here nothing: each tile conditions on its own LR crop."""
        return None

    def tile_inputs(self, lq: Tensor, context: Any, box: Sequence[int], hr_size: Sequence[int]) -> TileInputs:
        """The flow's inputs for the HR ``box`` (top, bottom, left, right, on :meth:`tile_alignment`)
        of a whole image of ``hr_size``: here the LR crop under the box and its own conditioning,
        so the tile decodes as a small image (its margin absorbs the border effects)."""
        top, bottom, left, right = (int(v) // self.scale for v in box)
        crop = lq[..., top:bottom, left:right]
        return TileInputs(crop, self.condition(crop), None, tuple(box))

    def _resolve_cond(self, lq: Tensor, cond: FlowCondition | None) -> FlowCondition:
        """``cond`` checked against ``lq``, or ``condition(lq)`` when None."""
        if cond is None:
            return self.condition(lq)
        if not isinstance(cond, self.condition_type):
            raise TypeError(
                f'{self.family}Net needs the {self.condition_type.__name__} from its condition(), '
                f'got {type(cond).__name__}'
            )
        cond.check_matches(lq)
        return cond


class ActNormFlowNet(BaseFlowNet):
    """Base of fixed-scale flows with ActNorm layers (SRFlow, HCFlow).

    Subclasses provide the protocol's ``condition``, ``encode``, ``decode`` and ``nll`` plus
    ``latent_shapes(lq_shape)``, and set ``in_nc``, ``scale`` and ``quant``; the input checks,
    temperature sampling, the initial prior, the start of the likelihood, the ActNorm init and
    ``forward`` are the same for all of them.

    Attributes:
        dequantization_offset (float): Subtracted from the U(0, 1) dequantisation noise before
            it is divided by ``quant`` (SRFlow centres it: 0.5; HCFlow does not: 0).
    """

    dequantization_offset: ClassVar[float] = 0.0
    # Fixed-scale flows: the HR is always lq * scale (the protocol's out_size must say the same).
    arbitrary_scale: ClassVar[bool] = False

    # ------------------------------------------------------------------ checks
    def _check_out_size(self, lq: Tensor, out_size: OutputSize) -> None:
        """Reject an ``out_size`` other than ``lq * scale``: this flow has one fixed scale and
        works on whole HR images (an :class:`HRWindow` passes only when it is the whole image)."""
        if out_size is None:
            return
        expected = (lq.shape[-2] * self.scale, lq.shape[-1] * self.scale)
        if isinstance(out_size, HRWindow):
            if out_size.is_whole() and out_size.size == expected:
                return
            raise ValueError(
                f'{self.family}Net is a fixed-scale flow ({self.scale}X) on whole HR images; it cannot take '
                f'{out_size.size} windows of HR images of sizes {out_size.full_size.tolist()} (train it on whole '
                'crops: gt exactly scale x lq)'
            )
        if tuple(int(s) for s in out_size) != expected:
            raise ValueError(
                f'{self.family}Net is a fixed-scale flow ({self.scale}X): for an LR of shape {tuple(lq.shape)} '
                f'the output size must be {expected}, got out_size={tuple(out_size)}'
            )

    @property
    def _hr_channels(self) -> int:
        """Channels of the HR image (those of the LR unless a subclass says otherwise)."""
        return self.in_nc

    def _check_lq(self, lq: Tensor) -> None:
        if lq.dim() != 4 or lq.shape[1] != self.in_nc:
            raise ValueError(f'{self.family}Net expects an LR of shape (B, {self.in_nc}, h, w), got {tuple(lq.shape)}')

    def _check_gt(self, lq: Tensor, gt: Tensor) -> None:
        b, _, h, w = lq.shape
        expected = (b, self._hr_channels, h * self.scale, w * self.scale)
        if tuple(gt.shape) != expected:
            raise ValueError(
                f'{self.family}Net at {self.scale}X needs gt exactly {self.scale}x the LR: LR {tuple(lq.shape)} '
                f'needs gt of shape {expected}, got {tuple(gt.shape)}'
            )

    def _check_latents(self, lq: Tensor, latents: Latents) -> None:
        expected = self.latent_shapes(lq.shape)
        got = [tuple(z.shape) for z in latents]
        if got != expected:
            raise ValueError(
                f'{self.family}Net at {self.scale}X expects latents of shapes {expected} for an LR of shape '
                f'{tuple(lq.shape)}, got {got}'
            )

    # ------------------------------------------------------------------ protocol
    def sampled_shapes(self, lq: Tensor, out_size: OutputSize) -> list[tuple[int, ...]]:
        """Shapes of the latents for ``lq`` and ``out_size``, which must be ``lq * scale`` here."""
        self._check_out_size(lq, out_size)
        return self.latent_shapes(lq.shape)

    def initial_prior(self, lq: Tensor, cond: FlowCondition | None = None, out_size: OutputSize = None) -> Latents:
        """Initial latents z0 of the learned prior: the encoding of the bilinearly upsampled LR
        (align_corners False), each level standardised per pixel across channels,
        ``(z - mean_c) / (std_c + 1e-8)`` (unbiased std).

        Args:
            lq: LR batch (B, in_nc, h, w).
            cond: ``condition(lq)`` to reuse; computed when None. Default: None.
            out_size: HR (height, width); must be ``lq * scale`` (ValueError otherwise).
                Default: None.

        Returns:
            list[Tensor]: The latents in the flow's latent order, standardised.
        """
        self._check_lq(lq)
        self._check_out_size(lq, out_size)
        up = F.interpolate(
            lq, size=(lq.shape[2] * self.scale, lq.shape[3] * self.scale), mode='bilinear', align_corners=False
        )
        return [standardize_per_pixel(z) for z in self.encode(lq, up, cond)]

    def _start_nll(
        self,
        lq: Tensor,
        gt: Tensor,
        cond: FlowCondition | None,
        dequantize: bool,
        generator: torch.Generator | None,
        out_size: OutputSize = None,
    ) -> tuple[Tensor, FlowCondition, Tensor]:
        """The start of :meth:`nll`: checked inputs, the condition, and the dequantisation.

        Args:
            lq: LR batch (B, in_nc, h, w).
            gt: HR batch (B, C, h*scale, w*scale) in [0, 1].
            cond: ``condition(lq)`` to reuse; computed when None.
            dequantize: Add ``(U(0, 1) - dequantization_offset) / quant`` noise to gt and its
                ``-log(quant) * H * W`` log-det term.
            generator: Random generator of the noise (any device; the draw moves to gt's device).
            out_size: None, or a whole-image :class:`HRWindow` (see :meth:`_check_out_size`).

        Returns:
            tuple: (gt, dequantised if asked; the condition; the log-det so far, shape (B,)).
        """
        self._check_lq(lq)
        self._check_gt(lq, gt)
        self._check_out_size(lq, out_size)
        cond = self._resolve_cond(lq, cond)
        num_pixels = gt.shape[2] * gt.shape[3]
        logdet = gt.new_zeros(gt.shape[0])
        if dequantize:
            device = generator.device if generator is not None else gt.device
            noise = torch.rand(gt.shape, generator=generator, device=device, dtype=gt.dtype).to(gt.device)
            gt = gt + (noise - self.dequantization_offset) / self.quant
            logdet = logdet - math.log(self.quant) * num_pixels
        return gt, cond, logdet

    @staticmethod
    def _bits_per_pixel(objective: Tensor, gt: Tensor) -> Tensor:
        """Negative log-likelihood ``objective`` (nats per image) in bits per HR pixel (H*W of gt)."""
        return -objective / (math.log(2.0) * (gt.shape[2] * gt.shape[3]))

    def initialize_from_batch(self, lq: Tensor, gt: Tensor) -> bool:
        """Run the ActNorm data-dependent init on a batch if any ActNorm is uninitialised.

        Loaded weights count as initialised and are never overwritten (each ActNorm only
        initialises itself while its flag is unset).

        Args:
            lq: LR batch.
            gt: HR batch matching ``lq``.

        Returns:
            bool: True if the init ran.
        """
        if all(m.initialized for m in self.modules() if isinstance(m, ActNorm)):
            return False
        was_training = self.training
        self.train()
        try:
            with torch.no_grad():
                self.encode(lq, gt)
        finally:
            self.train(was_training)
        return True
