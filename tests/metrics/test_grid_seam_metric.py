"""Grid-seam ratio: squared steps across a patch grid over squared steps inside the patches.

Most expectations are exact by construction. The smooth test image is a sum of sinusoids with
periods 7 (columns) and 11 (rows), sized so that the number of steps in each direction is a multiple
of lcm(3, 4, period): every step position mod the period then occurs equally often among the grid
steps and among the inside steps (7 and 11 are coprime with 3 and 4), so its ratio is exactly 1 and
its mean squared steps are known in closed form (``SMOOTH_INSIDE``). Independent per-block offsets of
standard deviation s add 2 s^2 to the mean squared step across each block boundary and nothing
inside, so the predicted ratio is 1 + 4 s^2 / SMOOTH_INSIDE. The realised offsets fluctuate (about
1800 block edges per direction, plus a zero-mean cross term with the image's own steps), which is
what the 25 % tolerance on the predicted excess covers (about 4 standard deviations at s = 5).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
from basicsr.metrics import calculate_metric
from basicsr.utils.registry import METRIC_REGISTRY

from flowprior_plugin.metrics.grid_seam_metric import calculate_grid_seam

HEIGHT, WIDTH = 265, 253  # 264 = 2 * lcm(3, 4, 11) row steps, 252 = 3 * lcm(3, 4, 7) column steps
AMP_X, PERIOD_X, AMP_Y, PERIOD_Y = 40.0, 7, 30.0, 11
# Mean of (A sin(2 pi (x + 1) / T) - A sin(2 pi x / T))^2 over a period is 2 A^2 sin^2(pi / T);
# this is I_h + I_v of the smooth image (and B_h + B_v, as its ratio is exactly 1).
SMOOTH_INSIDE = 2 * AMP_X**2 * math.sin(math.pi / PERIOD_X) ** 2 + 2 * AMP_Y**2 * math.sin(math.pi / PERIOD_Y) ** 2
SEAM_TOLERANCE = 0.25  # of the predicted excess; see the module docstring


def smooth(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A float grey BGR image in [58, 198]: two sinusoids, no structure tied to any 3- or 4-grid."""
    y, x = np.mgrid[:height, :width]
    grey = 128 + AMP_X * np.sin(2 * np.pi * x / PERIOD_X) + AMP_Y * np.sin(2 * np.pi * y / PERIOD_Y)
    return np.repeat(grey[..., None], 3, axis=2)


def block_offsets(
    shape: tuple[int, int], patch: int, std: float, seed: int, offset: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """(h, w, 1) map with an independent N(0, std^2) value per patch x patch block of the given grid."""
    rng = np.random.default_rng(seed)
    height, width = shape
    values = rng.normal(0.0, std, (height // patch + 2, width // patch + 2, 1))
    full = np.repeat(np.repeat(values, patch, axis=0), patch, axis=1)
    # Block edges fall after rows/columns i with (i - offset) % patch == patch - 1.
    return full[patch - offset[0] % patch :][:height, patch - offset[1] % patch :][:, :width]


def seam_prediction(std: float) -> float:
    return 1 + 4 * std**2 / SMOOTH_INSIDE


@pytest.fixture(scope='module')
def photo() -> np.ndarray:
    """scikit-image's astronaut (offline), 512x512, BGR uint8 as BasicSR's tensor2img gives."""
    return np.ascontiguousarray(skimage.data.astronaut()[..., ::-1])


def test_linear_ramps_score_exactly_one():
    # Every horizontal step is 2 and every vertical step 3, on and off the grid alike.
    y, x = np.mgrid[:20, :31]
    ramp = np.repeat((10 + 2 * x + 3 * y)[..., None], 3, axis=2).astype(np.uint8)
    assert calculate_grid_seam(ramp) == 1.0
    assert calculate_grid_seam(ramp[..., 0]) == 1.0  # a 2-D grey image is accepted
    # Varying along one direction only: per-direction ratios would divide by zero, the sum does not.
    assert calculate_grid_seam(np.repeat((4 * x)[..., None], 3, axis=2).astype(np.uint8), offset=1) == 1.0


def test_quantised_ramp_depends_on_its_step_period():
    x = np.tile(np.arange(31), (12, 1))
    # One grey level every 2 pixels: over 30 column steps (a multiple of 6) the steps are spread
    # evenly over the 3 grid phases, so grid and inside means are both 1/2.
    assert calculate_grid_seam((x // 2).astype(np.uint8)) == pytest.approx(1.0, abs=1e-12)
    # One grey level every 3 pixels, on the grid: a pure seam lattice (documented limit of the metric).
    staircase = (x // 3).astype(np.uint8)  # steps between columns 3k + 2 and 3k + 3
    assert calculate_grid_seam(staircase) == math.inf
    assert calculate_grid_seam(staircase, offset=(0, 1)) == 0.0  # all steps inside the shifted patches


def test_smooth_image_scores_exactly_one_at_every_phase_and_patch_size():
    image = smooth()
    for offset in [(0, 0), (1, 2), (2, 1)]:
        assert calculate_grid_seam(image, offset=offset) == pytest.approx(1.0, abs=1e-12)
    assert calculate_grid_seam(image, patch_size=4) == pytest.approx(1.0, abs=1e-12)
    # uint8 rounding adds about 1/6 grey level^2 of noise per step; still no grid structure.
    assert calculate_grid_seam(np.round(image).astype(np.uint8)) == pytest.approx(1.0, abs=0.01)


def test_natural_photo_scores_about_one(photo):
    # A photo has no structure tied to a 3-grid (its JPEG history is on an 8-grid, coprime with 3).
    # The deviation from 1 is the sampling noise of a heavy-tailed mean (strong edges) over ~175k
    # grid steps; the three grid phases split the same steps, so they must straddle 1. The
    # tolerance of 0.05 is a few times that noise and well below the 3x3 seams of the next test.
    ratios = [calculate_grid_seam(photo, offset=offset) for offset in range(3)]
    for ratio in ratios:
        assert ratio == pytest.approx(1.0, abs=0.05)
    assert min(ratios) < 1 < max(ratios)
    assert calculate_grid_seam(photo, test_y_channel=True) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize('std', [5.0, 10.0, 20.0])
def test_independent_block_offsets_match_the_predicted_excess(std):
    seamed = smooth() + block_offsets((HEIGHT, WIDTH), 3, std, seed=int(std))
    ratio = calculate_grid_seam(seamed)
    expected = seam_prediction(std)  # 1.13, 1.54, 3.15
    assert ratio - 1 == pytest.approx(expected - 1, rel=SEAM_TOLERANCE)


def test_grid_artifacts_on_a_photo_grow_with_the_offset_size(photo):
    # Darken/compress the photo into [25, 229] so that offsets up to +-16 never clip; integer
    # offsets keep it exact uint8. One random pattern in {-1, 0, 1} per 3x3 block, scaled.
    base = np.round(photo * 0.8 + 25).astype(np.int64)
    pattern = np.random.default_rng(0).integers(-1, 2, (171, 171, 1))
    pattern = np.repeat(np.repeat(pattern, 3, axis=0), 3, axis=1)[:512, :512]
    steps = base.astype(np.float64)
    mean_step = (np.mean(np.diff(steps, axis=0) ** 2) + np.mean(np.diff(steps, axis=1) ** 2)) / 2
    clean = calculate_grid_seam(base.astype(np.uint8))
    ratios = []
    for size in (4, 8, 16):
        seamed = base + size * pattern
        assert seamed.min() >= 0 and seamed.max() <= 255
        ratio = calculate_grid_seam(seamed.astype(np.uint8))
        # Offsets of variance size^2 * 2/3 add 2 * variance / mean_step to the clean ratio.
        excess = 2 * size**2 * (2 / 3) / mean_step  # about 0.1, 0.4 and 1.6 here
        assert ratio - clean == pytest.approx(excess, rel=SEAM_TOLERANCE)
        ratios.append(ratio)
    assert ratios[0] > 1.05 and ratios[0] < ratios[1] < ratios[2]


def test_seams_on_a_shifted_grid_are_found_only_at_their_offset():
    std = 10.0
    seamed = smooth() + block_offsets((HEIGHT, WIDTH), 3, std, seed=1, offset=(1, 1))
    assert calculate_grid_seam(seamed, offset=(1, 1)) - 1 == pytest.approx(seam_prediction(std) - 1, rel=SEAM_TOLERANCE)
    # At offset 0 the grid steps miss every seam and half the inside steps carry one (+s^2 per
    # direction on average): SMOOTH_INSIDE / (SMOOTH_INSIDE + 2 s^2), below 1.
    below = SMOOTH_INSIDE / (SMOOTH_INSIDE + 2 * std**2)
    ratio = calculate_grid_seam(seamed)
    assert ratio < 1
    assert 1 - ratio == pytest.approx(1 - below, rel=SEAM_TOLERANCE)


def test_seams_of_period_4_are_not_seen_at_period_3():
    std = 10.0
    seamed = smooth() + block_offsets((HEIGHT, WIDTH), 4, std, seed=2)
    assert calculate_grid_seam(seamed, patch_size=4) - 1 == pytest.approx(seam_prediction(std) - 1, rel=SEAM_TOLERANCE)
    # Period 4 against period 3: a quarter of the grid steps and a quarter of the inside steps
    # are seams (a 12-periodic pattern), so both means rise alike and the ratio stays at 1.
    assert abs(calculate_grid_seam(seamed, patch_size=3) - 1) < SEAM_TOLERANCE * (seam_prediction(std) - 1)


def test_flat_images():
    flat = np.full((12, 12, 3), 77, np.uint8)
    assert calculate_grid_seam(flat) == 1.0  # no variation at all: no seams
    assert calculate_grid_seam(flat, test_y_channel=True) == 1.0
    # Only steps on the grid: a flat colour per 3x3 block (the extreme grid artifact).
    blocks = np.kron(np.arange(16).reshape(4, 4) * 10, np.ones((3, 3)))[..., None].astype(np.uint8)
    assert calculate_grid_seam(blocks) == math.inf
    assert calculate_grid_seam(blocks, offset=(1, 1)) == 0.0  # shifted grid: every step is inside


def test_crop_border_removes_the_border_and_keeps_the_grid():
    # A seam-free smooth image (exact 1 when cropped) framed by 4 seamed pixels on each side.
    border = 4
    height, width = HEIGHT + 2 * border, WIDTH + 2 * border
    framed = np.pad(smooth(), ((border, border), (border, border), (0, 0)), mode='reflect')
    frame = np.ones((height, width, 1), bool)
    frame[border:-border, border:-border] = False
    framed = framed + frame * block_offsets((height, width), 3, 40.0, seed=3)
    assert calculate_grid_seam(framed) > 1.1
    assert calculate_grid_seam(framed, crop_border=border) == pytest.approx(1.0, abs=1e-12)

    # The grid stays in uncropped coordinates: seams at offset 0 of a 267x255 image (one crop
    # pixel leaves 264 row and 252 column steps, as above) are found at offset 0 after cropping 1.
    std = 10.0
    seamed = smooth(HEIGHT + 2, WIDTH + 2) + block_offsets((HEIGHT + 2, WIDTH + 2), 3, std, seed=4)
    assert calculate_grid_seam(seamed, crop_border=1) - 1 == pytest.approx(seam_prediction(std) - 1, rel=SEAM_TOLERANCE)
    assert calculate_grid_seam(seamed, crop_border=1, offset=1) < 1


def test_y_channel():
    seams = block_offsets((HEIGHT, WIDTH), 3, 10.0, seed=5)
    # Grey image: Y = 16 + 0.8588 * grey is affine, and the ratio ignores scale and brightness.
    grey = smooth() + seams
    assert calculate_grid_seam(grey, test_y_channel=True) == pytest.approx(calculate_grid_seam(grey), rel=1e-6)
    # Seams in chroma only: +t on R and -t * 65.481 / 24.966 on B leave BT.601 Y unchanged.
    chroma = smooth().copy()
    chroma[..., 2:3] += seams
    chroma[..., 0:1] -= seams * 65.481 / 24.966
    assert calculate_grid_seam(chroma) > 1.5
    assert calculate_grid_seam(chroma, test_y_channel=True) == pytest.approx(1.0, abs=1e-6)


def test_chw_input_order():
    seamed = smooth() + block_offsets((HEIGHT, WIDTH), 3, 10.0, seed=6)
    assert calculate_grid_seam(seamed.transpose(2, 0, 1), input_order='CHW') == calculate_grid_seam(seamed)


def test_relative_to_reference():
    std = 10.0
    hr = smooth() + block_offsets((HEIGHT, WIDTH), 3, std, seed=7)
    sr = 2 * hr  # the same steps, doubled: the same absolute ratio
    absolute = calculate_grid_seam(sr, hr)
    assert absolute > 1.3  # predicted about 1.54; img2 is ignored by default
    assert calculate_grid_seam(sr, hr, relative_to_reference=True) == pytest.approx(1.0, abs=1e-12)
    # A seam-free HR scores exactly 1, so the relative value is the SR's own ratio.
    assert calculate_grid_seam(sr, smooth(), relative_to_reference=True) == pytest.approx(absolute, rel=1e-12)
    with pytest.raises(ValueError, match='needs the HR image img2'):
        calculate_grid_seam(sr, relative_to_reference=True)
    with pytest.raises(ValueError, match=r'SR shape \(265, 253, 3\).*\(265, 252, 3\)'):
        calculate_grid_seam(sr, hr[:, :-1], relative_to_reference=True)
    staircase = np.kron(np.arange(16).reshape(4, 4) * 10, np.ones((3, 3)))[..., None]
    with pytest.raises(ValueError, match='HR ratio is inf'):
        calculate_grid_seam(staircase + 0, staircase, relative_to_reference=True)


def test_images_smaller_than_two_patches_name_their_shape():
    with pytest.raises(ValueError, match=r'shape \(5, 40, 3\).*at least 2 patches \(6x6\)'):
        calculate_grid_seam(np.zeros((5, 40, 3), np.uint8))
    with pytest.raises(ValueError, match=r'shape \(40, 11\).*40x11'):
        calculate_grid_seam(np.zeros((40, 11), np.uint8), patch_size=6)
    # Large enough before cropping, too small after: the message says both.
    with pytest.raises(ValueError, match=r'shape \(12, 12, 3\).*is 4x4 after cropping 4'):
        calculate_grid_seam(np.zeros((12, 12, 3), np.uint8), crop_border=4)
    assert calculate_grid_seam(np.zeros((6, 6, 3), np.uint8)) == 1.0  # exactly two patches is enough


@pytest.mark.parametrize(
    ('option', 'match'),
    [
        ({'patch_size': 1}, 'patch_size must be an int >= 2'),
        ({'patch_size': 2.5}, 'patch_size must be an int >= 2'),
        ({'offset': (1, 2, 3)}, 'offset must be an int or a'),
        ({'crop_border': -1}, 'crop_border must be an int >= 0'),
        ({'input_order': 'HW'}, "input_order must be 'HWC' or 'CHW'"),
    ],
)
def test_bad_options_are_clear_errors(option, match):
    with pytest.raises(ValueError, match=match):
        calculate_grid_seam(np.zeros((12, 12, 3), np.uint8), **option)


def test_registered_and_called_through_basicsr():
    assert METRIC_REGISTRY.get('calculate_grid_seam') is calculate_grid_seam
    assert calculate_grid_seam.__module__ == 'flowprior_plugin.metrics.grid_seam_metric'
    # The name is ours alone: none of BasicSR's own metrics uses it (a second registration of the
    # same name would make BasicSR raise at import).
    basicsr_names = {name for name, func in METRIC_REGISTRY._obj_map.items() if func.__module__.startswith('basicsr.')}
    assert basicsr_names and 'calculate_grid_seam' not in basicsr_names

    hr = np.round(smooth()).astype(np.uint8)
    sr = np.clip(np.round(smooth() + block_offsets((HEIGHT, WIDTH), 3, 10.0, seed=8)), 0, 255).astype(np.uint8)
    lr = hr[::3, ::3]
    opt = {'type': 'calculate_grid_seam', 'patch_size': 3}
    got = calculate_metric({'img': sr, 'img2': hr, 'lq': lr}, opt)
    assert got == calculate_grid_seam(sr) and got > 1.3
    assert opt == {'type': 'calculate_grid_seam', 'patch_size': 3}  # calculate_metric works on a copy
    # Options as a YAML file gives them: a list offset, the relative flag.
    yaml_opt = {'type': 'calculate_grid_seam', 'patch_size': 3, 'offset': [0, 0], 'crop_border': 3}
    assert calculate_metric({'img': sr, 'img2': hr, 'lq': lr}, yaml_opt) > 1.3
    relative = calculate_metric({'img': sr, 'img2': hr, 'lq': lr}, {**opt, 'relative_to_reference': True})
    assert relative == pytest.approx(got / calculate_grid_seam(hr))
