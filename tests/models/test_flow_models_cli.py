"""Both flow models through the real ``basicsr`` command: option files as a user writes them."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch
import yaml
from basicsr.archs import build_network
from conftest import TINY_HCFLOW, TINY_LINF, TINY_SRFLOW, VAL_METRICS, run_cli, train_options, write_paired_images
from probe_plugins import install_test_plugin


def _dataset(data, phase: str) -> dict:
    opt = {
        'name': f'tiny_{phase}',
        'type': 'PairedImageDataset',
        'dataroot_gt': str(data / 'hr'),
        'dataroot_lq': str(data / 'lr'),
        'filename_tmpl': '{}',
        'io_backend': {'type': 'disk'},
    }
    if phase == 'train':
        opt.update(gt_size=16, use_hflip=True, use_rot=True, num_worker_per_gpu=0, batch_size_per_gpu=2)
        opt.update(dataset_enlarge_ratio=4)
    return opt


def _common(name: str, model_type: str, data) -> dict:
    return {
        'name': name,
        'model_type': model_type,
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {'train': _dataset(data, 'train'), 'val': _dataset(data, 'val')},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 1000, 'use_tb_logger': False},
    }


def _train(total_iter: int, **losses) -> dict:
    return train_options(total_iter, warmup_iter=-1, **losses)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    return write_paired_images(tmp_path_factory.mktemp('data'), count=3, hr_size=(24, 24), scale=4)


FLOWS = {'SRFlow': TINY_SRFLOW, 'HCFlow': TINY_HCFLOW, 'LINF': TINY_LINF}


@pytest.fixture(scope='module', params=sorted(FLOWS))
def flow_family(request) -> str:
    return request.param


@pytest.fixture(scope='module')
def trained_flow(tmp_path_factory, tiny_data, flow_family):
    """Stage 1 through ``basicsr train``: a tiny flow by likelihood, validated at 2 temperatures."""
    root = tmp_path_factory.mktemp(f'stage1_{flow_family}')
    opt = _common('tiny_flow', 'FlowLikelihoodModel', tiny_data)
    opt.update(network_g=dict(FLOWS[flow_family]), path={}, train=_train(4))
    opt['val'] = {'val_freq': 1000, 'save_img': True, 'temperatures': [0.0, 0.8], 'metrics': VAL_METRICS}
    (root / 'stage1.yml').write_text(yaml.safe_dump(opt))
    result = run_cli(['train', '-opt', 'stage1.yml'], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_stage1_logs_nll_and_validates_each_temperature(trained_flow):
    exp = trained_flow / 'experiments' / 'tiny_flow'
    log = next(exp.glob('train_tiny_flow_*.log')).read_text()
    assert 'l_nll:' in log
    for method in ('tau0', 'tau0.8'):
        assert f'  {method}' in log or f' {method} ' in log
    assert 'nonfinite' in log
    images = {p.name for p in (exp / 'visualization').rglob('*.png')}
    assert any('_tau0_' in n for n in images) and any('_tau0.8_' in n for n in images)
    assert (exp / 'models' / 'net_g_latest.pth').is_file()


FLOW_HASH = """
import hashlib, os
from flowprior_plugin.models.base_flow_model import BaseFlowModel

_save = BaseFlowModel.save


def save(self, epoch, current_iter):
    _save(self, epoch, current_iter)
    state = self.net_flow.state_dict()
    digest = hashlib.sha256(b''.join(t.detach().cpu().contiguous().numpy().tobytes() for t in state.values()))
    with open(os.path.join(self.opt['path']['experiments_root'], 'flow_sha256.txt'), 'w') as handle:
        handle.write(digest.hexdigest())


BaseFlowModel.save = save
"""


def _sha256(state: dict) -> str:
    return hashlib.sha256(b''.join(t.contiguous().numpy().tobytes() for t in state.values())).hexdigest()


@pytest.mark.parametrize(
    'generator',
    [
        {'type': 'UNet', 'depth': 2, 'width': 8},
        {'type': 'SwinT', 'embed_dim': 24, 'depths': [1, 1], 'num_heads': [3, 6], 'window_size': 4},
        {'type': 'EDSRBaseline', 'num_blocks': 2, 'width': 8},
    ],
    ids=lambda g: g['type'],
)
def test_stage2_trains_prior_on_frozen_flow_with_each_generator(
    trained_flow, tiny_data, generator, flow_family, tmp_path, monkeypatch
):
    flow_file = trained_flow / 'experiments' / 'tiny_flow' / 'models' / 'net_g_latest.pth'
    flow_before = torch.load(flow_file, weights_only=True)['params']
    # The stage-2 process reports a hash of its in-memory flow at its last save (after training).
    monkeypatch.setenv('PYTHONPATH', str(install_test_plugin(tmp_path / 'plugin', 'flow_hash', FLOW_HASH)))
    name = f'prior_{generator["type"]}'
    opt = _common(name, 'FlowPriorModel', tiny_data)
    opt.update(
        network_flow=dict(FLOWS[flow_family]),
        network_g={'type': 'LatentPriorNet', 'prior_features': 8, 'lr_features': 8, 'generator': generator},
        path={'pretrain_network_flow': str(flow_file), 'param_key_flow': 'params'},
        train=_train(3, latent_opt={'type': 'LatentL1Loss', 'loss_weight': 1.0}),
        val={'val_freq': 1000, 'save_img': False, 'temperatures': [0.9], 'metrics': VAL_METRICS},
    )
    (trained_flow / f'{name}.yml').write_text(yaml.safe_dump(opt))
    result = run_cli(['train', '-opt', f'{name}.yml'], cwd=trained_flow)
    assert result.returncode == 0, result.stderr[-3000:]
    exp = trained_flow / 'experiments' / name
    log = next(exp.glob(f'train_{name}_*.log')).read_text()
    assert 'l_latent:' in log and 'prior' in log
    saved = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)['params']
    assert not any(key in saved for key in flow_before)  # the flow never enters our checkpoint
    assert (exp / 'flow_sha256.txt').read_text() == _sha256(flow_before), 'stage 2 changed the frozen flow'


def test_basicsr_test_writes_comparison_table(trained_flow, tiny_data, flow_family):
    flow_file = trained_flow / 'experiments' / 'tiny_flow' / 'models' / 'net_g_latest.pth'
    prior = build_network(
        {
            'type': 'LatentPriorNet',
            'latent_channels': build_network(dict(FLOWS[flow_family])).latent_channels(),
            'prior_features': 8,
            'lr_features': 8,
            'generator': {'type': 'UNet', 'depth': 2, 'width': 8},
        }
    )
    torch.save({'params': prior.state_dict()}, trained_flow / 'prior.pth')
    opt = {
        'name': 'compare',
        'model_type': 'FlowPriorModel',
        'scale': 4,
        'num_gpu': 0,
        'datasets': {'test_1': _dataset(tiny_data, 'val')},
        'network_flow': dict(FLOWS[flow_family]),
        'network_g': {
            'type': 'LatentPriorNet',
            'prior_features': 8,
            'lr_features': 8,
            'generator': {'type': 'UNet', 'depth': 2, 'width': 8},
        },
        'path': {'pretrain_network_flow': str(flow_file), 'pretrain_network_g': str(trained_flow / 'prior.pth')},
        'val': {
            'save_img': True,
            'suffix': None,
            'temperatures': [0.0, 0.5, 0.9],
            'metrics': {
                **copy.deepcopy(VAL_METRICS),
                'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': False},
                'lpips': {'type': 'calculate_lpips', 'better': 'lower', 'allow_download': False},
            },
        },
    }
    (trained_flow / 'compare.yml').write_text(yaml.safe_dump(opt))
    result = run_cli(['test', '-opt', 'compare.yml'], cwd=trained_flow)
    assert result.returncode == 0, result.stderr[-3000:]
    out = trained_flow / 'results' / 'compare'
    summary = json.loads((out / 'summary_tiny_val.json').read_text())
    assert [m['method'] for m in summary['methods']] == ['prior', 'tau0', 'tau0.5', 'tau0.9']
    for entry in summary['methods']:
        assert set(entry) >= {'psnr', 'ssim', 'lr_psnr', 'lpips', 'nonfinite'} and entry['images'] == 3
    assert 'downloads are off' in summary['skipped_metrics']['lpips']
    table = (out / 'summary_tiny_val.md').read_text()
    assert '| prior |' in table and '| tau0.9 |' in table and 'lpips skipped' in table
    assert len((out / 'metrics_tiny_val.csv').read_text().splitlines()) == 1 + 3 * 4


def test_official_raw_checkpoint_and_mismatch_through_load_network(tmp_path, tiny_data):
    """A raw state dict (the official files' format) loads with param_key ~; another architecture
    fails with one message naming both."""
    raw = build_network(dict(TINY_SRFLOW)).state_dict()
    torch.save(raw, tmp_path / 'raw.pth')
    other = build_network({**TINY_SRFLOW, 'scale': 8, 'L': 4}).state_dict()
    torch.save(other, tmp_path / 'other.pth')
    for name, key in (('ok', 'raw.pth'), ('bad', 'other.pth')):
        opt = _common(name, 'FlowLikelihoodModel', tiny_data)
        opt.update(network_g=dict(TINY_SRFLOW), train=_train(1))
        opt['path'] = {'pretrain_network_g': str(tmp_path / key), 'param_key_g': None, 'strict_load_g': True}
        (tmp_path / f'{name}.yml').write_text(yaml.safe_dump(opt))
    ok = run_cli(['train', '-opt', 'ok.yml'], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    bad = run_cli(['train', '-opt', 'bad.yml'], cwd=tmp_path)
    assert bad.returncode == 2 and 'Traceback' not in bad.stderr
    message = bad.stderr.strip().splitlines()[-1]
    assert 'checkpoint holds SRFlow 8X' in message and 'options build SRFlow 4X' in message, message
