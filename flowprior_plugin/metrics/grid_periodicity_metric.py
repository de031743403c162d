"""Grid periodicity: how much of an image's fine detail repeats with the period of a patch grid.

The seam ratio (``calculate_grid_seam``) sees independent discontinuities on the patch grid, the
artifact of sampling every patch on its own. A patch-wise model can also draw the *same* pattern in
every patch (a blob or a ramp locked to the grid): steps inside and across patches then grow alike,
and the seam ratio stays near 1 although the lattice is plain to see. This module registers the
complementary measure (``type: calculate_grid_periodicity``): the share of the high-pass detail
energy that is exactly periodic on the p x p grid. See ``calculate_grid_periodicity``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from basicsr.utils.registry import METRIC_REGISTRY
from scipy.ndimage import uniform_filter

from flowprior_plugin.metrics.grid_seam_metric import FLAT_EPS, check_grid_options, prepare_image


def grid_periodic_share(img: np.ndarray, patch_size: int) -> float:
    """Periodic share of the detail of one float HWC image.

    Args:
        img (ndarray): Float image (h, w, c), h and w at least ``3 * patch_size``.
        patch_size (int): Patch side p (at least 2).

    Returns:
        float: E_periodic / E_detail as in ``calculate_grid_periodicity``; 0.0 for an image without
        detail.
    """
    p = patch_size
    # A p x p box average of a p-periodic pattern is constant, so this high-pass keeps every
    # grid-locked pattern whole while removing the smooth content of the image.
    detail = img - uniform_filter(img, size=(p, p, 1), mode='nearest')
    detail = detail[p:-p, p:-p]  # the pixels whose box never reached the padded border
    rows = np.arange(detail.shape[0]) % p
    cols = np.arange(detail.shape[1]) % p
    energy = float(np.mean(detail**2))
    if energy <= FLAT_EPS:
        return 0.0
    # Mean detail at each of the p x p positions inside a patch (per channel): the periodic part.
    phase_means = [detail[rows == a][:, cols == b].mean(axis=(0, 1)) for a in range(p) for b in range(p)]
    return float(np.mean(np.square(phase_means))) / energy


@METRIC_REGISTRY.register()
def calculate_grid_periodicity(
    img: np.ndarray,
    img2: np.ndarray | None = None,
    patch_size: int = 3,
    crop_border: int = 0,
    input_order: str = 'HWC',
    test_y_channel: bool = False,
    **kwargs: Any,
) -> float:
    """Share of the SR image's detail energy that repeats with the period of the patch grid.

    Definition. Let I be the image as float (all channels, or the Y channel when
    ``test_y_channel``) after cropping ``crop_border`` pixels per edge, p = ``patch_size``.
    The detail is D = I - box_p(I), with box_p the p x p moving average (its border pixels, which
    depend on padding, are left out). For each of the p^2 positions (a, b) inside a patch, M(a, b)
    is the mean of D over all pixels at that position (y mod p = a, x mod p = b)::

        share = mean_(a, b) M(a, b)^2 / mean(D^2)

    It lies in [0, 1]: the fraction of the detail that is the same in every patch. Where the grid
    starts does not matter (another start only permutes the M(a, b)), so unlike the seam ratio it
    takes no offset, and cropping does not move anything.

    Why: a pattern repeated in every patch survives the averaging over patches whole, while natural
    detail, which does not know where the grid is, averages towards 0 (as 1 / number of patches), so
    a photograph scores close to 0 (about 1e-4 on the demo's photos) and a grid-locked pattern of
    energy e on top of detail energy d scores about e / (e + d). The box high-pass removes smooth
    content without touching a p-periodic pattern (its p x p average is constant).

    Limits: patterns that change sign from patch to patch (independent per-patch noise, random
    seams) average out and are not counted: that is what ``calculate_grid_seam`` measures, so the
    two are reported together. Global means: a lattice in one region is diluted by detail elsewhere.

    Args:
        img (ndarray): The SR image, range [0, 255] (uint8 or float), BGR when ``test_y_channel``;
            (h, w, c), (c, h, w) or (h, w).
        img2 (ndarray | None): The HR image; unused (BasicSR passes it to every metric). Default: None.
        patch_size (int): Side p of the patch grid (at least 2). Default: 3.
        crop_border (int): Pixels cropped from each edge first. Default: 0.
        input_order (str): 'HWC' or 'CHW'. Default: 'HWC'.
        test_y_channel (bool): Measure the Y channel of YCbCr. Default: False.
        **kwargs: Ignored (e.g. ``lq``, ``better``).

    Returns:
        float: The periodic share in [0, 1] (0 for an image without detail).

    Raises:
        ValueError: Bad ``patch_size``, ``crop_border`` or ``input_order``, or an image
            smaller than 3 patches across after cropping.
    """
    name = 'calculate_grid_periodicity'
    p = check_grid_options(name, input_order, patch_size, crop_border)
    prepared = prepare_image(img, input_order, crop_border, test_y_channel)
    if prepared.ndim == 2:
        prepared = prepared[..., None]
    height, width = prepared.shape[:2]
    if height < 3 * p or width < 3 * p:
        raise ValueError(
            f'{name}: img of shape {tuple(np.shape(img))} ({input_order}) is {height}x{width} after cropping '
            f'{crop_border} pixels per edge; it must be at least 3 patches ({3 * p}x{3 * p}) for patch_size {p}'
        )
    return grid_periodic_share(prepared, p)
