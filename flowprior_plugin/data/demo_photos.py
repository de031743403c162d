"""A small paired SR dataset made from real photographs that ship inside installed packages.

No SR benchmark can be downloaded on an offline machine, but scikit-image and matplotlib ship
real photos (gray ones are used as RGB). They are split three ways, by photo: training photos are
cut into overlapping HR patches; a validation split of other photos is where training choices are
made; held-out photos are used whole, only for the final comparison. LR images are made with
BasicSR's MATLAB-style bicubic, as DIV2K's are. The result is BasicSR's paired-folder layout::

    root/train/HR/*.png  root/train/LR/*.png   (patches of the training photos)
    root/val/HR/*.png    root/val/LR/*.png     (validation split: whole photos, for choices)
    root/test/HR/*.png   root/test/LR/*.png    (held-out whole photos, for the verdict)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

TRAIN_PHOTOS = (
    'astronaut',
    'hubble_deep_field',
    'immunohistochemistry',
    'retina',
    'motorcycle',
    'grass',
    'gravel',
    'cell',
)
VALIDATION_PHOTOS = ('rocket', 'brick')
HELD_OUT_PHOTOS = ('chelsea', 'grace_hopper', 'coffee', 'camera', 'coins', 'moon')
FORMAT_VERSION = 3


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        if name == 'motorcycle':
            return skimage.data.stereo_motorcycle()[0]  # the left view only: the right one nearly repeats it
        return getattr(skimage.data, name)()

    return load


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook
    import matplotlib.image

    return matplotlib.image.imread(matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False))


def load_photo(name: str) -> np.ndarray:
    """An RGB uint8 photo by name (scikit-image's data module, or matplotlib's grace_hopper)."""
    photo = _grace_hopper() if name == 'grace_hopper' else _skimage(name)()
    if photo.ndim == 2:
        photo = np.stack([photo] * 3, axis=-1)
    return np.ascontiguousarray(photo[..., :3]).astype(np.uint8)


@dataclass
class DemoDatasetSpec:
    """What the dataset is made of; a folder whose spec matches is reused as it is."""

    scale: int = 4
    max_side: int = 512  # training photos are first shrunk (area) so their longer side is at most this
    patch: int = 192  # HR training patch size
    stride: int = 96  # step between training patches (they overlap by patch - stride)
    eval_max_side: int = 320  # validation and held-out photos are shrunk to this longer side
    eval_multiple: int = 12  # their sides are cropped to a multiple of this (whole LR pixels at x2, x3, x4)
    train_photos: tuple[str, ...] = TRAIN_PHOTOS
    validation_photos: tuple[str, ...] = VALIDATION_PHOTOS
    held_out_photos: tuple[str, ...] = HELD_OUT_PHOTOS
    version: int = FORMAT_VERSION


def _shrink(photo: np.ndarray, max_side: int) -> np.ndarray:
    h, w = photo.shape[:2]
    factor = max_side / max(h, w)
    if factor >= 1:
        return photo
    return cv2.resize(photo, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA)


def _bicubic_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    from basicsr.utils.matlab_functions import imresize

    lr = imresize(hr.astype(np.float32) / 255.0, 1 / scale)
    return (lr.clip(0, 1) * 255).round().astype(np.uint8)


def _write_pair(root: Path, split: str, name: str, hr: np.ndarray, scale: int) -> None:
    for sub, image in (('HR', hr), ('LR', _bicubic_lr(hr, scale))):
        folder = root / split / sub
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f'{name}.png'), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def _whole(photo: np.ndarray, spec: DemoDatasetSpec) -> np.ndarray:
    """A validation or held-out photo: shrunk, its sides cut to ``eval_multiple`` (centred)."""
    photo = _shrink(photo, spec.eval_max_side)
    h, w = photo.shape[:2]
    m = spec.eval_multiple
    top, left = (h % m) // 2, (w % m) // 2
    return photo[top : top + h - h % m, left : left + w - w % m]


def build_demo_dataset(root: str | Path, spec: DemoDatasetSpec | None = None) -> tuple[Path, bool]:
    """Write the dataset under ``root`` unless an identical one is already there.

    Returns:
        tuple[Path, bool]: The root, and whether an existing dataset was reused.
    """
    root = Path(root)
    spec = spec or DemoDatasetSpec()
    overlap = set(spec.train_photos) & (set(spec.validation_photos) | set(spec.held_out_photos))
    if overlap or set(spec.validation_photos) & set(spec.held_out_photos):
        raise ValueError(f'demo dataset: a photo is in two splits ({sorted(overlap)})')
    stamp = root / 'dataset.json'
    wanted = json.loads(json.dumps(asdict(spec)))  # tuples -> lists, as read back from JSON
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return root, True
    for split in ('train', 'seen', 'val', 'test'):
        for sub in ('HR', 'LR'):
            for old in (root / split / sub).glob('*.png'):
                old.unlink()
    for name in spec.train_photos:
        photo = _shrink(load_photo(name), spec.max_side)
        h, w = photo.shape[:2]
        for y in range(0, h - spec.patch + 1, spec.stride):
            for x in range(0, w - spec.patch + 1, spec.stride):
                patch = photo[y : y + spec.patch, x : x + spec.patch]
                _write_pair(root, 'train', f'{name}_{y:04d}_{x:04d}', patch, spec.scale)
    for split, names in (('val', spec.validation_photos), ('test', spec.held_out_photos)):
        for name in names:
            _write_pair(root, split, name, _whole(load_photo(name), spec), spec.scale)
    stamp.write_text(json.dumps(wanted, indent=2))
    return root, False
