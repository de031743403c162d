"""The one interface every flow super-resolution network of this package implements.

The learned-prior model (``FlowPriorModel``) and likelihood training (``FlowSRModel``) talk to a
flow only through these methods, so adding a flow family never adds a branch to a model.

Latents are a list of tensors in the release's order (for SRFlow: split eps first, top z last).
Every method that depends on the LR image accepts an optional ``cond``: the object returned by
``condition(lq)``, which holds everything computed from the LR alone (encoder features, the
conditioning branch of every coupling). Pass it to reuse that work across an encode and decodes
of the same LR::

    cond = flow.condition(lq)                 # RRDB + coupling conditioning, once
    z0 = flow.initial_prior(lq, cond=cond)    # encode of the upsampled LR
    sr = flow.decode(lq, prior(lq, z0), cond=cond)
    samples = [flow.decode(lq, flow.sample_latents(lq, 0.9, cond=cond), cond=cond) for _ in range(8)]

The HR the latents describe is ``lq * scale`` unless ``out_size`` says otherwise: ``(H, W)`` for a
whole HR image of another size, or an :class:`HRWindow` for windows of larger HR images (training
crops as LINF-LP trains: the LR covers a whole HR crop, the target is a window of it). ``decode``,
``sample_latents`` and ``initial_prior`` read the size from ``out_size``; ``encode`` and ``nll``
read it from ``gt`` and take ``out_size`` only for a window. Only arbitrary-scale flows
(``arbitrary_scale``, LINF) accept another size or a window; fixed-scale flows raise a ValueError
(a window covering the whole ``lq * scale`` image is accepted by every flow).

Tiled prediction (:mod:`flowprior_plugin.tiling`, ``val.tile``, ``--tile``) is optional and needs
four hooks besides ``supports_tiling = True``: ``latent_strides()`` (HR pixels per latent cell of
each level, to slice whole-image latents), ``tile_alignment()`` (the HR grid tile borders sit on),
``tile_context(lq, hr_size)`` (work done once on the whole LR, e.g. an encoder whose receptive
field no tile margin covers) and ``tile_inputs(lq, context, box, hr_size)`` (the ``TileInputs``:
LR, conditioning and ``out_size`` that decode the HR ``box``). ``FlowNet`` gives defaults (each
tile conditions on its own LR crop); SRFlow cuts its RRDB features from the whole LR, LINF decodes
``HRWindow`` tiles of the whole image. A flow without ``supports_tiling`` gets a one-line error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

Latents = list[Tensor]

PROTOCOL_METHODS = (
    'condition',
    'encode',
    'decode',
    'sample_latents',
    'nll',
    'initial_prior',
    'latent_channels',
    'initialize_from_batch',
)
PROTOCOL_ATTRIBUTES = ('scale', 'lr_multiple', 'arbitrary_scale')


@dataclass
class FlowCondition:
    """Base of the LR-only conditioning a flow computes once and reuses.

    Subclasses add their cached tensors. ``lq_shape`` lets a flow reject a ``cond`` computed for a
    different LR image (a silent mix-up would decode with the wrong conditioning).
    """

    lq_shape: tuple[int, ...]

    def check_matches(self, lq: Tensor) -> None:
        if tuple(lq.shape) != tuple(self.lq_shape):
            raise ValueError(
                f'conditioning was computed for an LR of shape {tuple(self.lq_shape)}, '
                f'but this call got an LR of shape {tuple(lq.shape)}'
            )


@dataclass(frozen=True)
class HRWindow:
    """Where each HR target of a batch sits in the HR image its LR covers.

    The LR of sample ``b`` covers an HR image of ``full_size[b]`` pixels; the target is the
    ``size`` window whose top-left pixel is ``offset[b]`` in it. Windows share one size (they are
    batched), while full sizes and offsets may differ per sample (mixed scales).

    Attributes:
        size: (h, w) of every window.
        full_size: Long tensor (B, 2): (H, W) of each HR image.
        offset: Long tensor (B, 2): (top, left) of each window.
    """

    size: tuple[int, int]
    full_size: Tensor
    offset: Tensor

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f'HRWindow: size must be (h, w) with positive sides, got {self.size}')
        object.__setattr__(self, 'size', size)
        full, off = self.full_size, self.offset
        if full.dim() != 2 or full.shape[1] != 2 or off.shape != full.shape:
            raise ValueError(
                f'HRWindow: full_size and offset must both have shape (B, 2), got {tuple(full.shape)} and '
                f'{tuple(off.shape)}'
            )
        window = torch.tensor(size, device=full.device)
        if bool((off < 0).any()) or bool((off + window > full).any()):
            raise ValueError(
                f'HRWindow: a {size} window at offsets {off.tolist()} does not fit HR images of sizes {full.tolist()}'
            )

    @classmethod
    def from_batch(cls, gt: Tensor, full_size: Tensor, offset: Tensor) -> HRWindow:
        """The windows of a data batch: ``gt`` (B, C, h, w) and the dataset's ``hr_size`` / ``window``."""
        return cls(tuple(gt.shape[-2:]), full_size.to(torch.long).reshape(-1, 2), offset.to(torch.long).reshape(-1, 2))

    @property
    def batch(self) -> int:
        return int(self.full_size.shape[0])

    def is_whole(self) -> bool:
        """Whether every window is its whole HR image (then ``size`` alone says everything)."""
        window = torch.tensor(self.size, device=self.full_size.device)
        return bool((self.offset == 0).all()) and bool((self.full_size == window).all())


# What ``out_size`` may be: None (lq * scale), (H, W), or windows of larger HR images.
OutputSize = Sequence[int] | HRWindow | None


def output_hw(out_size: OutputSize) -> tuple[int, int] | None:
    """The (H, W) of the output ``out_size`` asks for (a window's size), or None."""
    if out_size is None:
        return None
    if isinstance(out_size, HRWindow):
        return out_size.size
    return int(out_size[0]), int(out_size[1])


@runtime_checkable
class FlowSR(Protocol):
    """A conditional normalizing flow HR <-> latents given LR.

    Attributes:
        scale (int): Upscaling factor of fixed-scale flows; the default output scale (when no
            ``out_size`` is given) of arbitrary-scale flows.
        lr_multiple (int): LR sides must be multiples of this; models reflect-pad the LR to it
            and crop the SR back (SRFlow: 2).
        arbitrary_scale (bool): Whether ``out_size`` may differ from ``lq * scale`` (LINF: True;
            SRFlow, HCFlow: False). Models then take the HR size from the gt when there is one.
    """

    scale: int
    lr_multiple: int
    arbitrary_scale: bool

    def condition(self, lq: Tensor) -> FlowCondition:
        """Compute everything that depends on the LR alone."""

    def encode(self, lq: Tensor, gt: Tensor, cond: FlowCondition | None = None, out_size: OutputSize = None) -> Latents:
        """HR -> latents, deterministic (no dequantisation noise). ``out_size``: None (``gt`` is
        the whole HR) or the :class:`HRWindow` that ``gt`` is."""

    def decode(
        self,
        lq: Tensor,
        latents: Latents,
        cond: FlowCondition | None = None,
        out_size: OutputSize = None,
    ) -> Tensor:
        """Latents -> SR image (not clamped) of size ``out_size`` (HR (height, width) or an
        :class:`HRWindow`; None: lq * scale). Differentiable w.r.t. the latents; changes no
        parameter or buffer and never mutates ``latents``."""

    def sample_latents(
        self,
        lq: Tensor,
        temperature: float,
        generator: torch.Generator | None = None,
        cond: FlowCondition | None = None,
        out_size: OutputSize = None,
    ) -> Latents:
        """Latents for temperature sampling as the release draws them (zeros at 0), shaped for
        an HR of size ``out_size`` (None: lq * scale)."""

    def nll(
        self,
        lq: Tensor,
        gt: Tensor,
        cond: FlowCondition | None = None,
        dequantize: bool = False,
        generator: torch.Generator | None = None,
        out_size: OutputSize = None,
    ) -> Tensor:
        """Negative log-likelihood in bits per HR pixel, one value per image, shape (B,); with an
        :class:`HRWindow` ``out_size``, of the window ``gt`` given the LR of the whole HR image.

        With ``dequantize`` the release's dequantisation noise (and its log-det term) is used,
        as in likelihood training."""

    def initial_prior(self, lq: Tensor, cond: FlowCondition | None = None, out_size: OutputSize = None) -> Latents:
        """The learned prior's initial latents z0 as the authors released them for this family
        (SRFlow: standardised encoding of the bilinearly upsampled LR; LINF: encoding of the
        residual of the upsampled LR), for an HR of size ``out_size`` (None: lq * scale)."""

    def latent_channels(self) -> list[int]:
        """Channel count of each latent level, in latent order."""

    def initialize_from_batch(self, lq: Tensor, gt: Tensor) -> bool:
        """Data-dependent initialisation (ActNorm) from a first batch, if the flow has one and it
        has not happened yet (loaded weights count as initialised). Returns True if it ran."""


def check_flow_protocol(net: object, option_name: str = 'network') -> None:
    """Raise a clear TypeError if ``net`` does not implement :class:`FlowSR`.

    Args:
        net: The network to check (a DDP wrapper is not unwrapped here).
        option_name: The option section that built it, named in the message.
    """
    missing = [name for name in PROTOCOL_METHODS if not callable(getattr(net, name, None))]
    missing += [name for name in PROTOCOL_ATTRIBUTES if not hasattr(net, name)]
    if missing:
        raise TypeError(
            f'{option_name}: {type(net).__name__} is not a flow SR network: it lacks '
            f'{", ".join(missing)} (see flowprior_plugin.flow_protocol.FlowSR)'
        )
