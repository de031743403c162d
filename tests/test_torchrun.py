"""The README's multi-process command, run as written: ``torchrun --nproc_per_node=2 -m flowprior_plugin
train -opt <yml> --launcher pytorch`` on the CPU (gloo), for both flow models.

Each rank records a hash of its weights and the files it wrote at every save through a tiny test
plugin, loaded by the ``basicsr`` command like any plugin declared under ``basicsr.plugins``.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from basicsr.archs import build_network
from conftest import REPO_ROOT, TINY_LINF, TINY_PRIOR, TINY_SRFLOW, paired_dataset, run_cli, write_paired_images
from probe_plugins import install_test_plugin

TORCHRUN = Path(sys.executable).parent / 'torchrun'
# Two ranks with batch 2 against one process with batch 4: the same samples per step (BasicSR's
# sampler deals a shuffled epoch out rank by rank), so only the order of float sums differs.
ATOL = 1e-5

PROBE = """
import hashlib, json, os
import torch
from flowprior_plugin.models.base_flow_model import BaseFlowModel

_saved = []
_torch_save = torch.save


def _recording_save(obj, path, *args, **kwargs):
    _saved.append(os.path.basename(str(path)))
    return _torch_save(obj, path, *args, **kwargs)


torch.save = _recording_save
_model_save = BaseFlowModel.save


def save(self, epoch, current_iter):
    _model_save(self, epoch, current_iter)
    state = self.get_bare_model(self.net_g).state_dict()
    digest = hashlib.sha256(b''.join(t.detach().cpu().contiguous().numpy().tobytes() for t in state.values()))
    record = {'iter': current_iter, 'sha256': digest.hexdigest(), 'wrote': list(_saved)}
    _saved.clear()
    name = os.path.join(self.opt['path']['experiments_root'], f"probe_rank{self.opt['rank']}.jsonl")
    with open(name, 'a') as handle:
        handle.write(json.dumps(record) + '\\n')


BaseFlowModel.save = save
"""


def readme_torchrun_command() -> list[str]:
    """The README's torchrun line, as tokens."""
    lines = [line for line in (REPO_ROOT / 'README.md').read_text().splitlines() if line.startswith('torchrun ')]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split('#')[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture(scope='module')
def probe_plugin(tmp_path_factory) -> Path:
    """A folder that, on PYTHONPATH, is an installed plugin of the entry-point group basicsr.plugins."""
    return install_test_plugin(tmp_path_factory.mktemp('probe_plugin'), 'rank_probe', PROBE)


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    # gt_size = the whole HR image and no flips: the data do not depend on a rank's random state.
    return write_paired_images(tmp_path_factory.mktemp('data'), count=4, hr_size=(16, 16), scale=4)


def options(name: str, model_type: str, data: Path, batch: int, **sections) -> dict:
    dataset = paired_dataset(
        data,
        gt_size=16,
        use_hflip=False,
        use_rot=False,
        num_worker_per_gpu=0,
        batch_size_per_gpu=batch,
        dataset_enlarge_ratio=1,
    )
    return {
        'name': name,
        'model_type': model_type,
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {'train': dataset},
        'path': {},
        'train': {
            'ema_decay': 0.9,
            'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [2], 'gamma': 0.5},
            'total_iter': 4,
            'warmup_iter': -1,
        },
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
        'dist_params': {'backend': 'gloo', 'port': 29500},
        **sections,
    }


def run_torchrun(yml: Path, cwd: Path, plugin: Path) -> subprocess.CompletedProcess:
    command = readme_torchrun_command()
    command[command.index('-opt') + 1] = str(yml)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', PYTHONPATH=str(plugin))
    # torchrun reads any of its flags from PET_<FLAG>: a free port on this machine only.
    env.update(PET_MASTER_ADDR='127.0.0.1', PET_MASTER_PORT=str(free_port()))
    command[0] = str(TORCHRUN)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_readme_torchrun_line_is_the_tested_command():
    command = readme_torchrun_command()
    assert command[:6] == ['torchrun', '--nproc_per_node=2', '-m', 'flowprior_plugin', 'train', '-opt']
    assert command[7:] == ['--launcher', 'pytorch']


CASES = {
    # LINF has no data-dependent initialisation and no dequantisation noise by default, so the two
    # runs see the same numbers. The learned prior trains on a frozen flow loaded from a file, with
    # a generator without BatchNorm: BatchNorm normalises each rank's own batch (BasicSR uses no
    # SyncBatchNorm), so a UNet generator would not match one process by construction.
    'FlowLikelihoodModel': {'network_g': dict(TINY_LINF)},
    'FlowPriorModel': {
        'network_flow': dict(TINY_SRFLOW),
        'network_g': {**TINY_PRIOR, 'generator': {'type': 'EDSRBaseline', 'num_blocks': 1, 'width': 8}},
        'path': {'pretrain_network_flow': 'flow.pth', 'param_key_flow': 'params'},
    },
}


@pytest.mark.parametrize('model_type', sorted(CASES))
def test_torchrun_two_cpu_ranks_match_one_process(tmp_path, data, probe_plugin, model_type):
    torch.manual_seed(3)
    torch.save({'params': build_network(dict(TINY_SRFLOW)).state_dict()}, tmp_path / 'flow.pth')
    sections = json.loads(json.dumps(CASES[model_type]))
    if model_type == 'FlowPriorModel':
        sections['train'] = options('x', model_type, data, 2)['train']
        sections['train']['latent_opt'] = {'type': 'LatentL1Loss', 'loss_weight': 1.0}
    ddp = options('ddp', model_type, data, batch=2, **sections)
    one = {**options('one', model_type, data, batch=4, **sections), 'dist_params': None}
    (tmp_path / 'ddp.yml').write_text(yaml.safe_dump(ddp))
    (tmp_path / 'one.yml').write_text(yaml.safe_dump(one))

    result = run_torchrun(tmp_path / 'ddp.yml', tmp_path, probe_plugin)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]  # both ranks ended cleanly
    single = run_cli(['train', '-opt', 'one.yml'], cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]

    exp = tmp_path / 'experiments' / 'ddp'
    records = {
        rank: [json.loads(line) for line in (exp / f'probe_rank{rank}.jsonl').read_text().splitlines()]
        for rank in (0, 1)
    }
    assert [r['iter'] for r in records[0]] == [r['iter'] for r in records[1]] == [2, 4, -1]
    for mine, theirs in zip(records[0], records[1]):
        assert mine['sha256'] == theirs['sha256'], f'ranks differ at iter {mine["iter"]}'
    # Written once: rank 0 writes each checkpoint and training state, rank 1 nothing.
    assert [r['wrote'] for r in records[0]] == [
        ['net_g_2.pth', '2.state'],
        ['net_g_4.pth', '4.state'],
        ['net_g_latest.pth'],
    ]
    assert all(r['wrote'] == [] for r in records[1])
    assert len(list(exp.glob('train_ddp_*.log'))) == 1
    log = next(exp.glob('train_ddp_*.log')).read_text()
    assert 'World size (gpu number): 2' in log and 'Batch size per gpu: 2' in log

    two = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)
    alone = torch.load(tmp_path / 'experiments' / 'one' / 'models' / 'net_g_latest.pth', weights_only=True)
    for key in ('params', 'params_ema'):
        diff = max((two[key][k] - alone[key][k]).abs().max().item() for k in alone[key])
        assert diff < ATOL, f'{key}: two ranks and one process differ by {diff:.2e}'
