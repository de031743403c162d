"""Shared fixtures: the team's reference material and small deterministic helpers."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
from pathlib import Path

import pytest
import torch

import flowprior_plugin  # noqa: F401  (registers everything, installs the torchvision stand-in)
from flowprior_plugin.layers.random_init import randomize_parameters_

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


@contextlib.contextmanager
def captured(logger: logging.Logger):
    """Records of ``logger`` (BasicSR's logger may not propagate to pytest's caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def offline_torch_hub(tmp_path: Path, monkeypatch) -> list[str]:
    """An empty torch hub ($TORCH_HOME under ``tmp_path``) whose downloads fail at once with an
    OSError (as an offline machine's would), each URL tried recorded. Returns that list."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    attempts: list[str] = []

    def no_download(url, *args, **kwargs):
        attempts.append(url)
        raise OSError(f'network disabled in tests: {url}')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_download)
    return attempts


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference of ``a`` from ``b``, relative to ``b``'s largest magnitude."""
    return ((a - b).abs().max() / b.abs().max()).item()


def load_golden(reference_dir: Path, name: str) -> dict:
    """The golden vectors ``golden/<name>`` of the reference material."""
    return torch.load(reference_dir / 'golden' / name, weights_only=True)


def meta_state_dict(pairs) -> dict[str, torch.Tensor]:
    """A state dict of meta tensors (no memory) from ``(key, shape)`` pairs, e.g. a key list."""
    return {key: torch.empty(shape, device='meta') for key, shape in pairs}


def meta_module(cls: type[torch.nn.Module], options: dict) -> torch.nn.Module:
    """``cls(**options)`` on the meta device: an official architecture without allocating or
    initialising its parameters."""
    with torch.device('meta'):
        return cls(**options)


def tiny_module(cls: type[torch.nn.Module], options: dict, randomize: bool = True, seed: int = 0) -> torch.nn.Module:
    """``cls(**options)`` built under ``seed``, in eval mode; with ``randomize`` every parameter is
    drawn at random (so no map is the identity, and zero-initialised heads take part)."""
    torch.manual_seed(seed)
    net = cls(**options)
    if randomize:
        randomize_parameters_(net, torch.Generator().manual_seed(seed))
    return net.eval()


def random_lr_hr(scale: int, h: int, w: int, batch: int = 2, dtype=torch.float32, seed: int = 1):
    """A random 3-channel LR batch (batch, 3, h, w) and HR batch ``scale`` times its size, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    lq = torch.rand(batch, 3, h, w, generator=g, dtype=dtype)
    gt = torch.rand(batch, 3, h * scale, w * scale, generator=g, dtype=dtype)
    return lq, gt


# A tiny latent module (UNet generator) for any flow; latent_channels come from the flow.
TINY_PRIOR = {
    'type': 'LatentPriorNet',
    'prior_features': 8,
    'lr_features': 8,
    'generator': {'type': 'UNet', 'depth': 2, 'width': 8},
}
# The perceptual loss with a random VGG19 (tests only; never the default: no ImageNet weights offline).
RANDOM_VGG = {
    'type': 'VGGPerceptualLoss',
    'layer_weights': {'conv1_2': 1.0},  # a shallow layer keeps the random VGG cheap
    'vgg_type': 'vgg19',
    'use_input_norm': True,
    'range_norm': False,
    'criterion': 'l1',
    'random_weights_for_tests': True,
}
# Validation metrics of the model tests: cheap ones, lr_psnr also without a GT.
VAL_METRICS = {
    'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
    'lr_psnr': {'type': 'calculate_lr_psnr', 'crop_border': 0},
}
# Every kind of column a validation table holds: SSIM too, and LPIPS, which is skipped offline.
ALL_METRICS = {
    'psnr': VAL_METRICS['psnr'],
    'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': False},
    'lr_psnr': VAL_METRICS['lr_psnr'],
    'lpips': {'type': 'calculate_lpips', 'net': 'alex', 'better': 'lower', 'allow_download': False},
}


def train_options(
    total_iter: int = 10, lr: float = 1e-3, milestones: tuple[int, ...] = (1000,), gamma: float = 0.5, **extra
) -> dict:
    """A model's ``train`` section: Adam and a step schedule, no EMA; ``extra`` adds the losses (or
    replaces an entry, e.g. ``ema_decay``)."""
    return {
        'ema_decay': 0,
        'optim_g': {'type': 'Adam', 'lr': lr, 'betas': [0.9, 0.99]},
        'scheduler': {'type': 'MultiStepLR', 'milestones': list(milestones), 'gamma': gamma},
        'total_iter': total_iter,
        **extra,
    }


def smooth_batch(seed: int = 0, n: int = 2, lr: tuple[int, int] = (6, 6), hr: tuple[int, int] = (24, 24)) -> dict:
    """A training batch of ``n`` smooth random HR images (bicubic from a coarse grid) of size ``hr``
    and their area-downscaled LR of size ``lr``, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, hr[0] // 4 + 1, hr[1] // 4 + 1, generator=g)
    gt = torch.nn.functional.interpolate(coarse, size=hr, mode='bicubic').clamp(0, 1)
    lq = torch.nn.functional.interpolate(gt, size=lr, mode='area')
    return {'lq': lq, 'gt': gt}


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


def paired_dataset(data: Path, **options) -> dict:
    """BasicSR's ``PairedImageDataset`` options for a :func:`write_paired_images` folder (disk IO,
    file names as they are); ``options`` add to them (gt_size, batch size, flips, ...)."""
    return {
        'name': 'tiny',
        'type': 'PairedImageDataset',
        'dataroot_gt': str(data / 'hr'),
        'dataroot_lq': str(data / 'lr'),
        'filename_tmpl': '{}',
        'io_backend': {'type': 'disk'},
        **options,
    }


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

# A tiny LINF in patch mode (the model LINF-LP uses): EDSR-baseline encoder of one block.
TINY_LINF = {
    'type': 'LINFNet',
    'encoder': 'edsr_baseline',
    'encoder_opt': {'nf': 8, 'num_blocks': 1},
    'patch_size': 3,
    'hidden_dim': 16,
    'flow_layers': 2,
    'mlp_layers': 1,
    'scale': 4,
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


# ---------------------------------------------------------------- shrinking real option files
TINY_FLOWS = {
    'SRFlowNet': {'nf': 8, 'nb': 2, 'gc': 4, 'K': 1, 'hidden_channels': 8, 'stacked_blocks': [0, 1]},
    'HCFlowNet': {'nf': 8, 'nb': 1, 'gc': 4, 'K': 2, 'n_additional_steps': 1, 'hidden_channels': 8},
    'LINFNet': {k: v for k, v in TINY_LINF.items() if k in ('hidden_dim', 'flow_layers', 'mlp_layers')},
}
TINY_LINF_ENCODERS = {'edsr_baseline': {'nf': 8, 'num_blocks': 1}, 'rrdb': {'nf': 8, 'nb': 1, 'gc': 4}}
# Image side of the tiny data: fixed-scale files need 4 LR pixels; the arbitrary-scale dataset needs
# room for HR crops up to scale_max * lq_size (its LR is made from the HR files).
ARBITRARY_SCALE_HR = 64
TINY_GENERATORS = {
    'UNet': {'depth': 2, 'width': 8},
    'SwinT': {'embed_dim': 24, 'depths': [1, 1], 'num_heads': [3, 6], 'window_size': 4, 'head_channels': [12]},
    'EDSRBaseline': {'num_blocks': 1, 'width': 8},
}


def shrink_options(opt: dict, data: Path) -> dict:
    """Tiny networks, tiny data, random VGG; everything else as in the file."""
    opt = copy.deepcopy(opt)
    opt['num_gpu'] = 0
    scale = opt['scale']
    for key in ('network_g', 'network_flow'):
        section = opt.get(key)
        if section and section['type'] in TINY_FLOWS:
            section.update(TINY_FLOWS[section['type']])
            if section['type'] == 'LINFNet':
                section['encoder_opt'] = TINY_LINF_ENCODERS[section['encoder']]
        elif section and section['type'] == 'LatentPriorNet':
            section.update(prior_features=8, lr_features=8)
            generator = section['generator']
            generator.update(TINY_GENERATORS[generator['type']])
    for dataset in opt['datasets'].values():
        dataset.update(dataroot_gt=str(data / 'hr'), dataroot_lq=str(data / 'lr'), filename_tmpl='{}')
        dataset.update(num_worker_per_gpu=0, batch_size_per_gpu=2, gt_size=4 * scale, prefetch_mode=None)
        if dataset['type'] == 'ArbitraryScaleSRDataset':
            dataset.update(lq_size=16, gt_size=16, repeat=1)  # room for the UNet and VGG19 conv5_4
    for key in list(opt['path']):
        if key.startswith('pretrain_network_'):
            opt['path'][key] = None
    for metric in ((opt.get('val') or {}).get('metrics') or {}).values():
        if metric['type'] == 'calculate_lpips':
            metric['allow_download'] = False  # tests never download
    perceptual = (opt.get('train') or {}).get('perceptual_opt')
    if perceptual:
        perceptual.update(random_weights_for_tests=True, weights_path=None)
    return opt


def uses_arbitrary_scale_data(opt: dict) -> bool:
    return any(d['type'] == 'ArbitraryScaleSRDataset' for d in opt['datasets'].values())
