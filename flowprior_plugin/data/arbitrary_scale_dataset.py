"""Arbitrary-scale SR data made on the fly from a folder of HR images, as LINF / LINF-LP train and test.

Paired folders at fixed scales (LR files made beforehand, e.g. DIV2K's MATLAB-bicubic LR) need
nothing from here: BasicSR's ``PairedImageDataset`` reads them.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from basicsr.data.data_util import paths_from_folder, paths_from_lmdb
from basicsr.utils import FileClient, imfrombytes, img2tensor
from basicsr.utils.matlab_functions import calculate_weights_indices
from basicsr.utils.registry import DATASET_REGISTRY
from PIL import Image
from torch.utils import data

from flowprior_plugin.errors import OptionError

_RESIZERS = ('pil', 'matlab')
_PHASES = ('train', 'val', 'test')


def matlab_bicubic_resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """MATLAB ``imresize(img, [out_h out_w], 'bicubic')`` built on BasicSR's MATLAB weights.

    BasicSR's ``imresize`` takes one scale for both axes and sizes its output ``ceil(in * scale)``,
    which cannot hit a non-square target exactly (and can be off by one through float rounding).
    MATLAB itself, given an output size, uses the scale ``out / in`` per axis; this does that with
    BasicSR's ``calculate_weights_indices`` (same cubic kernel, antialiasing and symmetric padding),
    so for equal per-axis scales it equals ``imresize`` up to float summation order.

    Args:
        img: Image (H, W, C), float, range [0, 1].
        out_h: Output height.
        out_w: Output width.

    Returns:
        The resized image (out_h, out_w, C), float32, neither clipped nor rounded.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    tensor = _resize_axis(tensor, 0, out_h)
    tensor = _resize_axis(tensor, 1, out_w)
    return tensor.numpy()


def _resize_axis(tensor: torch.Tensor, dim: int, out_len: int) -> torch.Tensor:
    """Resizes one axis of ``tensor`` to ``out_len`` with MATLAB's antialiased bicubic kernel."""
    in_len = tensor.shape[dim]
    if in_len == out_len:  # the cubic kernel is 1 at 0 and 0 at the other integers: identity
        return tensor
    weights, indices, sym_start, sym_end = calculate_weights_indices(
        in_len, out_len, out_len / in_len, 'cubic', 4, True
    )
    # Mirror the borders as imresize does; ``indices`` already count from the padded start.
    head = tensor.narrow(dim, 0, sym_start).flip(dim)
    tail = tensor.narrow(dim, in_len - sym_end, sym_end).flip(dim)
    padded = torch.cat([head, tensor, tail], dim).movedim(dim, -1)
    taps = padded[..., indices.long()]  # (..., out_len, kernel taps)
    return (taps * weights).sum(-1).movedim(-1, dim)


def _pil_bicubic_resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PIL bicubic resize of an 8-bit (H, W, C) image, as the LIIF / LINF releases make their LR."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((out_w, out_h), Image.BICUBIC))


def _to_float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / 255.0


@DATASET_REGISTRY.register()
class ArbitraryScaleSRDataset(data.Dataset):
    """Random-scale LR/HR pairs made on the fly from HR images.

    Training: each sample draws a scale ``s ~ U(scale_min, scale_max)``, crops a square HR region of
    ``round(lq_size * s)`` pixels, bicubically resizes the whole crop to ``lq_size x lq_size`` (the
    LR input) and takes a random ``gt_size x gt_size`` window inside the crop (the target). The
    defaults are the released LINF-LP recipe: LR 96, window 96, all 8 flips / rotations. A batch
    mixes scales. ``scale`` is ignored in training (BasicSR writes the model's scale there): train a
    single scale with ``scale_min == scale_max``.

    Validation / testing (``phase`` 'val' or 'test'): no randomness, the fixed scale ``test_scale``
    (else ``scale``: BasicSR copies the top-level ``scale`` into every dataset, so ``test_scale`` is
    how one validates at another scale), the whole image as LIIF evaluates arbitrary scales:
    ``h = floor(H_img / s)``, ``w = floor(W_img / s)``, the HR is the top-left
    ``round(h * s) x round(w * s)`` region (as BasicSR's ``mod_crop`` keeps the top-left), ``lq`` its
    ``h x w`` bicubic resize, ``gt`` that whole region. Per axis the size ratio differs from ``s`` by
    less than half an HR pixel over the image. Images differ in size: batch size 1.

    Besides ``lq`` and ``gt`` each sample carries its geometry, in the frame of the returned
    (augmented) images: ``hr_size``, the (H, W) of the HR crop ``lq`` covers exactly (an
    arbitrary-scale flow builds its query grid over the LR on it); ``window``, the (top, left) of
    ``gt`` in that crop; ``scale``, in training the realised ``H / lq_size`` (the drawn ``s`` moved to
    a whole-pixel crop, at most ``0.5 / lq_size`` away, and kept inside ``[scale_min, scale_max]``
    when that range holds one), in validation the requested scale.

    Args:
        opt: Dataset options (the whole dict BasicSR's ``build_dataset`` passes):

            * ``dataroot_gt`` (str): Folder of HR images (or a ``.lmdb`` folder with the lmdb backend).
            * ``io_backend`` (dict): BasicSR file client; ``type`` 'disk' or 'lmdb'. Default: disk.
            * ``phase`` (str): 'train' (random scale, crop, window, flips) or 'val' / 'test' (fixed
              scale, whole image, deterministic). Default: 'train'.
            * ``scale_min`` (float): Smallest training scale, at least 1. Default: 1.0.
            * ``scale_max`` (float): Largest training scale. Default: 4.0.
            * ``gt_size`` (int): Side of the HR window (the target). Default: 96.
            * ``lq_size`` (int): Side of the LR input; the HR crop is ``round(lq_size * s)``.
              Default: ``gt_size`` (the release: LR 96, window 96).
            * ``lr_resize`` (str): 'pil' (PIL bicubic on 8-bit images) or 'matlab' (MATLAB bicubic,
              BasicSR's kernel). Default: 'pil', because the released LINF / LINF-LP checkpoints were
              trained on PIL-bicubic LR, and fine-tuning them should see the LR they know. Use
              'matlab' to match LR files made with MATLAB (DIV2K's, the benchmarks'). Either way the
              LR is rounded to 8 bits, like LR stored as images.
            * ``use_hflip`` (bool): Random horizontal flips. Default: True.
            * ``use_rot`` (bool): Random vertical flips and transposes (BasicSR's rotation; with
              ``use_hflip`` all 8 flips / rotations, the release's augmentation). Default: True.
            * ``repeat`` (int): Times each image is listed per epoch (like ``dataset_enlarge_ratio``,
              but inside the dataset). Default: 1.
            * ``test_scale`` (float): Fixed scale for 'val' / 'test'. Default: ``scale``.
            * ``scale`` (float): Filled in by BasicSR from the top-level ``scale``; the fixed scale for
              'val' / 'test' when ``test_scale`` is absent, ignored in training.
            * ``group`` (str): Not read here: a free label (e.g. 'in-distribution') that the flow
              models print beside this test set in the run's ``summary.md``. Default: none.

    Raises:
        OptionError: An option is missing or out of range, or ``dataroot_gt`` is not a folder of
            images. The message names the option, what was expected and what was given.
    """

    def __init__(self, opt: dict[str, Any]) -> None:
        super().__init__()
        self.opt = opt
        self.phase = str(opt.get('phase', 'train'))
        if self.phase not in _PHASES:
            raise OptionError(f'phase: expected one of {", ".join(_PHASES)}, got {self.phase!r}')
        self.train = self.phase == 'train'

        self.scale_min = _positive_float(opt, 'scale_min', 1.0)
        self.scale_max = _positive_float(opt, 'scale_max', 4.0)
        if self.scale_min < 1.0:
            raise OptionError(f'scale_min: expected at least 1 (super-resolution), got {self.scale_min}')
        if self.scale_min > self.scale_max:
            raise OptionError(
                f'scale_min / scale_max: expected scale_min <= scale_max, got {self.scale_min} > {self.scale_max}'
            )
        self.gt_size = _positive_int(opt, 'gt_size', 96)
        self.lq_size = _positive_int(opt, 'lq_size', self.gt_size)
        self.repeat = _positive_int(opt, 'repeat', 1)
        self.use_hflip = bool(opt.get('use_hflip', True))
        self.use_rot = bool(opt.get('use_rot', True))
        self.lr_resize = str(opt.get('lr_resize', 'pil'))
        if self.lr_resize not in _RESIZERS:
            raise OptionError(f'lr_resize: expected one of {", ".join(_RESIZERS)}, got {self.lr_resize!r}')

        # Whole-pixel HR crop sides that keep the realised scale inside [scale_min, scale_max].
        self._crop_lo = math.ceil(self.lq_size * self.scale_min - 1e-9)
        self._crop_hi = math.floor(self.lq_size * self.scale_max + 1e-9)
        if self.train and self._smallest_crop() < self.gt_size:
            raise OptionError(
                f'gt_size: expected at most the smallest HR crop round(lq_size * scale_min) = '
                f'{self._smallest_crop()} (lq_size {self.lq_size}, scale_min {self.scale_min}), got {self.gt_size}'
            )

        self.test_scale: float | None = None
        if not self.train:
            key = 'test_scale' if opt.get('test_scale') is not None else 'scale'
            if opt.get(key) is None:
                raise OptionError(
                    f'test_scale: expected a fixed scale for phase {self.phase!r} (test_scale, or scale as BasicSR '
                    'fills it in), got none'
                )
            self.test_scale = _positive_float(opt, key, None)
            if self.test_scale < 1.0:
                raise OptionError(f'{key}: expected at least 1 (super-resolution), got {self.test_scale}')

        self.io_backend_opt = dict(opt.get('io_backend') or {'type': 'disk'})
        backend = self.io_backend_opt.get('type', 'disk')
        root = opt.get('dataroot_gt')
        if root is None:
            raise OptionError('dataroot_gt: expected a folder of HR images, got none')
        root = str(root)
        if not os.path.isdir(root):
            raise OptionError(f'dataroot_gt: expected a folder of HR images, got {root!r} (not a folder)')
        if backend == 'disk':
            self.paths = sorted(paths_from_folder(root))
        elif backend == 'lmdb':
            if not root.endswith('.lmdb') or not os.path.isfile(os.path.join(root, 'meta_info.txt')):
                raise OptionError(
                    f'dataroot_gt: expected a .lmdb folder with meta_info.txt for io_backend lmdb, got {root!r}'
                )
            self.io_backend_opt['db_paths'] = [root]
            self.io_backend_opt['client_keys'] = ['gt']
            self.paths = paths_from_lmdb(root)
        else:
            raise OptionError(f'io_backend.type: expected disk or lmdb, got {backend!r}')
        if not self.paths:
            raise OptionError(f'dataroot_gt: expected a folder of HR images, got {root!r} (empty)')

        self.file_client: FileClient | None = None  # opened lazily, once per worker process
        self._rng: np.random.Generator | None = None
        self._rng_owner: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.paths) * self.repeat

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One sample: ``lq``, ``gt``, ``scale``, ``hr_size``, ``window``, ``lq_path``, ``gt_path``."""
        path = self.paths[index % len(self.paths)]
        img = self._read(path)
        if self.train:
            crop, scale, window = self._train_crop(img, path)
            lq_h = lq_w = self.lq_size
            top, left = window
            gt = crop[top : top + self.gt_size, left : left + self.gt_size]
        else:
            crop, lq_h, lq_w = self._test_crop(img, path)
            scale, window, gt = self.test_scale, (0, 0), crop
        lq = self._resize(crop, lq_h, lq_w)
        lq_t, gt_t = img2tensor([lq, _to_float(gt)], bgr2rgb=True, float32=True)
        # Fixed shapes, per-sample geometry as small tensors: BasicSR's build_dataloader takes no
        # collate function or batch sampler, so a batch mixing scales must collate by default.
        return {
            'lq': lq_t,
            'gt': gt_t,
            'scale': torch.tensor(scale, dtype=torch.float32),
            'hr_size': torch.tensor(crop.shape[:2], dtype=torch.long),
            'window': torch.tensor(window, dtype=torch.long),
            'lq_path': path,  # the LR is made from the HR file; BasicSR names results after lq_path
            'gt_path': path,
        }

    def _smallest_crop(self) -> int:
        return self._crop_lo if self._crop_lo <= self._crop_hi else round(self.lq_size * self.scale_min)

    def _generator(self) -> np.random.Generator:
        """The generator of this process, made on first use from ``torch.initial_seed()``.

        In a DataLoader worker that seed is ``base_seed + worker_id`` with ``base_seed`` drawn from
        torch's RNG every epoch; in the main process (``num_worker_per_gpu: 0``) it is BasicSR's
        ``manual_seed``. Runs are reproducible given the seed while workers and epochs differ, without
        BasicSR's ``worker_init_fn`` (which seeds only ``random`` and ``numpy``, and only given a seed).
        """
        info = data.get_worker_info()
        owner = (os.getpid(), info.id if info is not None else -1)
        # A worker receives a copy of the dataset; a generator copied from the parent would repeat
        # the parent's (and every sibling's) draws, so each process makes its own.
        if self._rng is None or self._rng_owner != owner:
            self._rng = np.random.default_rng(torch.initial_seed())
            self._rng_owner = owner
        return self._rng

    def _read(self, path: str) -> np.ndarray:
        if self.file_client is None:
            backend_opt = dict(self.io_backend_opt)  # left whole: a copy in a worker opens its own client
            self.file_client = FileClient(backend_opt.pop('type', 'disk'), **backend_opt)
        img = imfrombytes(self.file_client.get(path, 'gt'), float32=False)
        if img is None:
            raise OptionError(f'dataroot_gt: expected images, got {path!r} (cannot be decoded)')
        return img  # uint8 BGR (H, W, 3)

    def _train_crop(self, img: np.ndarray, path: str) -> tuple[np.ndarray, float, tuple[int, int]]:
        """Random scale, square HR crop (augmented), and the window; the crop is uint8 (n, n, C)."""
        rng = self._generator()
        drawn = float(rng.uniform(self.scale_min, self.scale_max))
        side = round(self.lq_size * drawn)
        if self._crop_lo <= self._crop_hi:  # keep the realised scale inside the range when possible
            side = min(max(side, self._crop_lo), self._crop_hi)
        h, w = img.shape[:2]
        if side > h or side > w:
            raise OptionError(
                f'scale_max / lq_size: the HR crop round(lq_size * scale) = {side} does not fit {path!r} '
                f'({h}x{w}); expected images of at least {self._crop_hi}x{self._crop_hi}, lower scale_max or lq_size'
            )
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        crop = img[top : top + side, left : left + side]
        # Augment the whole crop before resizing and windowing, so lq, gt and window agree by construction.
        hflip, vflip, transpose = rng.random(3) < 0.5
        if self.use_hflip and hflip:
            crop = crop[:, ::-1]
        if self.use_rot and vflip:
            crop = crop[::-1]
        if self.use_rot and transpose:
            crop = crop.transpose(1, 0, 2)
        crop = np.ascontiguousarray(crop)
        window = (int(rng.integers(0, side - self.gt_size + 1)), int(rng.integers(0, side - self.gt_size + 1)))
        return crop, side / self.lq_size, window

    def _test_crop(self, img: np.ndarray, path: str) -> tuple[np.ndarray, int, int]:
        """The top-left HR region that ``floor(size / s)`` LR pixels cover, and that LR size."""
        scale = self.test_scale
        h, w = img.shape[:2]
        lq_h, lq_w = math.floor(h / scale + 1e-9), math.floor(w / scale + 1e-9)
        if lq_h < 1 or lq_w < 1:
            raise OptionError(f'test_scale: {scale} leaves no LR pixel of {path!r} ({h}x{w})')
        return img[: min(h, round(lq_h * scale)), : min(w, round(lq_w * scale))], lq_h, lq_w

    def _resize(self, crop: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
        """Bicubic LR of an 8-bit crop, rounded to 8 bits, as float32 in [0, 1]."""
        if self.lr_resize == 'pil':
            return _to_float(_pil_bicubic_resize(crop, out_h, out_w))
        lq = matlab_bicubic_resize(_to_float(crop), out_h, out_w)
        return np.clip(np.round(lq * 255.0), 0, 255).astype(np.float32) / 255.0


def _positive_float(opt: dict[str, Any], key: str, default: float | None) -> float:
    value = opt.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionError(f'{key}: expected a positive number, got {value!r}') from None
    if not math.isfinite(number) or number <= 0:
        raise OptionError(f'{key}: expected a positive number, got {value!r}')
    return number


def _positive_int(opt: dict[str, Any], key: str, default: int) -> int:
    value = opt.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f'{key}: expected an integer of at least 1, got {value!r}')
    return value
