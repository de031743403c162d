"""LatentL1Loss: per-level L1, level weights, loss weight, and clear errors."""

from __future__ import annotations

import pytest
import torch
from basicsr.losses import build_loss
from basicsr.utils.registry import LOSS_REGISTRY

from flowprior_plugin.losses.latent_loss import LatentL1Loss


def test_hand_computed_value_with_level_and_loss_weights():
    # Level 0: |1 - 0| everywhere -> mean 1 (sum 8). Level 1: |3 - 1| everywhere -> mean 2 (sum 32).
    pred = [torch.ones(1, 2, 2, 2), torch.full((1, 1, 4, 4), 3.0)]
    target = [torch.zeros(1, 2, 2, 2), torch.ones(1, 1, 4, 4)]
    assert LatentL1Loss()(pred, target).item() == pytest.approx(1 + 2)
    weighted = LatentL1Loss(loss_weight=3.0, level_weights=[0.5, 2.0])
    assert weighted(pred, target).item() == pytest.approx(3 * (0.5 * 1 + 2.0 * 2))
    summed = LatentL1Loss(reduction='sum', level_weights=(1.0, 0.25))
    assert summed(pred, target).item() == pytest.approx(8 + 0.25 * 32)


def test_random_levels_against_numpy_style_computation():
    # SRFlow-like 4X latents: a 6-channel split level and the 96-channel top level.
    pred = [torch.randn(2, 6, 16, 16), torch.randn(2, 96, 8, 8)]
    target = [torch.randn(2, 6, 16, 16), torch.randn(2, 96, 8, 8)]
    expected = sum(w * (p - t).abs().mean() for w, p, t in zip([0.3, 1.7], pred, target))
    got = LatentL1Loss(level_weights=[0.3, 1.7])(pred, target)
    assert got.shape == ()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_single_tensor_and_gradient():
    pred = torch.randn(2, 27, 5, 5, requires_grad=True)
    target = torch.randn(2, 27, 5, 5)
    loss = LatentL1Loss(loss_weight=2.0)(pred, target)
    assert loss.item() == pytest.approx(2 * (pred - target).abs().mean().item(), rel=1e-6)
    loss.backward()
    expected_grad = 2.0 * torch.sign(pred.detach() - target) / pred.numel()
    assert torch.allclose(pred.grad, expected_grad)


def test_identical_latents_give_zero():
    z = [torch.randn(1, 6, 8, 8), torch.randn(1, 96, 4, 4)]
    assert LatentL1Loss()(z, [t.clone() for t in z]).item() == 0.0


def test_registered_and_built_by_basicsr():
    assert LOSS_REGISTRY.get('LatentL1Loss') is LatentL1Loss
    assert LatentL1Loss.__module__.startswith('flowprior_plugin.')
    loss = build_loss({'type': 'LatentL1Loss', 'loss_weight': 0.5, 'level_weights': [1, 2]})
    assert isinstance(loss, LatentL1Loss) and loss.loss_weight == 0.5 and loss.level_weights == [1.0, 2.0]


def test_level_count_mismatch_names_both_counts():
    with pytest.raises(ValueError, match='pred has 2 levels but target has 1'):
        LatentL1Loss()([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)])


def test_shape_mismatch_names_the_level_and_shapes():
    pred = [torch.zeros(1, 6, 8, 8), torch.zeros(1, 96, 4, 4)]
    target = [torch.zeros(1, 6, 8, 8), torch.zeros(1, 96, 4, 5)]
    with pytest.raises(ValueError, match=r'level 1 shapes differ: pred \(1, 96, 4, 4\) vs target \(1, 96, 4, 5\)'):
        LatentL1Loss()(pred, target)


def test_other_errors():
    with pytest.raises(ValueError, match='level_weights has 3 entries but the latents have 2 levels'):
        LatentL1Loss(level_weights=[1, 1, 1])([torch.zeros(1)] * 2, [torch.zeros(1)] * 2)
    with pytest.raises(ValueError, match='no latent levels'):
        LatentL1Loss()([], [])
    with pytest.raises(ValueError, match='unsupported reduction'):
        LatentL1Loss(reduction='none')
    with pytest.raises(ValueError, match='must be a Tensor or a list of Tensors'):
        LatentL1Loss()({'z': torch.zeros(1)}, [torch.zeros(1)])
