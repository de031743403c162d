"""Grid periodicity: the share of an image's detail that repeats with the period of the patch grid.

Expectations come from the definition, not from the code: a zero-mean pattern q tiled on the grid
passes the p x p box high-pass unchanged (its box average is 0) and is the same at every patch, so
its energy e = mean(q^2) lands wholly in the periodic part; detail that ignores the grid (a photo)
contributes almost nothing there. The share of photo + pattern is therefore close to
(e + s0 d) / (e + d), with d the photo's detail energy and s0 its own share.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from basicsr.metrics import calculate_metric
from basicsr.utils.registry import METRIC_REGISTRY
from scipy.ndimage import uniform_filter

from flowprior_plugin.metrics.grid_periodicity_metric import calculate_grid_periodicity
from flowprior_plugin.metrics.grid_seam_metric import calculate_grid_seam


def photo() -> np.ndarray:
    return skimage.data.astronaut()[:240, :240, ::-1].astype(np.float64)  # BGR, as tensor2img gives


def detail_energy(img: np.ndarray, p: int = 3) -> float:
    detail = img - uniform_filter(img, size=(p, p, 1), mode='nearest')
    return float(np.mean(detail[p:-p, p:-p] ** 2))


def tiled(pattern: np.ndarray, height: int, width: int) -> np.ndarray:
    p = pattern.shape[0]
    return np.tile(pattern, (height // p + 1, width // p + 1))[:height, :width, None].repeat(3, axis=2)


def test_a_photo_has_almost_no_grid_periodic_detail():
    assert calculate_grid_periodicity(photo()) < 1e-3
    assert calculate_grid_periodicity(np.full((30, 30, 3), 77.0)) == 0.0  # no detail at all


@pytest.mark.parametrize('amplitude', [2.0, 5.0, 10.0])
def test_a_pattern_repeated_in_every_patch_takes_its_predicted_share(amplitude):
    base = photo()
    rng = np.random.default_rng(0)
    q = rng.standard_normal((3, 3))
    q = amplitude * (q - q.mean()) / q.std()
    e, d, s0 = float(np.mean(q**2)), detail_energy(base), calculate_grid_periodicity(base)
    share = calculate_grid_periodicity(base + tiled(q, *base.shape[:2]))
    predicted = (e + s0 * d) / (e + d)
    assert share == pytest.approx(predicted, rel=0.1), (share, predicted)
    # Where the grid starts does not matter: the same pattern shifted by one pixel.
    shifted = base + tiled(np.roll(q, (1, 2), axis=(0, 1)), *base.shape[:2])
    assert calculate_grid_periodicity(shifted) == pytest.approx(share, rel=0.1)


def test_independent_patch_offsets_are_seams_not_periodicity():
    """The two grid metrics are complementary: random per-patch offsets raise the seam ratio only."""
    base = photo()
    rng = np.random.default_rng(1)
    offsets = rng.normal(0, 10, size=(80, 80))
    noisy = base + np.kron(offsets, np.ones((3, 3)))[..., None]
    assert calculate_grid_seam(noisy) > 1.5 * calculate_grid_seam(base)
    assert calculate_grid_periodicity(noisy) < 1e-3
    # A repeated blob: a strong share, while the seam ratio cannot tell it from a photo.
    blob = np.array([[-1.0, 0.0, -1.0], [0.0, 4.0, 0.0], [-1.0, 0.0, -1.0]]) * 6
    blobs = base + tiled(blob, *base.shape[:2])
    assert calculate_grid_periodicity(blobs) > 0.3
    assert calculate_grid_seam(blobs) < calculate_grid_seam(base) * 1.2


def test_patch_size_is_the_period_looked_for():
    base = photo()
    q4 = np.random.default_rng(2).standard_normal((4, 4)) * 8
    q4 -= q4.mean()
    img = base + tiled(q4, *base.shape[:2])
    assert calculate_grid_periodicity(img, patch_size=4) > 10 * calculate_grid_periodicity(img, patch_size=3)


def test_registered_and_called_the_basicsr_way():
    assert METRIC_REGISTRY.get('calculate_grid_periodicity') is calculate_grid_periodicity
    img = photo().astype(np.uint8)
    value = calculate_metric({'img': img, 'img2': img, 'lq': img[::4, ::4]}, {'type': 'calculate_grid_periodicity'})
    assert value == pytest.approx(calculate_grid_periodicity(img))
    chw = calculate_grid_periodicity(img.transpose(2, 0, 1), input_order='CHW')
    assert chw == pytest.approx(calculate_grid_periodicity(img))
    assert 0.0 <= calculate_grid_periodicity(img, test_y_channel=True, crop_border=4) < 1e-3


@pytest.mark.parametrize(
    'kwargs,message',
    [
        ({'patch_size': 1}, 'patch_size must be an int >= 2'),
        ({'crop_border': -1}, 'crop_border must be an int >= 0'),
        ({'input_order': 'HW'}, "input_order must be 'HWC' or 'CHW'"),
        ({'crop_border': 10}, 'at least 3 patches'),
    ],
)
def test_bad_options_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        calculate_grid_periodicity(np.zeros((24, 24, 3)), **kwargs)
