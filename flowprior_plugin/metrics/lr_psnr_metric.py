"""LR-PSNR: how well the SR image, downscaled again, reproduces the input LR image.

The learned-prior release (and SRFlow before it) reports "LR-PSNR": the SR output is downscaled by
MATLAB-style bicubic to the LR size, rounded to uint8, and compared with the input LR by PSNR. A
high value means the SR is consistent with its input. This module registers it in BasicSR's
``METRIC_REGISTRY`` so that an option file can ask for it with ``type: calculate_lr_psnr``; our
models pass ``data = dict(img=sr, img2=gt, lq=lr)`` to every metric.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from basicsr.metrics.metric_util import reorder_image
from basicsr.metrics.psnr_ssim import calculate_psnr
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import METRIC_REGISTRY


def _integer_scale(sr_shape: tuple[int, ...], lr_shape: tuple[int, ...]) -> int:
    """The integer factor between the SR and LR sizes (HWC shapes), or a ValueError naming both."""
    sr_h, sr_w = sr_shape[:2]
    lr_h, lr_w = lr_shape[:2]
    if lr_h == 0 or lr_w == 0 or sr_h % lr_h or sr_w % lr_w or sr_h // lr_h != sr_w // lr_w:
        raise ValueError(
            f'calculate_lr_psnr: the SR size must be the same integer multiple of the LR size in height and '
            f'width; got SR shape {tuple(sr_shape)} and LR shape {tuple(lr_shape)} (HWC)'
        )
    if len(sr_shape) != len(lr_shape) or sr_shape[2:] != lr_shape[2:]:
        raise ValueError(
            f'calculate_lr_psnr: SR and LR must have the same channels; got SR shape {tuple(sr_shape)} and '
            f'LR shape {tuple(lr_shape)} (HWC)'
        )
    return sr_h // lr_h


def matlab_downscale_uint8(img: np.ndarray, scale: int) -> np.ndarray:
    """Downscale a uint8 HWC image by an integer factor with BasicSR's MATLAB-style bicubic.

    The image is resized as float in [0, 1] (antialiased, as MATLAB's ``imresize``) and rounded
    back to uint8, which is what the release does before comparing with the LR image.

    Args:
        img (ndarray): Image of shape (h, w, c) or (h, w), range [0, 255].
        scale (int): Integer downscaling factor; h and w must be multiples of it.

    Returns:
        ndarray: uint8 image of shape (h // scale, w // scale[, c]).
    """
    small = imresize(img.astype(np.float32) / 255.0, 1.0 / scale)
    return np.clip(np.round(small * 255.0), 0, 255).astype(np.uint8)


@METRIC_REGISTRY.register()
def calculate_lr_psnr(
    img: np.ndarray,
    img2: np.ndarray | None = None,
    lq: np.ndarray | None = None,
    crop_border: int = 0,
    input_order: str = 'HWC',
    test_y_channel: bool = False,
    **kwargs: Any,
) -> float:
    """PSNR between the input LR image and the SR image downscaled by MATLAB-style bicubic.

    Args:
        img (ndarray): The SR image, uint8, range [0, 255], BGR (as BasicSR's ``tensor2img`` gives).
        img2 (ndarray | None): The HR image. Unused: accepted because BasicSR passes every image of
            ``data`` to every metric. Default: None.
        lq (ndarray | None): The input LR image, same layout as ``img``; its size must divide the
            SR size by the same integer in height and width. Required. Default: None.
        crop_border (int): Pixels cropped from each edge of the (LR-sized) images before the PSNR.
            Default: 0.
        input_order (str): 'HWC' or 'CHW'. Default: 'HWC'.
        test_y_channel (bool): Compare on the Y channel of YCbCr (images must be BGR). Default: False.
        **kwargs: Ignored (other options of the validation block).

    Returns:
        float: LR-PSNR in dB (inf when the downscaled SR equals the LR exactly).

    Raises:
        ValueError: ``lq`` is missing, or the SR size is not an integer multiple of the LR size.
    """
    if lq is None:
        raise ValueError(
            'calculate_lr_psnr needs the LR input image: call it with lq=<LR image> '
            '(the models pass data = dict(img=sr, img2=gt, lq=lr))'
        )
    if input_order not in ('HWC', 'CHW'):
        raise ValueError(f"calculate_lr_psnr: input_order must be 'HWC' or 'CHW', got {input_order!r}")
    sr = reorder_image(np.asarray(img), input_order=input_order)
    lr = reorder_image(np.asarray(lq), input_order=input_order)
    scale = _integer_scale(sr.shape, lr.shape)

    sr_down = matlab_downscale_uint8(sr, scale)
    # BasicSR's imresize sizes the output as ceil(size / scale); for integer factors this is exact,
    # but a mismatch here would make calculate_psnr fail with a bare assertion, so say it plainly.
    if sr_down.shape != lr.shape:
        raise ValueError(
            f'calculate_lr_psnr: downscaling SR {sr.shape} by {scale} gave {sr_down.shape}, not the LR shape {lr.shape}'
        )
    # Both images are HWC now, so the PSNR is taken with input_order 'HWC'.
    return float(calculate_psnr(sr_down, lr, crop_border=crop_border, input_order='HWC', test_y_channel=test_y_channel))
