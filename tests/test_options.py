"""Every option file under options/ stays valid: names resolve, official nets match the key lists,
and each builds its model and runs a step (train) or a validation (test) with tiny overrides."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import yaml
from basicsr.archs import build_network
from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from conftest import REPO_ROOT, finalize_options, write_paired_images

from flowprior_plugin.option_checks import check_options

OPTION_FILES = sorted((REPO_ROOT / 'options').rglob('*.yml'))
OFFICIAL = {
    'srflow_DF2K_4X.yml': 'srflow_DF2K_4X_keys.txt',
    'srflow_DF2K_8X.yml': 'srflow_DF2K_8X_keys.txt',
    'srflow_CelebA_8X.yml': 'srflow_CelebA_8X_keys.txt',
    'hcflow_DF2K_4X.yml': 'hcflow_SR_DF2K_4X_keys.txt',
    'hcflow_CelebA_8X.yml': 'hcflow_SR_CelebA_8X_keys.txt',
}
TINY_FLOWS = {
    'SRFlowNet': {'nf': 8, 'nb': 2, 'gc': 4, 'K': 1, 'hidden_channels': 8, 'stacked_blocks': [0, 1]},
    'HCFlowNet': {'nf': 8, 'nb': 1, 'gc': 4, 'K': 2, 'n_additional_steps': 1, 'hidden_channels': 8},
}
TINY_GENERATORS = {
    'UNet': {'depth': 2, 'width': 8},
    'SwinT': {'embed_dim': 24, 'depths': [1, 1], 'num_heads': [3, 6], 'window_size': 4, 'head_channels': [12]},
    'EDSRBaseline': {'num_blocks': 1, 'width': 8},
}


def _ids(paths):
    return [str(p.relative_to(REPO_ROOT / 'options')) for p in paths]


def read_keys(path: Path) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in path.read_text().splitlines():
        if line.startswith('#') or '\t' not in line:
            continue
        key, shape = line.split('\t')
        keys[key] = tuple(int(d) for d in re.findall(r'\d+', shape))
    return keys


def test_option_files_exist():
    names = {p.name for p in OPTION_FILES}
    for required in ['srflow_prior.yml', 'srflow_prior_swint.yml', 'srflow_prior_edsr.yml', 'test_srflow_prior.yml']:
        assert required in names
    assert set(OFFICIAL) <= names


@pytest.mark.parametrize('path', OPTION_FILES, ids=_ids(OPTION_FILES))
def test_every_type_resolves(path):
    opt = yaml.safe_load(path.read_text())
    assert check_options(opt, is_train='train' in opt, source=path.name, check_paths=False) == []


@pytest.mark.parametrize('name', sorted(OFFICIAL))
def test_official_architectures_match_key_lists(name, reference_dir):
    opt = yaml.safe_load((REPO_ROOT / 'options' / name).read_text())
    expected = read_keys(reference_dir / OFFICIAL[name])
    net = build_network(opt['network_g'])
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got.keys() == expected.keys(), (
        f'missing {sorted(expected.keys() - got.keys())[:5]}, extra {sorted(got.keys() - expected.keys())[:5]}'
    )
    assert got == expected
    header = (reference_dir / OFFICIAL[name]).read_text().splitlines()[1]
    total = int(re.search(r'(?:total elements|params) (\d+)', header)[1])
    assert sum(v.numel() for v in net.state_dict().values()) == total


def _shrink(opt: dict, data: Path) -> dict:
    """Tiny networks, tiny data, random VGG; everything else as in the file."""
    opt = copy.deepcopy(opt)
    opt['num_gpu'] = 0
    scale = opt['scale']
    for key in ('network_g', 'network_flow'):
        section = opt.get(key)
        if section and section['type'] in TINY_FLOWS:
            section.update(TINY_FLOWS[section['type']])
        elif section and section['type'] == 'LatentPriorNet':
            section.update(prior_features=8, lr_features=8)
            generator = section['generator']
            generator.update(TINY_GENERATORS[generator['type']])
    for dataset in opt['datasets'].values():
        dataset.update(dataroot_gt=str(data / 'hr'), dataroot_lq=str(data / 'lr'), filename_tmpl='{}')
        dataset.update(num_worker_per_gpu=0, batch_size_per_gpu=2, gt_size=4 * scale, prefetch_mode=None)
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


@pytest.mark.parametrize('path', OPTION_FILES, ids=_ids(OPTION_FILES))
def test_every_option_file_builds_and_runs_tiny(path, tmp_path):
    opt = yaml.safe_load(path.read_text())
    is_train = 'train' in opt
    data = write_paired_images(tmp_path / 'data', count=2, hr_size=(4 * opt['scale'],) * 2, scale=opt['scale'])
    opt = finalize_options(_shrink(opt, data), tmp_path, is_train=is_train)
    model = build_model(opt)
    phase = 'train' if is_train else next(iter(opt['datasets']))
    dataset_opt = opt['datasets'][phase]
    loader = build_dataloader(build_dataset(dataset_opt), dataset_opt, num_gpu=0, dist=False)
    if is_train:
        model.feed_data(next(iter(loader)))
        model.optimize_parameters(1)
        assert all(math.isfinite(v) for v in model.get_current_log().values())
    else:
        model.validation(loader, current_iter=0, tb_logger=None, save_img=False)
        assert model.validation_summary[0]['images'] == 2
