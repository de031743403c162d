"""Shared fixtures: the team's reference material and small deterministic helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import flowprior_plugin  # noqa: F401  (registers everything, installs the torchvision stand-in)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _reference_dir() -> Path:
    env = os.environ.get('FLOWPRIOR_REFERENCE')
    return Path(env) if env else REPO_ROOT.parent / 'shared' / 'reference'


@pytest.fixture(scope='session')
def reference_dir() -> Path:
    """``../shared/reference`` beside the checkout (CI lays it there), or $FLOWPRIOR_REFERENCE."""
    path = _reference_dir()
    if not (path / 'golden' / 'golden_weights.py').is_file():
        pytest.fail(f'reference material not found at {path}; set FLOWPRIOR_REFERENCE to its folder')
    return path


@pytest.fixture(scope='session')
def golden_weights(reference_dir):
    """The module ``golden/golden_weights.py`` (builds deterministic weights from a key list)."""
    sys.path.insert(0, str(reference_dir / 'golden'))
    try:
        import golden_weights as module
    finally:
        sys.path.pop(0)
    return module


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Tests never download weights: torch's downloader fails loudly if anything tries."""

    def refuse(url, *args, **kwargs):
        raise RuntimeError(f'a test tried to download {url}')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', refuse)


def write_paired_images(root: Path, count: int, hr_size: tuple[int, int], scale: int, seed: int = 0) -> Path:
    """Write ``count`` smooth random HR images and their MATLAB-bicubic LR into BasicSR's
    paired-folder layout (``root/hr``, ``root/lr``). Returns ``root``."""
    import cv2
    import numpy as np
    from basicsr.utils.matlab_functions import imresize

    rng = np.random.default_rng(seed)
    (root / 'hr').mkdir(parents=True, exist_ok=True)
    (root / 'lr').mkdir(parents=True, exist_ok=True)
    h, w = hr_size
    for i in range(count):
        coarse = rng.random((h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
        hr = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
        lr = imresize(hr, 1 / scale).clip(0, 1)
        name = f'img{i:03d}.png'
        cv2.imwrite(str(root / 'hr' / name), (hr * 255).round().astype(np.uint8))
        cv2.imwrite(str(root / 'lr' / name), (lr * 255).round().astype(np.uint8))
    return root


def run_cli(args: list[str], cwd: Path, timeout: int = 600):
    """Run ``python -m flowprior_plugin ARGS`` (the ``basicsr`` command) in ``cwd``."""
    import subprocess

    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    return subprocess.run(
        [sys.executable, '-m', 'flowprior_plugin', *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


TINY_SRFLOW = {
    'type': 'SRFlowNet',
    'nf': 8,
    'nb': 2,
    'gc': 4,
    'scale': 4,
    'K': 1,
    'L': 3,
    'hidden_channels': 8,
    'n_no_coupling_steps': 1,
    'stacked_blocks': [0, 1],
}

TINY_HCFLOW = {
    'type': 'HCFlowNet',
    'nf': 8,
    'nb': 1,
    'gc': 4,
    'scale': 4,
    'K': 2,
    'n_additional_steps': 1,
    'hidden_channels': 8,
}


def finalize_options(opt: dict, root: Path, is_train: bool) -> dict:
    """What BasicSR's parse_options adds to a yml dict (paths, dist flags), for in-process models."""
    import copy

    opt = copy.deepcopy(opt)
    opt.update(is_train=is_train, dist=False, rank=0, world_size=1, auto_resume=False)
    opt.setdefault('num_gpu', 0)
    path = opt.setdefault('path', {})
    base = root / ('experiments' if is_train else 'results') / opt['name']
    path.update(
        experiments_root=str(base),
        results_root=str(base),
        models=str(base / 'models'),
        training_states=str(base / 'training_states'),
        log=str(base),
        visualization=str(base / 'visualization'),
    )
    for sub in ('models', 'training_states'):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for phase, dataset in opt.get('datasets', {}).items():
        dataset['phase'] = phase.split('_')[0]
        dataset['scale'] = opt.get('scale', 4)
    return opt
