"""Grid-seam ratio: how much stronger the pixel steps across a patch grid are than those inside it.

Patch-wise flows such as LINF's patch model sample each non-overlapping p x p HR patch (p = 3)
independently, which leaves visible seams on the patch grid (the paper's "grid artifacts"). PSNR,
SSIM and LPIPS barely see a one-pixel-wide lattice, so this module registers a metric in BasicSR's
``METRIC_REGISTRY`` (``type: calculate_grid_seam``) that measures exactly that lattice: the mean
squared step between adjacent pixels that straddle a patch boundary, divided by the mean squared
step between adjacent pixels inside a patch. See ``calculate_grid_seam`` for the precise definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from basicsr.metrics.metric_util import reorder_image, to_y_channel
from basicsr.utils.registry import METRIC_REGISTRY

# A mean squared step at or below this (in squared 8-bit grey levels) counts as "no variation".
# It is far below the smallest non-zero step of 8-bit data (1 grey level, squared 1), yet above the
# rounding noise of BasicSR's float32 Y-channel conversion, so flat images are recognised as flat
# whether or not test_y_channel is on.
FLAT_EPS = 1e-8


def _offset_pair(offset: int | Sequence[int]) -> tuple[int, int]:
    """(row, column) offset from an int (both) or a pair; ValueError otherwise."""
    if isinstance(offset, (int, np.integer)) and not isinstance(offset, bool):
        return int(offset), int(offset)
    if isinstance(offset, Sequence) and len(offset) == 2 and all(isinstance(o, (int, np.integer)) for o in offset):
        return int(offset[0]), int(offset[1])
    raise ValueError(f'calculate_grid_seam: offset must be an int or a (row, column) pair of ints, got {offset!r}')


def _directional_means(steps: np.ndarray, offset: int, patch_size: int) -> tuple[float, float]:
    """Mean squared step across patch boundaries and inside patches along the first axis of ``steps``.

    ``steps[i]`` is the step from pixel i to pixel i + 1 (along rows or columns); it straddles a
    boundary when pixel i is the last of its patch, i.e. ``(i - offset) % patch_size == patch_size - 1``.
    """
    index = np.arange(steps.shape[0])
    on_boundary = (index - offset) % patch_size == patch_size - 1
    squared = steps.astype(np.float64) ** 2
    return float(squared[on_boundary].mean()), float(squared[~on_boundary].mean())


def grid_seam_ratio(img: np.ndarray, patch_size: int, offset: tuple[int, int]) -> float:
    """The seam ratio of one float HWC image whose patch grid is given in its own coordinates.

    Args:
        img (ndarray): Float image of shape (h, w, c), h and w at least ``2 * patch_size``.
        patch_size (int): Patch side p (at least 2).
        offset (tuple[int, int]): (row, column) of the top-left corner of a patch (taken modulo p).

    Returns:
        float: (B_h + B_v) / (I_h + I_v) as in ``calculate_grid_seam``; 1.0 for a flat image, inf
        when only the boundary steps are non-zero.
    """
    # Horizontal steps (between columns x and x + 1) are indexed by x: move the column axis first.
    boundary_h, inside_h = _directional_means(np.moveaxis(np.diff(img, axis=1), 1, 0), offset[1], patch_size)
    boundary_v, inside_v = _directional_means(np.diff(img, axis=0), offset[0], patch_size)
    boundary = boundary_h + boundary_v
    inside = inside_h + inside_v
    if inside <= FLAT_EPS:
        # No variation inside the patches: a flat image has no seams (1.0, "as smooth across the grid
        # as within it"); steps only on the grid are pure seams, an infinitely strong lattice.
        return 1.0 if boundary <= FLAT_EPS else float('inf')
    return boundary / inside


def check_grid_options(metric: str, input_order: str, patch_size: Any, crop_border: Any) -> int:
    """The options both grid metrics share, checked; returns ``patch_size`` as an int.

    Raises:
        ValueError: Naming ``metric``, the option and what it got.
    """
    if input_order not in ('HWC', 'CHW'):
        raise ValueError(f"{metric}: input_order must be 'HWC' or 'CHW', got {input_order!r}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 2:
        raise ValueError(f'{metric}: patch_size must be an int >= 2, got {patch_size!r}')
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise ValueError(f'{metric}: crop_border must be an int >= 0, got {crop_border!r}')
    return int(patch_size)


def prepare_image(img: np.ndarray, input_order: str, crop_border: int, test_y_channel: bool) -> np.ndarray:
    """HWC float64 image, Y channel if asked, borders cropped (BasicSR's order: reorder, crop, Y)."""
    out = reorder_image(np.asarray(img), input_order=input_order)
    if crop_border:
        out = out[crop_border:-crop_border, crop_border:-crop_border, ...]
    if test_y_channel:
        # to_y_channel expects [0, 255] BGR and returns Y on the same scale (a 1-channel image is kept).
        out = to_y_channel(out)
    return out.astype(np.float64)


@METRIC_REGISTRY.register()
def calculate_grid_seam(
    img: np.ndarray,
    img2: np.ndarray | None = None,
    patch_size: int = 3,
    offset: int | Sequence[int] = (0, 0),
    crop_border: int = 0,
    input_order: str = 'HWC',
    test_y_channel: bool = False,
    relative_to_reference: bool = False,
    **kwargs: Any,
) -> float:
    """Grid-seam ratio of the SR image: squared steps across a patch grid over squared steps inside it.

    Definition. Let I be the image as float (all channels, or the Y channel of YCbCr when
    ``test_y_channel``), after cropping ``crop_border`` pixels from each edge, and p = ``patch_size``,
    (o_y, o_x) = ``offset``. A horizontal step is d = I[y, x + 1] - I[y, x]; it *straddles a
    boundary* when (x - o_x) % p == p - 1 (pixel x is the last column of its patch), otherwise it
    lies *inside* a patch. Vertical steps I[y + 1, x] - I[y, x] are split the same way with
    (y - o_y) % p == p - 1. With B_h, I_h the mean of d^2 over the horizontal boundary / inside
    steps (over all rows, columns and channels) and B_v, I_v the same for vertical steps::

        ratio = (B_h + B_v) / (I_h + I_v)

    Why each choice:

    - A ratio of the two means, not their difference: it is invariant to contrast (scaling I) and
      to brightness, so images with more or less texture are comparable; an image without
      structure tied to the grid has the same statistics on and off it, so it scores about 1, and
      seams (an extra step added only on the grid) push it above 1. Steps that cancel the grid
      (smoother across it than inside) give values below 1.
    - Squared steps: independent per-patch offsets of variance s^2 add 2 s^2 to the expected
      squared step across each boundary and nothing inside, so the ratio rises by
      2 s^2 / mean(I_h, I_v) (additive, predictable); the sign of a step does not matter.
    - Per-direction means summed, rather than one mean pooled over all steps: the share of boundary
      steps differs between the two directions (image sizes that are not multiples of p, the
      offset), and pooling would then weight a strongly oriented image's directions differently in
      numerator and denominator. Summing per-direction means gives any linear ramp
      a * x + b * y exactly 1, and an image that varies along one direction only is still handled
      (per-direction ratios would divide by zero there).
    - Only adjacent pairs: the seam of an independently sampled patch is a one-pixel jump, and
      adjacent pairs are the scale at which a natural image's statistics are closest to
      translation-invariant.
    - The grid is fixed in the coordinates of the image *as given*: ``offset`` refers to the
      uncropped image, so ``crop_border`` removes pixels without moving the grid (LINF's patches
      start at the top-left HR pixel, hence the default offset (0, 0)).

    Limits: the means are global, so seams in flat regions are diluted by texture elsewhere; a uint8
    ramp whose quantisation steps fall on the grid (e.g. one grey level every p pixels) is, by this
    definition, a seam lattice; JPEG's 8x8 blocks are not seen at p = 3 (8 and 3 are coprime).

    Flat images: when I_h + I_v <= ``FLAT_EPS`` (1e-8 squared grey levels, i.e. no variation inside
    any patch) the ratio is 1.0 if B_h + B_v <= ``FLAT_EPS`` too (a flat image has no seams) and inf
    otherwise (all variation is on the grid). A finite ratio is returned in every other case
    (0.0 when only the inside steps vary).

    Relative mode: with ``relative_to_reference`` the result is ratio(SR) / ratio(HR), the HR
    (``img2``, same shape) measured with the same options, so that grid-aligned structure present
    in the ground truth (or a dataset's own JPEG/patch history) is factored out: 1 means "as
    grid-free as the HR". Off by default because the absolute ratio needs no reference and is what
    an unpaired comparison can report.

    Args:
        img (ndarray): The SR image, range [0, 255] (uint8 as BasicSR's ``tensor2img`` gives, or
            float), BGR when ``test_y_channel``; (h, w, c), (c, h, w) or (h, w).
        img2 (ndarray | None): The HR image. Used only with ``relative_to_reference`` (BasicSR passes
            it to every metric). Default: None.
        patch_size (int): Side p of the square patches whose grid is tested (at least 2, so that
            patches have inside steps). Default: 3.
        offset (int | Sequence[int]): (row, column) of the top-left pixel of a patch in the
            uncropped image, taken modulo p; an int sets both. Default: (0, 0).
        crop_border (int): Pixels cropped from each edge before measuring; the grid does not move.
            Default: 0.
        input_order (str): 'HWC' or 'CHW'. Default: 'HWC'.
        test_y_channel (bool): Measure the Y channel of YCbCr (images must be BGR). Default: False.
        relative_to_reference (bool): Return ratio(SR) / ratio(HR). Default: False.
        **kwargs: Ignored (e.g. ``lq`` and other options of the validation block).

    Returns:
        float: The seam ratio (about 1 without seams, > 1 with seams), or the relative ratio.

    Raises:
        ValueError: Bad ``patch_size``, ``offset``, ``crop_border`` or ``input_order``; the
            (cropped) image is smaller than two patches in height or width; in relative mode,
            ``img2`` is missing or of another shape, or its ratio is 0 or inf (undefined quotient).
    """
    patch_size = check_grid_options('calculate_grid_seam', input_order, patch_size, crop_border)
    row_offset, col_offset = _offset_pair(offset)
    # The grid is given in uncropped coordinates: cropping c pixels shifts it by -c in the crop.
    grid = ((row_offset - crop_border) % patch_size, (col_offset - crop_border) % patch_size)

    def ratio_of(image: np.ndarray, name: str) -> float:
        given_shape = np.shape(image)
        prepared = prepare_image(image, input_order, crop_border, test_y_channel)
        height, width = prepared.shape[:2]
        # Two patches across guarantee both kinds of steps in each direction for any offset.
        if height < 2 * patch_size or width < 2 * patch_size:
            raise ValueError(
                f'calculate_grid_seam: {name} of shape {tuple(given_shape)} ({input_order}) is {height}x{width} '
                f'after cropping {crop_border} pixels per edge; it must be at least 2 patches '
                f'({2 * patch_size}x{2 * patch_size}) for patch_size {patch_size}'
            )
        return grid_seam_ratio(prepared, patch_size, grid)

    sr_ratio = ratio_of(img, 'img')
    if not relative_to_reference:
        return sr_ratio

    if img2 is None:
        raise ValueError('calculate_grid_seam: relative_to_reference needs the HR image img2')
    if np.shape(img2) != np.shape(img):
        raise ValueError(
            f'calculate_grid_seam: relative_to_reference needs img2 of the SR shape {tuple(np.shape(img))}, '
            f'got {tuple(np.shape(img2))}'
        )
    hr_ratio = ratio_of(img2, 'img2')
    if hr_ratio == 0.0 or np.isinf(hr_ratio):
        # Only a pathological HR (all variation on the grid, or none across it) gets here; a quiet
        # nan or 0 would vanish into a table's average, so say it.
        raise ValueError(
            f'calculate_grid_seam: the HR ratio is {hr_ratio}, so ratio(SR) / ratio(HR) is undefined; '
            f'report the absolute ratio (relative_to_reference: false) for this image'
        )
    return sr_ratio / hr_ratio
