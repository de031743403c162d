"""LR-PSNR: the SR downscaled by MATLAB-style bicubic against the input LR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
from basicsr.metrics import calculate_metric
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import METRIC_REGISTRY

from flowprior_plugin.metrics.lr_psnr_metric import calculate_lr_psnr, matlab_downscale_uint8


@pytest.fixture(scope='module')
def hr() -> np.ndarray:
    """A real photo (offline in scikit-image), 128x96, BGR uint8 as BasicSR's tensor2img gives."""
    return np.ascontiguousarray(skimage.data.astronaut()[40:168, 180:276, ::-1])


@pytest.fixture(scope='module')
def lr(hr) -> np.ndarray:
    return matlab_downscale_uint8(hr, 4)


def test_sr_equal_to_hr_reproduces_the_lr_exactly(hr, lr):
    # The LR was made from the HR by the same MATLAB bicubic + uint8 rounding: a perfect match.
    assert lr.shape == (32, 24, 3)
    assert calculate_lr_psnr(hr, hr, lr) == math.inf


def test_lr_consistent_sr_scores_high_and_corrupted_sr_low(hr, lr):
    rng = np.random.default_rng(0)
    noisy = np.clip(hr + rng.normal(0, 2, hr.shape), 0, 255).round().astype(np.uint8)
    shifted = np.roll(hr, 4, axis=1)  # plausible-looking SR, but misaligned with its input
    very_noisy = np.clip(hr + rng.normal(0, 30, hr.shape), 0, 255).round().astype(np.uint8)
    consistent = calculate_lr_psnr(noisy, hr, lr)
    assert consistent > 45  # small HR noise averages out in the antialiased downscale
    assert calculate_lr_psnr(very_noisy, hr, lr) < 35
    assert calculate_lr_psnr(shifted, hr, lr) < 25


def test_bicubic_upscaling_is_not_perfectly_lr_consistent(lr):
    # MATLAB bicubic up then down is not the identity (about 36 dB here); a flow SR trained for LR
    # consistency can beat it, which is why papers report LR-PSNR near 50 dB.
    sr = np.clip(np.round(imresize(lr / 255.0, 4) * 255), 0, 255).astype(np.uint8)
    assert 30 < calculate_lr_psnr(sr, None, lr) < 40


def test_equals_a_hand_computed_psnr(hr, lr):
    rng = np.random.default_rng(1)
    sr = rng.integers(0, 256, hr.shape, dtype=np.uint8)
    down = np.clip(np.round(imresize(sr.astype(np.float32) / 255, 0.25) * 255), 0, 255).astype(np.uint8)
    mse = np.mean((down.astype(np.float64) - lr.astype(np.float64)) ** 2)
    assert calculate_lr_psnr(sr, hr, lr) == pytest.approx(10 * np.log10(255.0**2 / mse), abs=1e-9)


def test_scale_3_and_options_are_forwarded(hr):
    hr3 = hr[:96, :93]
    lr3 = matlab_downscale_uint8(hr3, 3)
    assert lr3.shape == (32, 31, 3)
    rng = np.random.default_rng(2)
    sr = np.clip(hr3 + rng.normal(0, 20, hr3.shape), 0, 255).round().astype(np.uint8)
    full = calculate_lr_psnr(sr, hr3, lr3)
    assert math.isfinite(full)
    chw = calculate_lr_psnr(sr.transpose(2, 0, 1), None, lr3.transpose(2, 0, 1), input_order='CHW')
    assert chw == pytest.approx(full)
    assert calculate_lr_psnr(sr, hr3, lr3, crop_border=2) != pytest.approx(full)
    assert calculate_lr_psnr(sr, hr3, lr3, test_y_channel=True) != pytest.approx(full)


def test_registered_and_called_through_basicsr(hr, lr):
    assert METRIC_REGISTRY.get('calculate_lr_psnr') is calculate_lr_psnr
    assert calculate_lr_psnr.__module__.startswith('flowprior_plugin.')
    sr = np.roll(hr, 1, axis=0)
    opt = {'type': 'calculate_lr_psnr', 'crop_border': 0, 'test_y_channel': False}
    got = calculate_metric(dict(img=sr, img2=hr, lq=lr), opt)
    assert got == pytest.approx(calculate_lr_psnr(sr, hr, lr))
    assert opt['type'] == 'calculate_lr_psnr'  # calculate_metric works on a copy


def test_missing_lq_is_a_clear_error(hr):
    with pytest.raises(ValueError, match='needs the LR input image'):
        calculate_lr_psnr(hr, hr)
    with pytest.raises(ValueError, match='needs the LR input image'):
        calculate_metric(dict(img=hr, img2=hr), {'type': 'calculate_lr_psnr'})


@pytest.mark.parametrize(
    ('sr_shape', 'lr_shape'),
    [((130, 96, 3), (32, 24, 3)), ((128, 96, 3), (32, 32, 3)), ((128, 96, 3), (30, 24, 3))],
)
def test_non_integer_or_unequal_factors_name_both_shapes(sr_shape, lr_shape):
    sr = np.zeros(sr_shape, np.uint8)
    lq = np.zeros(lr_shape, np.uint8)
    with pytest.raises(ValueError) as info:
        calculate_lr_psnr(sr, None, lq)
    assert str(sr_shape) in str(info.value) and str(lr_shape) in str(info.value)


def test_channel_mismatch_is_a_clear_error(hr, lr):
    with pytest.raises(ValueError, match='same channels'):
        calculate_lr_psnr(hr, hr, lr[..., :1])
