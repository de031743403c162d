"""Local implicit Fourier features: per-query features from an LR feature map (LTE/LINF style).

For a continuous query coordinate, each of the four nearest LR cells contributes a Fourier basis
whose frequencies and amplitudes are predicted from that cell's features, evaluated at the query's
offset from the cell centre. Coordinates follow the convention of LIIF-style arbitrary-scale models:
pixel centres in [-1, 1], ``(row, col)`` order, and ``align_corners=False`` sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Shift added to every neighbour offset so that a query exactly on a cell border picks a definite
# cell under nearest sampling, and the margin that keeps shifted coordinates inside the image.
NEIGHBOUR_SHIFT = 1e-6
BORDER_MARGIN = 1e-6
# Added to each bilinear area so that a query exactly at a cell centre never divides 0 by 0.
AREA_EPS = 1e-9


def pixel_centres(n: int, dtype: torch.dtype | None = None, device: torch.device | None = None) -> Tensor:
    """Centres of ``n`` pixels along an axis spanning [-1, 1]: ``-1 + r + 2r*i`` with ``r = 1/n``."""
    r = 1.0 / n
    return -1 + r + (2 * r) * torch.arange(n, dtype=dtype or torch.get_default_dtype(), device=device)


def make_coord(
    shape: Sequence[int],
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    float32_grid: bool = True,
) -> Tensor:
    """Pixel-centre coordinates of a grid: shape ``(*shape, len(shape))``, last dim in axis order
    (``(row, col)`` for a 2-D grid).

    Args:
        shape: Grid size per axis.
        dtype: dtype of the result. Default: None (torch's default dtype).
        device: Device of the result. Default: None.
        float32_grid: Compute the centres in float32 and cast to ``dtype``, as LINF's release does
            (its coordinate grids are float32 even when the network runs in float64; the outputs of
            LINF's released code are reproduced to 1e-15 only this way). False computes them in ``dtype``.
            Default: True.
    """
    return window_coord(shape, [0] * len(shape), shape, dtype=dtype, device=device, float32_grid=float32_grid)


def window_coord(
    full_size: Sequence[int],
    top_left: Sequence[int],
    size: Sequence[int],
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    float32_grid: bool = True,
) -> Tensor:
    """``make_coord(full_size)[top:top + h, left:left + w]`` without building the whole grid: the
    same numbers (each centre is computed on its own), for a window of a larger image. Arguments
    as :func:`make_coord`; ``top_left`` and ``size`` give the window per axis."""
    compute = torch.float32 if float32_grid else dtype
    axes = [
        pixel_centres(int(n), compute, device)[int(start) : int(start) + int(length)]
        for n, start, length in zip(full_size, top_left, size)
    ]
    grid = torch.stack(torch.meshgrid(*axes, indexing='ij'), dim=-1)
    return grid.to(dtype or torch.get_default_dtype())


def sample_at(maps: Tensor, coord: Tensor, mode: str, padding_mode: str = 'zeros') -> Tensor:
    """Sample ``maps`` (B, C, h, w) at ``coord`` (B, N, 2) in ``(row, col)`` order -> (B, N, C).

    ``align_corners=False``: the coordinates are those of :func:`make_coord`.
    """
    grid = coord.flip(-1).unsqueeze(1)  # grid_sample reads (x, y) = (col, row)
    out = F.grid_sample(maps, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
    return out[:, :, 0].transpose(1, 2)


def local_fourier_features(
    coef: Tensor,
    freq: Tensor,
    coord: Tensor,
    cell: Tensor,
    phase: Callable[[Tensor], Tensor],
) -> Tensor:
    """Local implicit Fourier features of the four LR cells around each query, concatenated.

    For each neighbour (row offset -1/+1 outer, column offset -1/+1 inner, each half an LR cell
    plus ``NEIGHBOUR_SHIFT``, clamped to ``+-(1 - BORDER_MARGIN)``): the cell's ``coef`` and
    ``freq`` (nearest sampling) and its centre; ``rel = (query - centre) * (h, w)``;
    ``f = freq[:C/2] * rel_row + freq[C/2:] * rel_col + phase(cell * (h, w))``; the feature is
    ``coef * [cos(pi f), sin(pi f)]``, weighted by the area of the diagonally opposite rectangle
    over the total area (bilinear weights).

    Args:
        coef: Amplitude map (B, C, h, w).
        freq: Frequency map (B, C, h, w); its first C/2 channels pair with the row offset, the
            last C/2 with the column offset (the contiguous split, as the outputs of LINF's release require).
        coord: Query coordinates (B, N, 2), ``(row, col)`` in [-1, 1].
        cell: Size of one output pixel (B, 2) in the same units (``2 / H, 2 / W``).
        phase: Map from the relative cell (B, 2) to a phase (B, C/2), e.g. a bias-free linear layer.

    Returns:
        Tensor: (B, N, 4C), the four neighbours' weighted features concatenated in the order above.
    """
    b, channels, h, w = coef.shape
    half = channels // 2
    size = coord.new_tensor([h, w])
    centres = make_coord((h, w), dtype=coef.dtype, device=coef.device).permute(2, 0, 1)  # float32 grid
    # One sampling call for coefficients, frequencies and the cell centre (same nearest cell).
    maps = torch.cat([coef, freq, centres.unsqueeze(0).expand(b, -1, -1, -1)], dim=1)
    phase_term = phase(cell * size).unsqueeze(1)  # (B, 1, C/2)
    radius = 1.0 / size  # half an LR cell in [-1, 1] units: (2 / h) / 2

    features, areas = [], []
    for row_sign in (-1, 1):
        for col_sign in (-1, 1):
            offset = torch.stack([row_sign * radius[0], col_sign * radius[1]]) + NEIGHBOUR_SHIFT
            shifted = (coord + offset).clamp(-1 + BORDER_MARGIN, 1 - BORDER_MARGIN)
            sampled = sample_at(maps, shifted, mode='nearest')
            q_coef, q_freq, q_centre = sampled.split([channels, channels, 2], dim=-1)
            rel = (coord - q_centre) * size
            f = q_freq[..., :half] * rel[..., :1] + q_freq[..., half:] * rel[..., 1:] + phase_term
            features.append(q_coef * torch.cat([torch.cos(math.pi * f), torch.sin(math.pi * f)], dim=-1))
            areas.append((rel[..., 0] * rel[..., 1]).abs() + AREA_EPS)
    total = sum(areas)
    # Bilinear weights: each neighbour is weighted by the area diagonally opposite to it.
    return torch.cat([feat * (area / total).unsqueeze(-1) for feat, area in zip(features, areas[::-1])], dim=-1)
