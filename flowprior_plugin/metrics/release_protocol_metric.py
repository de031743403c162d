"""The releases' own evaluation protocols, so that our numbers sit next to the papers' tables.

BasicSR scores its rounded uint8 image; the releases score otherwise, and on the same SR the gap (up
to 0.04 dB PSNR, 0.02 SSIM, 1.9 dB LR-PSNR) is as large as the papers' differences between methods.
:func:`evaluate_as_released` measures as each release does; ``calculate_release_protocol`` is its
BasicSR metric (one quantity per entry), fed the float SR our flow models pass as ``sr_float_rgb``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from basicsr.metrics.psnr_ssim import calculate_ssim
from basicsr.utils.registry import METRIC_REGISTRY
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from flowprior_plugin.errors import InputShapeError, OptionError

# The quantities each protocol reports, in the release's order.
PROTOCOLS: dict[str, tuple[str, ...]] = {
    'srflow_lp': ('psnr', 'ssim', 'lr_psnr'),
    'linf_lp_div2k': ('psnr', 'ssim', 'lr_psnr'),
    'linf_lp_benchmark': ('psnr', 'lr_psnr'),
}

# LINF-LP's benchmark Y channel of an RGB difference in [0, 1] (BT.601 without the +16 offset,
# which cancels in a difference).
_Y_FROM_RGB = np.array([65.738, 129.057, 25.064]) / 256.0


# ---------------------------------------------------------------- MATLAB-style bicubic resize
def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic kernel (a = -0.5), MATLAB's 'bicubic'."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return inner + outer


def _taps(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out_len, taps) and 0-based source indices of MATLAB's antialiased bicubic."""
    # Downscaling stretches the kernel by 1 / scale (antialiasing), as MATLAB does by default.
    width = 4.0 / scale if scale < 1 else 4.0
    # Centre of each output pixel in 1-based input coordinates (pixel edges map onto pixel edges).
    centre = np.arange(1, out_len + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    first = np.floor(centre - width / 2.0)
    source = first[:, None] + np.arange(math.ceil(width) + 2)
    offset = centre[:, None] - source
    weights = scale * _cubic(scale * offset) if scale < 1 else _cubic(offset)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Out-of-range taps read the image mirrored about its edges (MATLAB's 'symmetric' padding).
    mirrored = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    return weights, mirrored[np.mod(source.astype(np.int64) - 1, 2 * in_len)]


def _resize_axis(img: np.ndarray, axis: int, out_len: int, scale: float) -> np.ndarray:
    weights, index = _taps(img.shape[axis], out_len, scale)
    src = np.moveaxis(img, axis, 0)
    out = np.zeros((out_len, *src.shape[1:]), dtype=np.float64)
    expand = (slice(None),) + (None,) * (src.ndim - 1)
    # Accumulate tap by tap, in order: the same float64 sums as the MIT port, so its uint8 rounding
    # (which can flip on the last bit) is reproduced.
    for tap in range(weights.shape[1]):
        out += weights[:, tap][expand] * src[index[:, tap]].astype(np.float64)
    if img.dtype == np.uint8:
        out = np.round(np.clip(out, 0, 255)).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def matlab_imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB's ``imresize(img, scale)`` (bicubic, antialiased), as the releases' MIT port computes it.

    Height is resized first, then width, each in float64. A uint8 image is rounded and clipped back
    to uint8 after *each* axis, as the port does (so not equal to one rounding at the end); any
    other dtype is returned in float64, neither clipped nor rounded. BasicSR's ``imresize`` differs:
    float32, and no rounding between the axes.

    Args:
        img (ndarray): Image (h, w) or (h, w, c), uint8 or float.
        scale (float): Factor for both axes; the output is ``ceil(scale * h) x ceil(scale * w)``.

    Returns:
        ndarray: The resized image, uint8 for a uint8 input, else float64.
    """
    if img.ndim not in (2, 3):
        raise InputShapeError(f'matlab_imresize: expected an (h, w) or (h, w, c) image, got shape {img.shape}')
    if not scale > 0:
        raise ValueError(f'matlab_imresize: scale must be positive, got {scale}')
    out = img
    for axis in (0, 1):
        out = _resize_axis(out, axis, math.ceil(scale * img.shape[axis]), scale)
    return out if img.dtype == np.uint8 else out.astype(np.float64, copy=False)


# ---------------------------------------------------------------- the protocols
def _shaved_psnr(diff: np.ndarray, shave: int, y_channel: bool, what: str) -> float:
    """LINF-LP's PSNR of a [0, 1] difference image: optional Y channel, ``shave`` pixels off each edge."""
    if y_channel:
        diff = diff @ _Y_FROM_RGB
    valid = diff[shave : diff.shape[0] - shave, shave : diff.shape[1] - shave]
    if valid.size == 0:
        # The release's own answer (a mean over nothing) is NaN; say why instead of warning about numpy.
        warnings.warn(
            f'{what}: a {shave}-pixel shave leaves nothing of a {diff.shape[0]}x{diff.shape[1]} image; PSNR is NaN',
            stacklevel=3,
        )
        return math.nan
    mse = float(np.mean(np.square(valid)))
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def _downscaled_to(sr: np.ndarray, lr: np.ndarray, scale: int) -> np.ndarray:
    down = matlab_imresize(sr, 1.0 / scale)
    if down.shape != lr.shape:
        raise InputShapeError(
            f'LR-PSNR: the SR {sr.shape} downscaled by 1/{scale} is {down.shape}, not the LR shape {lr.shape} (HWC)'
        )
    return down


def _srflow_lp(sr: np.ndarray, hr: np.ndarray, lr: np.ndarray, scale: int, quantity: str) -> float:
    # The release turns its float32 SR into uint8 by truncation, not rounding.
    sr_u8 = (np.clip(sr.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    if quantity == 'psnr':
        return float(peak_signal_noise_ratio(hr, sr_u8))
    if quantity == 'ssim':
        return float(structural_similarity(hr, sr_u8, channel_axis=2))
    return float(peak_signal_noise_ratio(lr, _downscaled_to(sr_u8, lr, scale)))


def _linf_lp(sr: np.ndarray, hr: np.ndarray, lr: np.ndarray, scale: int, quantity: str, y_channel: bool) -> float:
    sr = np.clip(sr.astype(np.float64), 0, 1)
    if quantity == 'psnr':
        return _shaved_psnr(sr - hr / 255.0, scale, y_channel, 'PSNR')
    if quantity == 'ssim':
        # MATLAB's Gaussian SSIM on the clamped float x 255, whole image, mean over channels.
        return float(calculate_ssim(sr * 255.0, hr.astype(np.float64), crop_border=0, input_order='HWC'))
    return _shaved_psnr(_downscaled_to(sr, lr, scale) - lr / 255.0, scale, y_channel, 'LR-PSNR')


def _check_inputs(sr: np.ndarray, hr: np.ndarray, lr: np.ndarray, scale: float) -> int:
    """Validates the images (one-line errors) and returns the scale as an int."""
    if not np.issubdtype(sr.dtype, np.floating):
        raise InputShapeError(f'sr: expected the float SR (range [0, 1], unclamped), got dtype {sr.dtype}')
    for name, img in (('hr', hr), ('lr', lr)):
        if img.dtype != np.uint8:
            raise InputShapeError(f'{name}: expected uint8 as read from disk, got dtype {img.dtype}')
    for name, img in (('sr', sr), ('hr', hr), ('lr', lr)):
        if img.ndim != 3 or img.shape[2] != 3:
            raise InputShapeError(f'{name}: expected an HWC RGB image (h, w, 3), got shape {img.shape}')
    if sr.shape != hr.shape:
        raise InputShapeError(f'sr and hr: expected the same shape, got {sr.shape} and {hr.shape} (crop the SR first)')
    if not np.isfinite(sr).all():
        raise InputShapeError(
            f'sr: {int((~np.isfinite(sr)).sum())} non-finite values; the releases score finite images'
        )
    if float(scale) != int(scale) or int(scale) < 1:
        raise ValueError(f'scale: the releases evaluate integer scales (shave and LR-PSNR), got {scale}')
    return int(scale)


def _quantity(sr: np.ndarray, hr: np.ndarray, lr: np.ndarray, scale: float, protocol: str, quantity: str) -> float:
    if protocol not in PROTOCOLS:
        raise OptionError(f'protocol: expected one of {sorted(PROTOCOLS)}, got {protocol!r}')
    if quantity not in PROTOCOLS[protocol]:
        raise OptionError(f'quantity: protocol {protocol!r} reports {list(PROTOCOLS[protocol])}, got {quantity!r}')
    sr, hr, lr = np.asarray(sr), np.asarray(hr), np.asarray(lr)
    scale = _check_inputs(sr, hr, lr, scale)
    if protocol == 'srflow_lp':
        return _srflow_lp(sr, hr, lr, scale, quantity)
    return _linf_lp(sr, hr, lr, scale, quantity, y_channel=protocol == 'linf_lp_benchmark')


def evaluate_as_released(sr: np.ndarray, hr: np.ndarray, lr: np.ndarray, scale: int, protocol: str) -> dict[str, float]:
    """PSNR, SSIM and LR-PSNR of one SR image, measured exactly as a public release measures them.

    The protocols:

    * ``srflow_lp`` (SRFlow-LP ``test.py`` / ``Measure.py``): the SR goes to uint8 by *truncation* of
      the clipped float; PSNR and SSIM are scikit-image's on uint8 RGB over the whole image (SSIM
      with its defaults: 7x7 uniform window); LR-PSNR compares the LR with that uint8 SR downscaled
      by the MATLAB-style bicubic (uint8 in, uint8 out, rounded after each axis).
    * ``linf_lp_div2k`` (LINF-LP ``test.py`` / ``utils.py``): the float SR clamped to [0, 1], never
      quantised; PSNR on RGB with a border shave of ``scale`` pixels; MATLAB's Gaussian SSIM
      (11, 1.5) on the clamped SR x 255, whole image, mean over channels; LR-PSNR between the float
      LR and the float SR downscaled in float, with the same shave on the LR.
    * ``linf_lp_benchmark``: as ``linf_lp_div2k`` with PSNR and LR-PSNR on the Y channel
      (65.738, 129.057, 25.064) / 256; no SSIM.

    Args:
        sr (ndarray): The SR, float (h, w, 3) RGB in [0, 1], unclamped and unquantised (the
            protocol clamps / quantises as its release does).
        hr (ndarray): The HR, uint8 (h, w, 3) RGB as read from disk.
        lr (ndarray): The LR input, uint8 (ceil(h / scale), ceil(w / scale), 3) RGB as read from disk.
        scale (int): The integer SR scale (the LINF-LP shave and the LR-PSNR downscale).
        protocol (str): 'srflow_lp', 'linf_lp_div2k' or 'linf_lp_benchmark' (see above).

    Returns:
        dict[str, float]: ``psnr`` and ``lr_psnr`` in dB, and ``ssim`` except for
        'linf_lp_benchmark'. A LINF-LP PSNR whose shave leaves no pixel is NaN (with a warning),
        as in the release.

    Raises:
        OptionError: Unknown protocol.
        InputShapeError: Wrong dtype, layout or size of an image, or a non-finite SR.
    """
    if protocol not in PROTOCOLS:
        raise OptionError(f'protocol: expected one of {sorted(PROTOCOLS)}, got {protocol!r}')
    return {quantity: _quantity(sr, hr, lr, scale, protocol, quantity) for quantity in PROTOCOLS[protocol]}


def _scale_from_shapes(hr_shape: tuple[int, ...], lr_shape: tuple[int, ...]) -> int:
    """The integer scale whose MATLAB downscale (``ceil(size / scale)``) takes the HR to the LR size."""
    scale = max(1, round(hr_shape[0] / max(lr_shape[0], 1)))
    if any(math.ceil(hr_shape[axis] / scale) != lr_shape[axis] for axis in (0, 1)):
        raise InputShapeError(
            f'calculate_release_protocol: no integer scale takes the HR {hr_shape[:2]} to the LR {lr_shape[:2]}; '
            'set the metric option scale'
        )
    return scale


@METRIC_REGISTRY.register()
def calculate_release_protocol(
    img: np.ndarray,
    img2: np.ndarray | None = None,
    lq: np.ndarray | None = None,
    sr_float_rgb: np.ndarray | None = None,
    protocol: str | None = None,
    quantity: str | None = None,
    scale: int | None = None,
    **kwargs: Any,
) -> float:
    """One quantity of a release's evaluation protocol, for BasicSR's validation (see :func:`evaluate_as_released`).

    Option file entry, e.g.::

        psnr_srflow_lp:
          type: calculate_release_protocol
          protocol: srflow_lp  # srflow_lp | linf_lp_div2k | linf_lp_benchmark
          quantity: psnr  # psnr | ssim | lr_psnr (no ssim for linf_lp_benchmark)

    Args:
        img (ndarray): BasicSR's rounded uint8 SR (BGR). Unused: the protocols score the float SR.
        img2 (ndarray | None): The HR, uint8 HWC BGR (as BasicSR's ``tensor2img`` gives). Required.
            Default: None.
        lq (ndarray | None): The LR input, uint8 HWC BGR. Required. Default: None.
        sr_float_rgb (ndarray | None): The float SR, (h, w, 3) RGB float32, cropped to the HR size,
            unclamped; our flow models pass it. Required. Default: None.
        protocol (str | None): 'srflow_lp', 'linf_lp_div2k' or 'linf_lp_benchmark'. Default: None.
        quantity (str | None): 'psnr', 'ssim' or 'lr_psnr'. Default: None.
        scale (int | None): The SR scale; None: the integer scale that takes the HR size to the LR
            size (``ceil(hr / scale) == lr``). Default: None.
        **kwargs: Ignored (other images of BasicSR's ``data``, e.g. ``better``).

    Returns:
        float: The quantity (dB for PSNRs).
    """
    if protocol is None or quantity is None:
        raise OptionError(
            f'calculate_release_protocol: set protocol (one of {sorted(PROTOCOLS)}) and quantity (psnr, ssim, lr_psnr)'
        )
    if sr_float_rgb is None or img2 is None or lq is None:
        raise OptionError(
            'calculate_release_protocol needs the float SR (sr_float_rgb), the HR (img2) and the LR (lq); '
            "the FlowLikelihoodModel / FlowPriorModel validation passes them, BasicSR's SRModel does not"
        )
    hr, lr = np.asarray(img2)[..., ::-1], np.asarray(lq)[..., ::-1]  # BasicSR's BGR -> the releases' RGB
    if scale is None:
        scale = _scale_from_shapes(hr.shape, lr.shape)
    return _quantity(sr_float_rgb, hr, lr, scale, protocol, quantity)
