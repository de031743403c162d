"""Every user mistake of the option file or the launch ends, through the ``basicsr`` command, in
one line naming the option and what is accepted, exit code 2, no traceback, and no experiment
folder (BasicSR would archive a half-made one on the next run)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_SRFLOW, captured, finalize_options, paired_dataset, run_cli, write_paired_images


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return write_paired_images(tmp_path_factory.mktemp('data'), count=2, hr_size=(24, 24), scale=4)


def base_options(data: Path) -> dict:
    dataset = paired_dataset(
        data,
        gt_size=16,
        use_hflip=False,
        use_rot=False,
        num_worker_per_gpu=0,
        batch_size_per_gpu=2,
    )
    return {
        'name': 'mistake',
        'model_type': 'FlowLikelihoodModel',
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {'train': dataset},
        'network_g': dict(TINY_SRFLOW),
        'path': {},
        'train': {
            'optim_g': {'type': 'Adam', 'lr': 1e-3},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [10], 'gamma': 0.5},
            'total_iter': 1,
            'warmup_iter': -1,
        },
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 10, 'use_tb_logger': False},
    }


def _misspelt_key(opt, root):
    opt['network_g']['nbb'] = 4


def _flow_scale(opt, root):
    opt['network_g']['scale'] = 3


def _top_level_scale(opt, root):
    opt['network_g'].update(scale=8, L=4)


def _text_checkpoint(opt, root):
    (root / 'weights.pth').write_text('this is not a checkpoint\n')
    opt['path']['pretrain_network_g'] = str(root / 'weights.pth')


def _truncated_checkpoint(opt, root):
    torch.save({'params': {'w': torch.zeros(64)}}, root / 'full.pth')
    (root / 'weights.pth').write_bytes((root / 'full.pth').read_bytes()[:200])
    opt['path']['pretrain_network_g'] = str(root / 'weights.pth')


def _corrupt_pickle(opt, root):
    # The header of torch's legacy format, then garbage: only loading it can tell (after the check).
    (root / 'weights.pth').write_bytes(b'\x80\x02' + b'garbage' * 20)
    opt['path']['pretrain_network_g'] = str(root / 'weights.pth')


def _nccl_without_cuda(opt, root):
    opt['dist_params'] = {'backend': 'nccl', 'port': 29500}


def _unknown_backend(opt, root):
    opt['dist_params'] = {'backend': 'carrier_pigeon'}


def _num_gpu_without_cuda(opt, root):
    opt['num_gpu'] = 1


def _odd_training_lr(opt, root):
    opt['datasets']['train']['gt_size'] = 12  # an LR of 3x3: SRFlow needs even LR sides


no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason='the mistake is asking for CUDA without it')
MISTAKES = [
    # (mutation, extra CLI arguments, what the line must say)
    pytest.param(
        _misspelt_key,
        [],
        ["network_g.nbb: SRFlowNet has no argument 'nbb'", 'its arguments: ', ' nb,'],
        id='misspelt-key',
    ),
    pytest.param(_flow_scale, [], ['network_g (SRFlowNet): scale must be a power of 2', 'got 3'], id='flow-scale'),
    pytest.param(
        _top_level_scale, [], ['scale is 4 but network_g.scale is 8', 'set both to the same value'], id='top-scale'
    ),
    pytest.param(_text_checkpoint, [], ['path.pretrain_network_g:', 'is not a PyTorch checkpoint'], id='text-file'),
    pytest.param(_truncated_checkpoint, [], ['is not a PyTorch checkpoint', 'damaged zip archive'], id='truncated'),
    pytest.param(_corrupt_pickle, [], ['weights.pth: not a readable PyTorch checkpoint'], id='corrupt-pickle'),
    pytest.param(
        _nccl_without_cuda,
        ['--launcher', 'pytorch'],
        ['dist_params.backend: nccl needs CUDA', 'gloo'],
        id='nccl',
        marks=no_cuda,
    ),
    pytest.param(
        _unknown_backend,
        ['--launcher', 'pytorch'],
        ["'carrier_pigeon' cannot run", 'available here: gloo'],
        id='backend',
    ),
    pytest.param(
        _num_gpu_without_cuda, [], ['num_gpu is 1 but this machine has no CUDA GPU'], id='num-gpu', marks=no_cuda
    ),
    pytest.param(
        _odd_training_lr, [], ['SRFlow needs even LR sides', 'gt_size / scale is a multiple of 2'], id='odd-lr'
    ),
]


@pytest.mark.parametrize(('mistake', 'extra', 'expected'), MISTAKES)
def test_user_mistake_is_one_line_exit_2_and_no_experiment(tmp_path, data, mistake, extra, expected):
    opt = base_options(data)
    mistake(opt, tmp_path)
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump(opt))
    result = run_cli(['train', '-opt', 'opt.yml', *extra], cwd=tmp_path)
    # Mistakes found after the check follow BasicSR's own log of the run (network printout, ...).
    errors = [line for line in result.stderr.splitlines() if line.startswith('basicsr train: error: ')]
    assert result.returncode == 2, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr and len(errors) == 1, result.stderr[-3000:]
    assert result.stderr.rstrip().endswith(errors[0])
    for text in expected:
        assert text in errors[0], errors[0]
    assert not (tmp_path / 'experiments').exists() or not any((tmp_path / 'experiments').iterdir())


def test_launcher_pytorch_outside_torchrun_is_one_line(tmp_path, data):
    opt = {**base_options(data), 'dist_params': {'backend': 'gloo'}}
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump(opt))
    result = run_cli(['train', '-opt', 'opt.yml', '--launcher', 'pytorch'], cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert '--launcher pytorch: RANK, WORLD_SIZE' in lines[0] and 'torchrun --nproc_per_node=N' in lines[0]


def test_failed_run_restores_an_existing_experiment_folder(tmp_path, data):
    """A folder of an earlier run is never deleted: BasicSR archives it when the new run starts, and
    when that run fails before saving anything the archive gets its name back."""
    earlier = tmp_path / 'experiments' / 'mistake'
    (earlier / 'models').mkdir(parents=True)
    (earlier / 'models' / 'net_g_5.pth').write_bytes(b'earlier run')
    opt = base_options(data)
    _odd_training_lr(opt, tmp_path)
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump(opt))
    result = run_cli(['train', '-opt', 'opt.yml'], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / 'experiments').iterdir()) == ['mistake']
    assert (earlier / 'models' / 'net_g_5.pth').read_bytes() == b'earlier run'


def test_nonfinite_input_pixels_warn_once_per_image(tmp_path):
    from flowprior_plugin.models.flow_likelihood_model import FlowLikelihoodModel

    opt = finalize_options({'name': 'nan', 'scale': 4, 'network_g': dict(TINY_SRFLOW), 'path': {}}, tmp_path, False)
    model = FlowLikelihoodModel(opt)
    lq = torch.rand(2, 3, 4, 4)
    lq[1, 0, 0, 0] = float('nan')
    lq[1, 2, 1, 1] = float('inf')
    batch = {'lq': lq, 'lq_path': ['a.png', 'b.png']}
    with captured(logging.getLogger('basicsr')) as records:
        for _ in range(3):  # three epochs over the same image
            model.feed_data(copy.deepcopy(batch))
    messages = [r.getMessage() for r in records]
    assert messages == [
        'input lq image b.png: 2 non-finite values (NaN/inf); a training step with it has a '
        'non-finite loss and is skipped'
    ], messages
