"""LINF's query geometry (Yao et al., CVPR 2023): the query grid of an HR image or window, its
padding to whole patches, the bilinear base, and patch vectors.

Coordinates follow :mod:`flowprior_plugin.layers.local_fourier`: pixel centres in [-1, 1],
``(row, col)`` order. ``p`` is the patch side (1: one query per HR pixel). The numbers are those of
the LINF / LINF-LP releases (``docs/linf.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from flowprior_plugin.flow_protocol import HRWindow, output_hw
from flowprior_plugin.layers.local_fourier import make_coord, window_coord


def query_shape(hr_size: Sequence[int] | HRWindow, p: int) -> tuple[int, int]:
    """(Hq, Wq): the query grid of an HR image (or window) of size ``hr_size`` = (H, W)."""
    h, w = output_hw(hr_size)
    return -(-h // p), -(-w // p)  # ceil: whole patches over the (padded) grid


def patch_padding(hr_size: Sequence[int] | HRWindow, p: int) -> tuple[int, int]:
    """Rows and columns of zeros added below and right of the HR grid for whole patches,
    ``(-H) mod p`` (as LINF-LP's data pad). A window is padded by its own size."""
    h, w = output_hw(hr_size)
    return (-h) % p, (-w) % p


def pixel_coords(
    hr_size: Sequence[int] | HRWindow,
    batch: int,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
    float32_grid: bool = True,
) -> Tensor:
    """Pixel-centre coordinates (B, H, W, 2) of an HR image of size ``hr_size``, or of each
    window's pixels in its whole HR image (the very numbers of that image's grid, see
    :func:`~flowprior_plugin.layers.local_fourier.window_coord`). ``float32_grid``: see
    :func:`~flowprior_plugin.layers.local_fourier.make_coord`."""
    if not isinstance(hr_size, HRWindow):
        coord = make_coord(output_hw(hr_size), dtype=dtype, device=device, float32_grid=float32_grid)
        return coord.unsqueeze(0).expand(batch, -1, -1, -1)
    if hr_size.batch != batch:
        raise ValueError(f'LINFNet: HRWindow describes {hr_size.batch} images, but the batch has {batch}')
    coords = [
        window_coord(full, top_left, hr_size.size, dtype=dtype, device=device, float32_grid=float32_grid)
        for full, top_left in zip(hr_size.full_size.tolist(), hr_size.offset.tolist())
    ]
    return torch.stack(coords)


def query_grid(
    hr_size: Sequence[int] | HRWindow,
    p: int,
    batch: int = 1,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Query coordinates and cell for an HR image of size ``hr_size`` = (H, W), or for windows.

    Returns:
        tuple[Tensor, Tensor]: ``coord`` (B, Hq, Wq, 2) in ``(row, col)`` order and ``cell``
        (B, 2) = (2 / H, 2 / W). With patches ``coord`` is the pixel-centre grid of the HR image
        zero-padded as in :func:`patch_padding`, taken at each patch's centre pixel (queries whose
        centre lies in the padding get (0, 0), as released). For an :class:`HRWindow` the
        coordinates are those of the window's pixels in the grid of its whole HR image, and the
        cell is that of the whole image (per sample): what a decode of the whole image would use
        at those pixels.
    """
    dtype = dtype or torch.get_default_dtype()
    coord = pixel_coords(hr_size, batch, dtype, device)
    if p > 1:
        ph, pw = patch_padding(hr_size, p)
        coord = F.pad(coord.permute(0, 3, 1, 2), (0, pw, 0, ph))[:, :, p // 2 :: p, p // 2 :: p].permute(0, 2, 3, 1)
    if isinstance(hr_size, HRWindow):
        cell = 2.0 / hr_size.full_size.to(device=device, dtype=dtype)
    else:
        h, w = output_hw(hr_size)
        cell = torch.tensor([2.0 / h, 2.0 / w], dtype=dtype, device=device).unsqueeze(0).expand(batch, -1)
    return coord, cell


def bilinear_base(lr: Tensor, hr_size: Sequence[int] | HRWindow) -> Tensor:
    """``lr`` (any range) sampled bilinearly at the pixel centres of an HR grid of ``hr_size`` (or
    of each window in its image), border padding, ``align_corners=False`` -> (B, C, H, W)."""
    # Computed in the working dtype (not a float32 grid): the residuals of LINF's
    # released code are reproduced to 1e-15 in float64 only this way, unlike the query coordinates.
    coord = pixel_coords(hr_size, lr.shape[0], lr.dtype, lr.device, float32_grid=False)
    return F.grid_sample(lr, coord.flip(-1), mode='bilinear', padding_mode='border', align_corners=False)


def to_patches(image: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, C p^2, Hq, Wq): zero-pad as in :func:`patch_padding`, then one vector
    per patch ordered ``channel * p^2 + p * row + column`` (``pixel_unshuffle`` order)."""
    if p == 1:
        return image
    ph, pw = patch_padding(image.shape[-2:], p)
    return F.pixel_unshuffle(F.pad(image, (0, pw, 0, ph)), p)


def fold_patches(patches: Tensor, p: int) -> Tensor:
    """(B, C p^2, Hq, Wq) -> (B, C, p Hq, p Wq): the patches laid back side by side (padding kept;
    crop with ``[..., :H, :W]``)."""
    return patches if p == 1 else F.pixel_shuffle(patches, p)
