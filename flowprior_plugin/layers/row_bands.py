"""Run a local (convolutional) module over an image in horizontal bands, exactly, at a fraction of its peak memory."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def apply_in_row_bands(fn: Callable[[Tensor], Tensor], x: Tensor, band_rows: int, halo: int) -> Tensor:
    """``fn(x)`` computed ``band_rows`` output rows at a time.

    Each band is computed from the input rows it covers plus ``halo`` rows on either side (clipped at
    the image's border, where ``fn``'s own zero padding applies as on the whole image), and only its
    own rows are kept. For a module whose output row depends on input rows within ``halo`` of it
    (a stack of n 3x3 convolutions: n) the result equals ``fn(x)``, while the module's intermediate
    tensors only ever exist for one band.

    Args:
        fn: A spatially local map (B, C, H, W) -> (B, C', H, W) (same height and width).
        x: Input (B, C, H, W).
        band_rows: Output rows per band (>= 1).
        halo: Rows of context either side that make a band exact.

    Returns:
        Tensor: (B, C', H, W), equal to ``fn(x)``.
    """
    if band_rows < 1 or halo < 0:
        raise ValueError(f'band_rows must be >= 1 and halo >= 0, got {band_rows} and {halo}')
    height = x.shape[-2]
    if height <= band_rows:
        return fn(x)
    out = None
    for top in range(0, height, band_rows):
        bottom = min(top + band_rows, height)
        lo, hi = max(0, top - halo), min(height, bottom + halo)
        band = fn(x[..., lo:hi, :])
        if out is None:
            out = band.new_empty(*band.shape[:-2], height, band.shape[-1])
        out[..., top:bottom, :] = band[..., top - lo : bottom - lo, :]
    return out
