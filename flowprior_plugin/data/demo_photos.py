"""A small paired SR dataset made from real photographs that ship inside installed packages.

No SR benchmark can be downloaded on an offline machine, but scikit-image and matplotlib ship
real photos. Training photos are cut into HR patches; held-out photos are used for evaluation
only. LR images are made with BasicSR's MATLAB-style bicubic, as DIV2K's are. The result is
BasicSR's paired-folder layout::

    root/train/HR/*.png  root/train/LR/*.png   (patches)
    root/seen/HR/*.png   root/seen/LR/*.png    (a few training patches: an in-distribution check)
    root/val/HR/*.png    root/val/LR/*.png     (held-out photos, centre crops)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

TRAIN_PHOTOS = ('astronaut', 'coffee', 'rocket', 'hubble_deep_field', 'immunohistochemistry', 'retina', 'motorcycle')
HELD_OUT_PHOTOS = ('chelsea', 'grace_hopper')
FORMAT_VERSION = 2


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
    max_side: int = 512  # photos are first shrunk (area) so their longer side is at most this
    patch: int = 96  # HR training patch size (stride = patch)
    val_crop: int = 192  # HR centre crop of each held-out photo
    seen_patches: int = 8  # training patches also evaluated (spread evenly over the patch list)
    train_photos: tuple[str, ...] = TRAIN_PHOTOS
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


def build_demo_dataset(root: str | Path, spec: DemoDatasetSpec | None = None) -> tuple[Path, bool]:
    """Write the dataset under ``root`` unless an identical one is already there.

    Returns:
        tuple[Path, bool]: The root, and whether an existing dataset was reused.
    """
    root = Path(root)
    spec = spec or DemoDatasetSpec()
    stamp = root / 'dataset.json'
    wanted = json.loads(json.dumps(asdict(spec)))  # tuples -> lists, as read back from JSON
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return root, True
    for split in ('train', 'seen', 'val'):
        for sub in ('HR', 'LR'):
            for old in (root / split / sub).glob('*.png'):
                old.unlink()
    m = spec.scale
    patches = []
    for name in spec.train_photos:
        photo = _shrink(load_photo(name), spec.max_side)
        h, w = photo.shape[:2]
        for y in range(0, h - spec.patch + 1, spec.patch):
            for x in range(0, w - spec.patch + 1, spec.patch):
                patches.append((f'{name}_{y:04d}_{x:04d}', photo[y : y + spec.patch, x : x + spec.patch]))
    for patch_name, patch in patches:
        _write_pair(root, 'train', patch_name, patch, m)
    step = max(1, len(patches) // max(1, spec.seen_patches))
    for patch_name, patch in patches[::step][: spec.seen_patches]:
        _write_pair(root, 'seen', patch_name, patch, m)
    for name in spec.held_out_photos:
        photo = _shrink(load_photo(name), spec.max_side)
        h, w = photo.shape[:2]
        side = min(spec.val_crop, h - h % m, w - w % m)
        top, left = (h - side) // 2, (w - side) // 2
        _write_pair(root, 'val', name, photo[top : top + side, left : left + side], m)
    stamp.write_text(json.dumps(wanted, indent=2))
    return root, False
