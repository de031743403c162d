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

The HR size is ``lq * scale`` unless ``out_size=(H, W)`` is given to ``decode``,
``sample_latents`` and ``initial_prior``; only arbitrary-scale flows (``arbitrary_scale``, LINF)
accept another size, fixed-scale flows raise a ValueError. ``encode`` and ``nll`` read the size
from ``gt``.
"""

from __future__ import annotations

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

    def encode(self, lq: Tensor, gt: Tensor, cond: FlowCondition | None = None) -> Latents:
        """HR -> latents, deterministic (no dequantisation noise)."""

    def decode(
        self,
        lq: Tensor,
        latents: Latents,
        cond: FlowCondition | None = None,
        out_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Latents -> SR image (not clamped) of size ``out_size`` (HR height, width; None: lq *
        scale). Differentiable w.r.t. the latents; changes no parameter or buffer and never mutates
        ``latents``."""

    def sample_latents(
        self,
        lq: Tensor,
        temperature: float,
        generator: torch.Generator | None = None,
        cond: FlowCondition | None = None,
        out_size: tuple[int, int] | None = None,
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
    ) -> Tensor:
        """Negative log-likelihood in bits per HR pixel, one value per image, shape (B,).

        With ``dequantize`` the release's dequantisation noise (and its log-det term) is used,
        as in likelihood training."""

    def initial_prior(
        self, lq: Tensor, cond: FlowCondition | None = None, out_size: tuple[int, int] | None = None
    ) -> Latents:
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
