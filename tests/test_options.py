"""Every option file under options/ stays valid: names resolve, official nets match the key lists,
and each builds its model and runs a step (train) or a validation (test) with tiny overrides."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml
from basicsr.archs import build_network
from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from conftest import (
    ARBITRARY_SCALE_HR,
    REPO_ROOT,
    finalize_options,
    shrink_options,
    uses_arbitrary_scale_data,
    write_paired_images,
)

from flowprior_plugin.option_checks import check_options

OPTION_FILES = sorted((REPO_ROOT / 'options').rglob('*.yml'))
OFFICIAL = {
    'srflow_DF2K_4X.yml': 'srflow_DF2K_4X_keys.txt',
    'srflow_DF2K_8X.yml': 'srflow_DF2K_8X_keys.txt',
    'srflow_CelebA_8X.yml': 'srflow_CelebA_8X_keys.txt',
    'hcflow_DF2K_4X.yml': 'hcflow_SR_DF2K_4X_keys.txt',
    'hcflow_CelebA_8X.yml': 'hcflow_SR_CelebA_8X_keys.txt',
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


@pytest.mark.parametrize('path', OPTION_FILES, ids=_ids(OPTION_FILES))
def test_every_option_file_builds_and_runs_tiny(path, tmp_path):
    opt = yaml.safe_load(path.read_text())
    is_train = 'train' in opt
    side = ARBITRARY_SCALE_HR if uses_arbitrary_scale_data(opt) else 4 * opt['scale']
    data = write_paired_images(tmp_path / 'data', count=2, hr_size=(side, side), scale=opt['scale'])
    opt = finalize_options(shrink_options(opt, data), tmp_path, is_train=is_train)
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


def test_linf_options_follow_the_release():
    """The LINF files carry the released hyper-parameters (LINF.md / METHOD.md), not test values."""
    stage1 = yaml.safe_load((REPO_ROOT / 'options' / 'linf_patch_edsr_baseline.yml').read_text())
    train = stage1['datasets']['train']
    assert (train['scale_min'], train['scale_max'], train['lq_size'], train['batch_size_per_gpu']) == (1.0, 4.0, 48, 16)
    assert stage1['train']['optim_g']['lr'] == 1e-4 and stage1['network_g']['patch_size'] == 3
    assert stage1['train']['scheduler']['milestones'] == [200000, 400000, 600000, 800000]
    prior = yaml.safe_load((REPO_ROOT / 'options' / 'linf_prior.yml').read_text())
    train = prior['datasets']['train']
    assert (train['lq_size'], train['gt_size'], train['scale_max'], train['lr_resize']) == (96, 96, 4.0, 'pil')
    assert prior['network_g']['lr_encoder_stride'] == 3 and prior['initial_prior']['type'] == 'encoded_upsample'
    assert prior['train']['perceptual_opt']['layer_weights'] == {'conv5_4': 1.0}
    assert prior['train']['latent_opt']['loss_weight'] == 0.0
    test = yaml.safe_load((REPO_ROOT / 'options' / 'test_linf_prior.yml').read_text())
    scales = [(d['test_scale'], d['group']) for d in test['datasets'].values()]
    assert scales == [(2, 'in-distribution'), (3, 'in-distribution'), (4, 'in-distribution')] + [
        (s, 'out-of-distribution') for s in (6, 8, 12)
    ]
    assert {'psnr', 'ssim', 'lr_psnr', 'lpips', 'seam', 'periodicity'} <= set(test['val']['metrics'])


@pytest.mark.parametrize('name', ['linf_patch_edsr_baseline.yml', 'linf_patch_rrdb.yml'])
def test_linf_option_files_match_the_official_key_lists(name, reference_dir):
    opt = yaml.safe_load((REPO_ROOT / 'options' / name).read_text())
    encoder = opt['network_g']['encoder']
    expected = read_keys(reference_dir / f'linf_linf_patch_{encoder}_keys.txt')
    net = build_network(opt['network_g'])
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected
