"""Tiled prediction: super-resolve any image size at flat memory, through the flow protocol only.

Tiles of ``size`` LR pixels on the flow's alignment grid are computed with a margin of ``overlap``
LR pixels and only their cores kept; what a tile needs comes from the flow's tiling hooks, so the
tiler never names a flow family. Gaussian latents are drawn once for the whole image and sliced
per tile. Measured seams and memory: ``docs/tiling.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowprior_plugin.flow_protocol import FlowCondition, Latents, OutputSize, output_hw, supports_tiling

# LR pixels of margin around each tile when ``val.tile`` gives none (see docs/tiling.md for the
# measured seam error against the overlap).
DEFAULT_OVERLAP = 8


@dataclass(frozen=True)
class TileOptions:
    """``val.tile`` / ``--tile``: LR pixels per tile side and the margin computed around each tile.

    Attributes:
        size: Core side of a tile in LR pixels (rounded to the flow's alignment).
        overlap: LR pixels of margin on each side, computed and then thrown away.
    """

    size: int
    overlap: int = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        for name in ('size', 'overlap'):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == 'size' else 0):
                low = 'a positive integer' if name == 'size' else 'an integer >= 0'
                raise ValueError(f'tile.{name} must be {low} (LR pixels), got {value!r}')

    @classmethod
    def from_option(cls, option: Any, where: str = 'val.tile') -> TileOptions | None:
        """``None`` (no tiling), an int (the size, default overlap) or ``{size, overlap}``."""
        if option is None or isinstance(option, TileOptions):
            return option
        if isinstance(option, int) and not isinstance(option, bool):
            return cls(option)
        if isinstance(option, Mapping):
            unknown = sorted(set(option) - {'size', 'overlap'})
            if unknown or 'size' not in option:
                raise ValueError(
                    f'{where} must be {{size: N, overlap: M}} (LR pixels); got keys {sorted(option)}'
                    + (f' ({", ".join(unknown)} unknown)' if unknown else ' (size missing)')
                )
            return cls(option['size'], option.get('overlap', DEFAULT_OVERLAP))
        raise ValueError(f'{where} must be {{size: N, overlap: M}} or an integer, got {option!r}')


@dataclass
class TileInputs:
    """What the flow and the learned prior see for one tile (or for the whole image).

    Attributes:
        lq: The LR the flow's methods take (an LR crop, or the whole LR for window tiles).
        cond: ``condition(lq)``, or the flow's equivalent for the tile.
        out_size: The flow's ``out_size`` for this tile (None: ``lq * scale``; an ``HRWindow``
            for a window of the whole image, which the learned prior reads as a window too).
        box: The tile's HR rows and columns ``(top, bottom, left, right)`` in the whole image.
    """

    lq: Tensor
    cond: FlowCondition
    out_size: OutputSize
    box: tuple[int, int, int, int]


# A method says which latents to decode for a tile: method(tile) -> (mean, tau), the tile's mean
# latents (None: zeros) and the temperature of the Gaussian noise added around them. Temperature
# sampling is (None, tau), the learned prior (z_hat, 0), samples around the prior (z_hat, tau). The
# mean is computed once per tile, whatever the number of samples.
Method = Callable[[TileInputs], tuple[Latents | None, float]]


def check_tileable(flow: Any) -> None:
    """Raise a one-line ValueError if ``flow`` does not declare tiling support."""
    if not supports_tiling(flow):
        raise ValueError(
            f'{type(flow).__name__} does not support tiled prediction (it sets no supports_tiling and '
            'tiling hooks, see flowprior_plugin.flow_protocol); remove val.tile / --tile'
        )


def _spans(length: int, core: int, margin: int, align: int) -> list[tuple[int, int, int, int]]:
    """(start, stop, core_start, core_stop) along one axis: cores of ``core`` pixels on the
    ``align`` grid covering ``[0, length)``, each computed in a box of ``core + 2 * margin`` pixels.

    A box that would cross the image's border is shifted inside it (more context on the inner
    side instead of less box), so every box has the same size and a tile's memory does not depend
    on where it sits; an axis no longer than one box is a single span (no tiling along it).
    """
    full = core + 2 * margin
    if length <= full:
        return [(0, length, 0, length)]
    spans = []
    for c0 in range(0, length, core):
        c1 = min(c0 + core, length)
        start = min(max(0, c0 - margin), (length - full) // align * align)
        stop = max(min(length, c1 + margin), min(length, start + full))
        spans.append((start, stop, c0, c1))
    return spans


def tile_grid(
    hr_size: Sequence[int], scale: float, options: TileOptions, align: int
) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """The tiles of an HR image: ``(box, core)`` pairs, each ``(top, bottom, left, right)`` in HR
    pixels; box and core borders sit on multiples of ``align`` (or on the image border).

    Args:
        hr_size: (H, W) of the whole HR image.
        scale: HR pixels per LR pixel (to convert ``options`` from LR pixels).
        options: Tile size and overlap in LR pixels.
        align: HR grid the borders must sit on (the flow's ``tile_alignment``).
    """
    core = max(align, int(round(options.size * scale / align)) * align)
    margin = int(math.ceil(options.overlap * scale / align)) * align
    rows = _spans(int(hr_size[0]), core, margin, align)
    cols = _spans(int(hr_size[1]), core, margin, align)
    return [((r0, r1, q0, q1), (c0, c1, d0, d1)) for r0, r1, c0, c1 in rows for q0, q1, d0, d1 in cols]


def slice_latents(latents: Latents, box: Sequence[int], strides: Sequence[int]) -> Latents:
    """The part of whole-image latents under the HR ``box``; level l has ``strides[l]`` HR pixels
    per latent cell (a box border at the image's end maps to the end of the latent grid)."""
    top, bottom, left, right = box
    return [
        z[..., top // s : -(-bottom // s), left // s : -(-right // s)] for z, s in zip(latents, strides, strict=True)
    ]


class _Noise:
    """Gaussian latents drawn once per (method, sample) for the whole image, sliced per tile
    (``strides``: HR pixels per cell of each level; None: no tiles, the whole latents).

    Draws happen in the order the first tile asks for them, which is the order a whole-image
    prediction draws in, so both use the same numbers for the same generator state.
    """

    def __init__(
        self,
        flow: Any,
        lq: Tensor,
        generator: torch.Generator | None,
        out_size: OutputSize,
        strides: Sequence[int] | None = None,
    ) -> None:
        self.flow, self.lq, self.generator, self.out_size, self.strides = flow, lq, generator, out_size, strides
        self.drawn: dict[tuple[str, int], Latents] = {}

    def under(self, box: Sequence[int], key: tuple[str, int], temperature: float) -> Latents:
        """The latents of draw ``key`` under the HR ``box``."""
        if key not in self.drawn:
            self.drawn[key] = self.flow.sample_latents(
                self.lq, temperature, generator=self.generator, out_size=self.out_size
            )
        latents = self.drawn[key]
        return latents if self.strides is None else slice_latents(latents, box, self.strides)


def _add(mean: Latents | None, noise: Latents) -> Latents:
    return list(noise) if mean is None else [m + n for m, n in zip(mean, noise, strict=True)]


def predict_whole(
    flow: Any,
    lq: Tensor,
    methods: Mapping[str, Method],
    generator: torch.Generator | None,
    out_size: OutputSize = None,
    samples: int = 1,
) -> dict[str, list[Tensor]]:
    """SR of the whole image per method (a list of ``samples`` draws for methods with noise, one
    image otherwise); one conditioning and one mean per method serve every sample. The whole
    image is computed as one tile that is its own core."""
    hr = output_hw(out_size) or (lq.shape[-2] * flow.scale, lq.shape[-1] * flow.scale)
    whole = (0, hr[0], 0, hr[1])
    outputs: dict[str, list[Tensor]] = {}
    noise = _Noise(flow, lq, generator, out_size)
    _predict_tile(flow, TileInputs(lq, flow.condition(lq), out_size, whole), whole, methods, noise, samples, outputs)
    return outputs


def predict_tiled(
    flow: Any,
    lq: Tensor,
    methods: Mapping[str, Method],
    generator: torch.Generator | None,
    options: TileOptions,
    out_size: OutputSize = None,
    samples: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[Tensor]]:
    """:func:`predict_whole`, tile by tile: the same outputs up to the seam error of the margin.

    Args:
        flow: A flow implementing the protocol and the tiling hooks (``supports_tiling``).
        lq: LR batch (B, C, h, w), as ``predict_whole`` would take it (already padded).
        methods: Name -> method (see :data:`Method`).
        generator: Random generator of the Gaussian latents (drawn for the whole image).
        options: Tile size and overlap (LR pixels).
        out_size: The whole HR's size (None: ``lq * scale``); an ``HRWindow`` is refused.
        samples: Draws per method with noise. Default: 1.
        progress: Called with (tiles done, tiles) after each tile. Default: None.

    Returns:
        dict[str, list[Tensor]]: Per method, its SR images (B, C, H, W), unclamped.
    """
    check_tileable(flow)
    hr = output_hw(out_size) if out_size is not None else (lq.shape[-2] * flow.scale, lq.shape[-1] * flow.scale)
    if out_size is not None and not isinstance(out_size, (tuple, list)):
        raise ValueError('tiled prediction decodes whole images: out_size must be (H, W) or None, not windows')
    scale = hr[0] / lq.shape[-2]
    context = flow.tile_context(lq, hr)
    noise = _Noise(flow, lq, generator, out_size, flow.latent_strides())
    outputs: dict[str, list[Tensor]] = {}
    grid = tile_grid(hr, scale, options, flow.tile_alignment())
    for index, (box, core) in enumerate(grid):
        _predict_tile(flow, flow.tile_inputs(lq, context, box, hr), core, methods, noise, samples, outputs, hr)
        if progress is not None:
            progress(index + 1, len(grid))
    return outputs


def _predict_tile(
    flow: Any,
    inputs: TileInputs,
    core: tuple[int, int, int, int],
    methods: Mapping[str, Method],
    noise: _Noise,
    samples: int,
    outputs: dict[str, list[Tensor]],
    hr: Sequence[int] | None = None,
) -> None:
    """Every method's SR of one tile, its core written into ``outputs`` (images of ``hr``; None:
    the tile is the whole image and its SRs are the outputs). A function of its own so that the
    tile's conditioning, means and decodes are freed before the next tile builds its own
    (otherwise two tiles' conditionings coexist at the peak)."""
    box = inputs.box
    top, left = core[0] - box[0], core[2] - box[2]
    height, width = core[1] - core[0], core[3] - core[2]
    for name, method in methods.items():
        mean, tau = method(inputs)
        for k in range(samples if tau > 0 else 1):
            latents = _add(mean, noise.under(box, (name, k), tau)) if tau > 0 or mean is None else mean
            sr = flow.decode(inputs.lq, latents, inputs.cond, inputs.out_size)
            images = outputs.setdefault(name, [])
            if hr is None:
                images.append(sr)
            else:
                if len(images) <= k:
                    images.append(sr.new_empty(sr.shape[0], sr.shape[1], *hr))
                images[k][..., core[0] : core[1], core[2] : core[3]] = sr[..., top : top + height, left : left + width]
            del latents, sr
        del mean
