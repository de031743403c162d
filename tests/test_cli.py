"""The ``basicsr`` command: BasicSR's pipelines with plugins loaded, clear errors, CPU resume."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli, write_paired_images

from flowprior_plugin.cli import build_parser


def tiny_srmodel_options(data: Path, name: str, total_iter: int = 4, save_freq: int = 2) -> dict:
    """BasicSR's own SRModel with a tiny MSRResNet: proves the command runs plain BasicSR jobs."""
    paired = {'type': 'PairedImageDataset', 'dataroot_gt': str(data / 'hr'), 'dataroot_lq': str(data / 'lr')}
    paired.update(io_backend={'type': 'disk'}, filename_tmpl='{}')
    return {
        'name': name,
        'model_type': 'SRModel',
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train': {
                **paired,
                'name': 'tiny',
                'phase': 'train',
                'gt_size': 16,
                'use_hflip': True,
                'use_rot': False,
                'num_worker_per_gpu': 0,
                'batch_size_per_gpu': 2,
                'dataset_enlarge_ratio': 4,
            },
            'val': {**paired, 'name': 'tinyval', 'phase': 'val'},
        },
        'network_g': {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0,
            'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
            'total_iter': total_iter,
            'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
        'val': {
            'val_freq': 1000,
            'save_img': False,
            'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}},
        },
        'logger': {'print_freq': 1, 'save_checkpoint_freq': save_freq, 'use_tb_logger': False},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }


def write_yml(path: Path, opt: dict) -> Path:
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


@pytest.fixture
def tiny_data(tmp_path):
    return write_paired_images(tmp_path / 'data', count=3, hr_size=(32, 32), scale=4)


def _words(text: str) -> str:
    return ' '.join(text.split())  # argparse wraps to the terminal's width


def test_help_explains_usage():
    text = _words(build_parser().format_help())
    assert text.startswith('usage: basicsr [-h] {train,test} ...')
    assert 'train train a model from an option file (experiments/<name>/ in the current directory)' in text
    assert 'test evaluate a model from an option file (results/<name>/ in the current directory)' in text
    assert 'examples: basicsr train -opt options/srflow_prior.yml basicsr train -opt' in text
    train_help = _words(build_parser()._subparsers._group_actions[0].choices['train'].format_help())
    assert train_help.startswith(
        'usage: basicsr train [-h] -opt YML [--launcher {none,pytorch,slurm}] [--auto_resume] [--debug] '
        '[--local_rank LOCAL_RANK] [--force_yml KEY=VALUE [KEY=VALUE ...]]'
    )
    for line in (
        '-opt YML path to the option yml file',
        '--launcher {none,pytorch,slurm} job launcher. Default: none.',
        '--auto_resume resume from the newest training state',
        '--force_yml KEY=VALUE [KEY=VALUE ...] override yml entries, e.g. train:total_iter=10 (":" separates levels)',
        'torchrun --nproc_per_node=2 -m flowprior_plugin train -opt options/srflow_prior.yml --launcher pytorch',
    ):
        assert line in train_help, line


def test_console_script_is_installed():
    # `pip install -e .` puts the entry point beside the interpreter.
    script = Path(sys.executable).parent / 'basicsr'
    assert script.exists() or shutil.which('basicsr'), 'the basicsr console command is not installed'


def test_unknown_subcommand_and_missing_file_are_one_line(tmp_path):
    result = run_cli(['frobnicate'], cwd=tmp_path)
    assert result.returncode == 2 and 'invalid choice' in result.stderr and 'Traceback' not in result.stderr
    result = run_cli(['train', '-opt', 'missing.yml'], cwd=tmp_path)
    assert result.returncode == 2
    assert 'no such option file: missing.yml' in result.stderr and 'Traceback' not in result.stderr


def test_unknown_type_is_one_clear_line_and_creates_no_experiment(tmp_path, tiny_data):
    opt = tiny_srmodel_options(tiny_data, 'bad_type')
    opt['network_g']['type'] = 'NoSuchNet'
    yml = write_yml(tmp_path / 'bad.yml', opt)
    result = run_cli(['train', '-opt', str(yml)], cwd=tmp_path)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "network_g.type: unknown arch type 'NoSuchNet'" in lines[0] and 'SRFlowNet' in lines[0]
    assert not (tmp_path / 'experiments').exists()


def test_train_then_test_writes_experiment_and_metrics(tmp_path, tiny_data):
    yml = write_yml(tmp_path / 'train.yml', tiny_srmodel_options(tiny_data, 'tiny_cli'))
    result = run_cli(['train', '-opt', str(yml)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    exp = tmp_path / 'experiments' / 'tiny_cli'
    assert (exp / 'models' / 'net_g_4.pth').is_file()
    assert (exp / 'models' / 'net_g_latest.pth').is_file()
    assert (exp / 'training_states' / '4.state').is_file()
    logs = list(exp.glob('train_tiny_cli_*.log'))
    assert logs and 'l_pix' in logs[0].read_text()
    assert '# psnr:' in logs[0].read_text()  # the final validation logged its metric

    test_opt = {
        'name': 'tiny_cli_test',
        'model_type': 'SRModel',
        'scale': 4,
        'num_gpu': 0,
        'datasets': {'test_1': tiny_srmodel_options(tiny_data, 'x')['datasets']['val']},
        'network_g': tiny_srmodel_options(tiny_data, 'x')['network_g'],
        'path': {'pretrain_network_g': str(exp / 'models' / 'net_g_latest.pth'), 'strict_load_g': True},
        'val': {
            'save_img': True,
            'suffix': None,
            'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}},
        },
    }
    yml = write_yml(tmp_path / 'test.yml', test_opt)
    result = run_cli(['test', '-opt', str(yml)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / 'results' / 'tiny_cli_test'
    assert len(list((results / 'visualization' / 'tinyval').glob('*.png'))) == 3
    assert '# psnr:' in next(results.glob('test_tiny_cli_test_*.log')).read_text()


def test_auto_resume_on_cpu_continues_iterations_optimizer_and_weights(tmp_path, tiny_data):
    yml = write_yml(tmp_path / 'train.yml', tiny_srmodel_options(tiny_data, 'resume_me', total_iter=4))
    first = run_cli(['train', '-opt', str(yml)], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    exp = tmp_path / 'experiments' / 'resume_me'

    yml = write_yml(tmp_path / 'train.yml', tiny_srmodel_options(tiny_data, 'resume_me', total_iter=6))
    second = run_cli(['train', '-opt', str(yml), '--auto_resume'], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    log = '\n'.join(path.read_text() for path in exp.glob('train_resume_me_*.log'))
    assert 'Resuming training from epoch' in log and 'iter: 4' in log
    assert 'net_g_4.pth' in log  # the resumed model loaded the weights saved at iteration 4

    state4 = torch.load(exp / 'training_states' / '4.state', weights_only=False)
    state6 = torch.load(exp / 'training_states' / '6.state', weights_only=False)
    assert state6['iter'] == 6
    steps4 = {int(s['step']) for s in state4['optimizers'][0]['state'].values()}
    steps6 = {int(s['step']) for s in state6['optimizers'][0]['state'].values()}
    assert steps4 == {4} and steps6 == {6}  # Adam's step count carried over (a fresh optimizer says 2)
    w4 = torch.load(exp / 'models' / 'net_g_4.pth', weights_only=True)['params']
    w6 = torch.load(exp / 'models' / 'net_g_6.pth', weights_only=True)['params']
    # two more small Adam steps from iteration 4's weights, not a fresh initialisation
    diff = max((w6[k] - w4[k]).abs().max().item() for k in w4)
    assert 0 < diff < 2 * 2 * 1e-3 + 1e-6


def test_resume_state_path_without_cuda(tmp_path, tiny_data):
    yml = write_yml(tmp_path / 'a.yml', tiny_srmodel_options(tiny_data, 'explicit', total_iter=2, save_freq=2))
    assert run_cli(['train', '-opt', str(yml)], cwd=tmp_path).returncode == 0
    opt = tiny_srmodel_options(tiny_data, 'explicit', total_iter=3, save_freq=1)
    opt['path']['resume_state'] = str(tmp_path / 'experiments' / 'explicit' / 'training_states' / '2.state')
    yml = write_yml(tmp_path / 'b.yml', opt)
    result = run_cli(['train', '-opt', str(yml)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / 'experiments' / 'explicit' / 'training_states' / '3.state', weights_only=False)
    assert state['iter'] == 3


def test_other_plugins_declared_under_the_entry_point_group_are_loaded(monkeypatch):
    import importlib.metadata
    import types

    from flowprior_plugin import cli

    plugin = types.ModuleType('fake_sr_plugin')
    plugin.loaded = False
    monkeypatch.setitem(sys.modules, 'fake_sr_plugin', plugin)

    class Entry:
        def __init__(self, value):
            self.value = value

        def load(self):
            module = importlib.import_module(self.value)
            module.loaded = True
            return module

    def entry_points(group):
        assert group == 'basicsr.plugins'
        return [Entry('flowprior_plugin'), Entry('fake_sr_plugin')]

    monkeypatch.setattr(importlib.metadata, 'entry_points', entry_points)
    assert cli.load_plugins() == ['flowprior_plugin', 'fake_sr_plugin']
    assert plugin.loaded


def test_our_entry_point_is_declared():
    import importlib.metadata

    values = [e.value for e in importlib.metadata.entry_points(group='basicsr.plugins')]
    assert 'flowprior_plugin' in values
