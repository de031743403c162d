"""ArbitraryScaleSRDataset: shapes, exact lq/gt geometry, augmentation, seeding, collation, options."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.utils.matlab_functions import imresize
from PIL import Image

from flowprior_plugin.data.arbitrary_scale_dataset import ArbitraryScaleSRDataset, matlab_bicubic_resize
from flowprior_plugin.errors import OptionError

SMALL = {'lq_size': 24, 'gt_size': 16}  # crops up to 96 px keep the tests fast


def _noise_image(seed: int, height: int, width: int) -> np.ndarray:
    # Noise makes every window unique, so a window's place in the source can be found exactly.
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def hr_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp('hr')
    cv2.imwrite(str(folder / 'a.png'), _noise_image(1, 140, 130))
    cv2.imwrite(str(folder / 'b.png'), _noise_image(2, 120, 150))
    return folder


def _opt(folder: Path, **changes) -> dict:
    opt = {'dataroot_gt': str(folder), 'io_backend': {'type': 'disk'}, 'phase': 'train', **SMALL}
    opt.update(changes)
    return opt


def _to_uint8_bgr(tensor: torch.Tensor) -> np.ndarray:
    return np.round(tensor.permute(1, 2, 0).numpy()[..., ::-1] * 255).astype(np.uint8).copy()


def _dihedral(img: np.ndarray, hflip: bool, vflip: bool, transpose: bool) -> np.ndarray:
    # Same order as BasicSR's augment: horizontal flip, vertical flip, transpose.
    if hflip:
        img = img[:, ::-1]
    if vflip:
        img = img[::-1]
    if transpose:
        img = img.transpose(1, 0, 2)
    return np.ascontiguousarray(img)


def _locate(source: np.ndarray, gt: np.ndarray) -> list[tuple[tuple[bool, ...], int, int]]:
    """Every (transform, y, x) where ``gt`` is an exact window of a flipped / rotated ``source``."""
    found = []
    for ops in itertools.product((False, True), repeat=3):
        view = _dihedral(source, *ops)
        diff = cv2.matchTemplate(view.astype(np.float32), gt.astype(np.float32), cv2.TM_SQDIFF)
        # matchTemplate's float sums are not exact: screen loosely, then compare pixels exactly.
        for y, x in zip(*np.nonzero(diff < 1000)):
            if np.array_equal(view[y : y + gt.shape[0], x : x + gt.shape[1]], gt):
                found.append((ops, int(y), int(x)))
    return found


@pytest.mark.parametrize('scale', [1.0, 1.37, 2.0, 2.5, 3.3, 4.0])
def test_shapes_and_geometry_at_fixed_scales(hr_folder, scale):
    ds = ArbitraryScaleSRDataset(_opt(hr_folder, scale_min=scale, scale_max=scale))
    sample = ds[0]
    side = round(24 * scale)
    assert sample['lq'].shape == (3, 24, 24)
    assert sample['gt'].shape == (3, 16, 16)
    assert sample['lq'].dtype == sample['gt'].dtype == torch.float32
    assert sample['hr_size'].tolist() == [side, side]
    assert sample['scale'].dtype == torch.float32 and sample['scale'].ndim == 0
    assert sample['scale'].item() == pytest.approx(side / 24)
    assert abs(sample['scale'].item() - scale) <= 0.5 / 24 + 1e-6
    top, left = sample['window'].tolist()
    assert 0 <= top <= side - 16 and 0 <= left <= side - 16
    assert sample['lq_path'] == sample['gt_path'] == str(hr_folder / 'a.png')


def test_defaults_are_the_release_recipe(tmp_path):
    cv2.imwrite(str(tmp_path / 'big.png'), _noise_image(3, 400, 390))
    ds = ArbitraryScaleSRDataset({'dataroot_gt': str(tmp_path), 'io_backend': {'type': 'disk'}, 'phase': 'train'})
    assert (ds.scale_min, ds.scale_max, ds.gt_size, ds.lq_size, ds.lr_resize) == (1.0, 4.0, 96, 96, 'pil')
    sample = ds[0]
    assert sample['lq'].shape == sample['gt'].shape == (3, 96, 96)
    assert 96 <= sample['hr_size'][0] <= 384


@pytest.mark.parametrize('lr_resize', ['pil', 'matlab'])
def test_lq_and_gt_come_from_one_crop_with_consistent_flips(hr_folder, lr_resize):
    """Direct geometry check: gt is an exact window of a flipped source, lq is the resize of its crop."""
    ds = ArbitraryScaleSRDataset(_opt(hr_folder, scale_min=1.0, scale_max=3.5, lr_resize=lr_resize))
    source = cv2.imread(str(hr_folder / 'a.png'))
    transforms = set()
    for index in range(24):
        sample = ds[2 * index]  # even indices: image a
        gt = _to_uint8_bgr(sample['gt'])
        found = _locate(source, gt)
        assert len(found) == 1, f'gt is not one exact window of the source (found {len(found)})'
        ops, y, x = found[0]
        transforms.add(ops)
        top, left = sample['window'].tolist()
        side = int(sample['hr_size'][0])
        view = _dihedral(source, *ops)
        oy, ox = y - top, x - left  # the crop's origin in the flipped source
        assert 0 <= oy and 0 <= ox and oy + side <= view.shape[0] and ox + side <= view.shape[1]
        crop = view[oy : oy + side, ox : ox + side]
        if lr_resize == 'pil':
            expected = np.asarray(Image.fromarray(crop).resize((24, 24), Image.BICUBIC)).astype(np.float32) / 255
        else:
            expected = np.clip(np.round(matlab_bicubic_resize(crop / 255.0, 24, 24) * 255), 0, 255) / 255
        lq = sample['lq'].permute(1, 2, 0).numpy()[..., ::-1]
        np.testing.assert_allclose(lq, expected, atol=1.5 / 255)
    assert len(transforms) >= 6, f'flips / rotations barely used: {sorted(transforms)}'


@pytest.mark.parametrize(
    ('use_hflip', 'use_rot', 'allowed'),
    [
        (False, False, {(False, False, False)}),
        (True, False, {(False, False, False), (True, False, False)}),
    ],
)
def test_augmentation_switches(hr_folder, use_hflip, use_rot, allowed):
    ds = ArbitraryScaleSRDataset(_opt(hr_folder, use_hflip=use_hflip, use_rot=use_rot))
    source = cv2.imread(str(hr_folder / 'a.png'))
    seen = set()
    for index in range(12):
        found = _locate(source, _to_uint8_bgr(ds[2 * index]['gt']))
        assert len(found) == 1
        seen.add(found[0][0])
    assert seen == allowed


def test_scale_range_respected_over_many_draws(hr_folder):
    ds = ArbitraryScaleSRDataset(_opt(hr_folder, lq_size=20, gt_size=16, scale_min=1.3, scale_max=3.7))
    samples = [ds[i] for i in range(300)]
    scales = np.array([s['scale'].item() for s in samples])
    sides = np.array([s['hr_size'].tolist() for s in samples])
    assert np.all(sides[:, 0] == sides[:, 1])
    np.testing.assert_allclose(scales, sides[:, 0] / 20, rtol=1e-6)
    assert scales.min() >= 1.3 - 1e-6 and scales.max() <= 3.7 + 1e-6
    # Uniform over the range: both ends reached, the middle in the middle, many distinct crops.
    assert scales.min() < 1.45 and scales.max() > 3.55
    assert abs(scales.mean() - 2.5) < 0.15
    assert len(set(sides[:, 0].tolist())) > 30


def test_rounded_crops_stay_inside_the_scale_range(hr_folder):
    # 10 * [1.33, 1.52] = [13.3, 15.2]: rounding alone would give 13 px crops (scale 1.3) for s < 1.35.
    ds = ArbitraryScaleSRDataset(_opt(hr_folder, lq_size=10, gt_size=8, scale_min=1.33, scale_max=1.52))
    sides = {int(ds[i]['hr_size'][0]) for i in range(100)}
    assert sides == {14, 15}


def test_reproducible_with_fixed_seed(hr_folder):
    def draw(seed: int) -> list[dict]:
        torch.manual_seed(seed)
        ds = ArbitraryScaleSRDataset(_opt(hr_folder))
        return [ds[i] for i in range(6)]

    first, again, other = draw(7), draw(7), draw(8)
    for a, b in zip(first, again):
        for key in ('lq', 'gt', 'scale', 'hr_size', 'window'):
            assert torch.equal(a[key], b[key]), key
    assert [s['scale'].item() for s in first] != [s['scale'].item() for s in other]


def test_mixed_scale_batches_through_basicsr_dataloader(hr_folder):
    opt = _opt(
        hr_folder,
        name='arbitrary',
        type='ArbitraryScaleSRDataset',
        repeat=8,
        scale=4,  # BasicSR copies the top-level scale here; training must ignore it
        batch_size_per_gpu=4,
        num_worker_per_gpu=2,
        use_shuffle=True,
    )
    dataset = build_dataset(opt)
    assert isinstance(dataset, ArbitraryScaleSRDataset) and len(dataset) == 16
    dataset[0]  # the parent makes its generator first: workers must still not inherit it

    def batches(seed: int) -> list[dict]:
        torch.manual_seed(seed)
        return list(build_dataloader(dataset, opt, num_gpu=1, dist=False, sampler=None, seed=seed))

    loaded = batches(3)
    assert len(loaded) == 4
    batch = loaded[0]
    assert batch['lq'].shape == (4, 3, 24, 24) and batch['gt'].shape == (4, 3, 16, 16)
    assert batch['scale'].shape == (4,) and batch['hr_size'].shape == batch['window'].shape == (4, 2)
    assert len(set(batch['scale'].tolist())) > 1, 'a batch should mix scales'
    assert batch['scale'].max() < 4.01 and not torch.all(batch['scale'] == 4)
    np.testing.assert_allclose(batch['scale'].numpy(), batch['hr_size'][:, 0].numpy() / 24, rtol=1e-6)
    # Batches 0 and 1 come from the two workers: their draws must differ.
    assert not torch.equal(loaded[0]['scale'], loaded[1]['scale'])
    for a, b in zip(loaded, batches(3)):
        assert torch.equal(a['gt'], b['gt']) and torch.equal(a['scale'], b['scale'])


def test_validation_is_deterministic_whole_image(hr_folder):
    source = cv2.imread(str(hr_folder / 'a.png'))  # 140 x 130
    for scale, lq_hw, gt_hw in [(2.5, (56, 52), (140, 130)), (3.0, (46, 43), (138, 129)), (2.3, (60, 56), (138, 129))]:
        ds = ArbitraryScaleSRDataset(_opt(hr_folder, phase='val', scale=4, test_scale=scale))
        first, second = ds[0], ds[0]
        for key in ('lq', 'gt', 'scale', 'hr_size', 'window'):
            assert torch.equal(first[key], second[key]), key
        assert first['lq'].shape[1:] == lq_hw and first['gt'].shape[1:] == gt_hw
        assert first['hr_size'].tolist() == list(gt_hw) and first['window'].tolist() == [0, 0]
        assert first['scale'].item() == pytest.approx(scale)
        crop = source[: gt_hw[0], : gt_hw[1]]
        assert np.array_equal(_to_uint8_bgr(first['gt']), crop)
        expected = np.asarray(Image.fromarray(crop).resize(lq_hw[::-1], Image.BICUBIC))
        assert np.array_equal(_to_uint8_bgr(first['lq']), expected)
    # Without test_scale the scale BasicSR copies in is used.
    assert ArbitraryScaleSRDataset(_opt(hr_folder, phase='test', scale=4))[0]['lq'].shape[1:] == (35, 32)


@pytest.mark.parametrize(
    ('height', 'width', 'scale'), [(100, 120, 0.5), (100, 120, 0.25), (100, 100, 0.4), (48, 48, 0.75)]
)
def test_matlab_resize_matches_basicsr_imresize(height, width, scale):
    # Equal per-axis scales (out / in the same on both axes), where BasicSR's one-scale imresize applies.
    img = np.random.default_rng(4).random((height, width, 3), dtype=np.float32)
    reference = imresize(img, scale)
    ours = matlab_bicubic_resize(img, *reference.shape[:2])
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_lmdb_backend_matches_disk(hr_folder, tmp_path):
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    lmdb_path = str(tmp_path / 'hr.lmdb')
    make_lmdb_from_imgs(str(hr_folder), lmdb_path, ['a.png', 'b.png'], ['a', 'b'])
    torch.manual_seed(11)
    from_disk = ArbitraryScaleSRDataset(_opt(hr_folder))[1]
    torch.manual_seed(11)
    from_lmdb = ArbitraryScaleSRDataset(_opt(Path(lmdb_path), io_backend={'type': 'lmdb'}))[1]
    assert torch.equal(from_disk['gt'], from_lmdb['gt']) and torch.equal(from_disk['lq'], from_lmdb['lq'])


@pytest.mark.parametrize(
    ('changes', 'option'),
    [
        ({'scale_min': 3.0, 'scale_max': 2.0}, 'scale_min / scale_max'),
        ({'scale_min': 0.5}, 'scale_min'),
        ({'scale_max': 'big'}, 'scale_max'),
        ({'gt_size': 0}, 'gt_size'),
        ({'gt_size': 30, 'lq_size': 24}, 'gt_size'),
        ({'lq_size': 2.5}, 'lq_size'),
        ({'repeat': 0}, 'repeat'),
        ({'lr_resize': 'nearest'}, 'lr_resize'),
        ({'phase': 'training'}, 'phase'),
        ({'phase': 'val'}, 'test_scale'),
        ({'phase': 'val', 'test_scale': 0.5}, 'test_scale'),
        ({'dataroot_gt': '/nonexistent/hr'}, 'dataroot_gt'),
        ({'dataroot_gt': None}, 'dataroot_gt'),
        ({'io_backend': {'type': 'memcached'}}, 'io_backend.type'),
        ({'io_backend': {'type': 'lmdb'}}, 'dataroot_gt'),
    ],
)
def test_bad_options_name_the_option(hr_folder, changes, option):
    with pytest.raises(OptionError, match=f'^{option}: expected'):
        ArbitraryScaleSRDataset(_opt(hr_folder, **changes))


def test_empty_folder_and_too_small_images(tmp_path, hr_folder):
    with pytest.raises(OptionError, match='^dataroot_gt: .*empty'):
        ArbitraryScaleSRDataset(_opt(tmp_path))
    ds = ArbitraryScaleSRDataset(_opt(hr_folder, lq_size=40, gt_size=16, scale_min=4.0, scale_max=4.0))
    with pytest.raises(OptionError, match=r'^scale_max / lq_size: .*a\.png.*\(140x130\)'):
        ds[0]
