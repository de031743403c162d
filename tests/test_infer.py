"""LR-only inference: the infer command on a folder of photos, and `basicsr test` without a GT."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import yaml
from conftest import TINY_PRIOR, TINY_SRFLOW, run_cli

from flowprior_plugin.infer import main


def _photos(folder, sizes=((13, 17), (16, 16))):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(folder / f'photo{i}.png'), (rng.random((h, w, 3)) * 255).astype(np.uint8))
    return folder


def _options(tmp_path, **extra) -> str:
    opt = {
        'name': 'tiny_lr_only',
        'model_type': 'FlowPriorModel',
        'scale': 4,
        'num_gpu': 0,
        'network_flow': dict(TINY_SRFLOW),
        'network_g': dict(TINY_PRIOR),
        'path': {'pretrain_network_flow': None, 'pretrain_network_g': None},
        'val': {'temperatures': [0.5]},
        **extra,
    }
    path = tmp_path / 'tiny.yml'
    path.write_text(yaml.safe_dump(opt))
    return str(path)


def test_infer_writes_one_png_per_input_and_sample(tmp_path):
    photos = _photos(tmp_path / 'photos')
    out = tmp_path / 'out'
    argv = ['-opt', _options(tmp_path), '-i', str(photos), '-o', str(out), '--tile', '8', '--device', 'cpu']
    assert main([*argv, '--samples', '2', '--temperature', '0.3']) == 0
    assert sorted(p.name for p in out.iterdir()) == ['photo0.png', 'photo0_s1.png', 'photo1.png', 'photo1_s1.png']
    sr = cv2.imread(str(out / 'photo0.png'))
    assert sr.shape == (52, 68, 3)  # 4x the odd-sized input (padded for SRFlow, cropped back)
    assert np.abs(sr.astype(int) - cv2.imread(str(out / 'photo0_s1.png')).astype(int)).max() > 0


@pytest.mark.parametrize(
    ('image', 'words'),
    [
        (np.zeros((8, 8), np.uint8), 'grayscale'),
        (np.zeros((8, 8, 4), np.uint8), 'RGBA'),
        (np.zeros((8, 8, 3), np.uint16), '16-bit'),
        (None, 'cannot be read'),
    ],
)
def test_bad_images_get_one_line(tmp_path, capsys, image, words):
    folder = tmp_path / 'photos'
    folder.mkdir()
    if image is None:
        (folder / 'broken.png').write_bytes(b'not an image')
    else:
        cv2.imwrite(str(folder / 'bad.png'), image)
    assert main(['-opt', _options(tmp_path), '-i', str(folder), '-o', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_basicsr_test_on_lr_only_data_writes_every_method(tmp_path):
    photos = _photos(tmp_path / 'photos')
    dataset = {'name': 'mine', 'type': 'SingleImageDataset', 'dataroot_lq': str(photos), 'io_backend': {'type': 'disk'}}
    metrics = {
        'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
        'lr_psnr': {'type': 'calculate_lr_psnr', 'crop_border': 0},
    }
    val = {'temperatures': [0.5], 'save_img': True, 'tile': {'size': 8, 'overlap': 4}, 'metrics': metrics}
    result = run_cli(['test', '-opt', _options(tmp_path, datasets={'test_1': dataset}, val=val)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / 'results' / 'tiny_lr_only'
    for method in ('prior', 'tau0.5'):
        assert sorted(p.name for p in (root / 'visualization' / 'mine' / method).iterdir()) == [
            'photo0.png',
            'photo1.png',
        ]
    summary = json.loads((root / 'summary_mine.json').read_text())
    for entry in summary['methods']:
        assert 'psnr' not in entry  # needs a GT
        assert entry['lr_psnr'] > 0 and entry['nonfinite'] == 0
