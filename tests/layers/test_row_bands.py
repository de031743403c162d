"""Row-band evaluation equals the whole-image computation (SRFlow's tiled trunk relies on it)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_SRFLOW
from torch import nn

from flowprior_plugin.archs.srflow_arch import SRFlowNet
from flowprior_plugin.layers.row_bands import apply_in_row_bands


@pytest.mark.parametrize('band_rows', [1, 3, 7, 40])
def test_conv_stack_in_bands_equals_whole(band_rows):
    torch.manual_seed(0)
    stack = nn.Sequential(nn.Conv2d(3, 5, 3, 1, 1), nn.ReLU(), nn.Conv2d(5, 4, 3, 1, 1), nn.Conv2d(4, 2, 5, 1, 2))
    x = torch.randn(2, 3, 23, 11)
    whole = stack(x)
    banded = apply_in_row_bands(stack, x, band_rows, halo=4)
    assert banded.shape == whole.shape
    torch.testing.assert_close(banded, whole, rtol=0, atol=1e-6)


def test_too_small_a_halo_is_not_exact():
    # The check above could pass by accident if bands were never cut; a halo below the receptive
    # field must show the cut.
    torch.manual_seed(0)
    stack = nn.Sequential(nn.Conv2d(1, 1, 3, 1, 1), nn.Conv2d(1, 1, 3, 1, 1))
    x = torch.randn(1, 1, 16, 8)
    assert (apply_in_row_bands(stack, x, 4, halo=1) - stack(x)).abs().max() > 1e-4


def test_bad_band_arguments_are_refused():
    with pytest.raises(ValueError, match='band_rows'):
        apply_in_row_bands(nn.Identity(), torch.zeros(1, 1, 4, 4), 0, 1)


def test_srflow_trunk_in_bands_equals_whole():
    torch.manual_seed(0)
    options = {k: v for k, v in TINY_SRFLOW.items() if k != 'type'}
    net = SRFlowNet(**options).eval()
    lq = torch.rand(1, 3, 37, 21)
    with torch.no_grad():
        whole = net.RRDB.trunk(lq)
        banded = net.RRDB.trunk(lq, band_rows=5)
    for a, b in zip(whole, banded, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
