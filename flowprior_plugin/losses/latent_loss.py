"""Latent L1 loss: L1 between the predicted latents and the flow encoding of the real HR image.

A flow's latent is often a list of levels of different shapes (SRFlow at 4X: a 6-channel split
level and the 96-channel top level), so the loss takes a list of tensors (or one tensor), computes
L1 per level and sums the levels with weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn
from torch.nn import functional as F

_REDUCTIONS = ('mean', 'sum')


def _as_levels(x: torch.Tensor | Sequence[torch.Tensor], name: str) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in x):
        return list(x)
    raise ValueError(f'LatentL1Loss: {name} must be a Tensor or a list of Tensors, got {type(x).__name__}')


@LOSS_REGISTRY.register()
class LatentL1Loss(nn.Module):
    """Weighted sum over latent levels of the L1 distance between predicted and target latents.

    ``loss = loss_weight * sum_l level_weights[l] * L1(pred[l], target[l])``, where L1 is the mean
    (or sum) absolute difference over all elements of level l, batch included. With the mean,
    levels of different sizes count equally per level, not per element.

    Args:
        loss_weight (float): Multiplies the whole loss. Default: 1.0.
        reduction (str): 'mean' or 'sum' over the elements of each level. BasicSR's 'none' is not
            supported: levels have different shapes, so there is no single element-wise map to
            return. Default: 'mean'.
        level_weights (Sequence[float] | None): One weight per level, in the order the latents are
            given. Default: None (1 for every level).
    """

    def __init__(
        self,
        loss_weight: float = 1.0,
        reduction: str = 'mean',
        level_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f'LatentL1Loss: unsupported reduction {reduction!r}; supported: {list(_REDUCTIONS)} '
                "('none' cannot combine levels of different shapes)"
            )
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.level_weights = None if level_weights is None else [float(w) for w in level_weights]

    def forward(
        self, pred: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            pred (Tensor | list[Tensor]): Predicted latents, one tensor per level.
            target (Tensor | list[Tensor]): Target latents, same number of levels and shapes.

        Returns:
            Tensor: A scalar.

        Raises:
            ValueError: Different numbers of levels, a level whose shapes differ, no levels, or
                ``level_weights`` of the wrong length.
        """
        preds = _as_levels(pred, 'pred')
        targets = _as_levels(target, 'target')
        if len(preds) != len(targets):
            raise ValueError(f'LatentL1Loss: pred has {len(preds)} levels but target has {len(targets)}')
        if not preds:
            raise ValueError('LatentL1Loss: got no latent levels')
        weights = self.level_weights if self.level_weights is not None else [1.0] * len(preds)
        if len(weights) != len(preds):
            raise ValueError(
                f'LatentL1Loss: level_weights has {len(weights)} entries but the latents have {len(preds)} levels'
            )
        total = None
        for level, (p, t, w) in enumerate(zip(preds, targets, weights)):
            if p.shape != t.shape:
                raise ValueError(
                    f'LatentL1Loss: level {level} shapes differ: pred {tuple(p.shape)} vs target {tuple(t.shape)}'
                )
            term = w * F.l1_loss(p, t, reduction=self.reduction)
            total = term if total is None else total + term
        return self.loss_weight * total
