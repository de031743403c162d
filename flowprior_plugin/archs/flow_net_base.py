"""Behaviour our flow networks share, written once.

- :class:`CheckpointCheckedModule`: strict loading says in one line which architecture a
  checkpoint holds and which the options build, instead of torch's wall of key names.
- :class:`ActNormFlowNet`: flows with data-dependent ActNorm (SRFlow, HCFlow): initialisation from
  a first batch, and ``forward`` as the likelihood so DDP-wrapped training goes through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from flowprior_plugin.errors import CheckpointMismatchError
from flowprior_plugin.flow_protocol import FlowCondition, Latents
from flowprior_plugin.layers.flow_layers import ActNorm


class CheckpointCheckedModule(nn.Module):
    """A module whose strict ``load_state_dict`` first compares architectures.

    Subclasses implement :meth:`describe_checkpoint_mismatch`.
    """

    def describe_checkpoint_mismatch(self, state_dict: Mapping[str, Any]) -> str | None:
        """One message naming the checkpoint's architecture and ours, or None when they fit."""
        raise NotImplementedError

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """As :meth:`torch.nn.Module.load_state_dict`, but with ``strict`` a checkpoint of another
        configuration raises :class:`CheckpointMismatchError` naming both configurations.
        ``strict=False`` (a deliberate partial load) is passed on to torch unchanged."""
        if strict:
            message = self.describe_checkpoint_mismatch(state_dict)
            if message is not None:
                raise CheckpointMismatchError(message)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class ActNormFlowNet(CheckpointCheckedModule):
    """Base of fixed-scale flows with ActNorm layers (SRFlow, HCFlow).

    Subclasses provide the protocol's ``encode``, ``decode`` and ``nll`` plus ``latent_shapes(lq_shape)``,
    ``_check_lq(lq)`` and ``_resolve_cond(lq, cond)``; temperature sampling, the ActNorm init and
    ``forward`` are the same for all of them.
    """

    def sample_latents(
        self,
        lq: Tensor,
        temperature: float,
        generator: torch.Generator | None = None,
        cond: FlowCondition | None = None,
    ) -> Latents:
        """Latents of temperature sampling: every latent ~ N(0, temperature^2) (zeros at 0).

        Args:
            lq: LR batch; fixes the shapes, device and dtype.
            temperature: Standard deviation tau of the latents.
            generator: Random generator (any device; the draws move to lq's device). Default: None.
            cond: Checked against ``lq`` if given (the sampling itself needs no conditioning).
                Default: None.

        Returns:
            list[Tensor]: One tensor per latent level, in the flow's latent order.
        """
        self._check_lq(lq)
        if cond is not None:
            self._resolve_cond(lq, cond)
        shapes = self.latent_shapes(lq.shape)
        if temperature == 0:
            return [lq.new_zeros(shape) for shape in shapes]
        # Draw on the generator's device (a CPU generator may drive a CUDA model), then move.
        device = generator.device if generator is not None else lq.device
        return [
            (torch.randn(shape, generator=generator, device=device, dtype=lq.dtype) * temperature).to(lq.device)
            for shape in shapes
        ]

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

    def forward(
        self, lq: Tensor, gt: Tensor | None = None, latents: Latents | None = None, dequantize: bool = False
    ) -> Tensor:
        """With ``gt``: :meth:`nll` (so likelihood training can go through DDP's forward); else
        :meth:`decode` of ``latents`` (zeros, i.e. temperature 0, when None)."""
        if gt is not None:
            return self.nll(lq, gt, dequantize=dequantize)
        if latents is None:
            latents = self.sample_latents(lq, 0.0)
        return self.decode(lq, latents)
