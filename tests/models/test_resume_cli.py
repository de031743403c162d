"""Resume loses nothing: FlowPriorModel training killed (SIGKILL, a real process) after a checkpoint
on an epoch boundary, resumed with ``--auto_resume``, ends bit-identical to an uninterrupted run.

A test plugin (declared under ``basicsr.plugins`` like any plugin) stops the first run right after
its iteration-2 checkpoint, so the kill always lands at the same place. FlowLikelihoodModel resumes the
same way, but its dequantisation noise comes from the random-number state, which BasicSR neither
saves nor restores (the resumed run is reseeded with ``manual_seed``): not bit-identical by design.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from basicsr.archs import build_network
from conftest import TINY_PRIOR, TINY_SRFLOW, paired_dataset, run_cli, write_paired_images
from probe_plugins import install_test_plugin

STALL = """
import os, time
from flowprior_plugin.models.base_flow_model import BaseFlowModel

_save = BaseFlowModel.save


def save(self, epoch, current_iter):
    _save(self, epoch, current_iter)
    if current_iter == int(os.environ['FLOWPRIOR_TEST_STALL_AT']):
        open(os.environ['FLOWPRIOR_TEST_STALL_MARK'], 'w').close()
        time.sleep(600)  # until the test kills the process


BaseFlowModel.save = save
"""


def options(data: Path, name: str) -> dict:
    dataset = paired_dataset(
        data,
        gt_size=16,  # the whole image: no random crop
        use_hflip=False,
        use_rot=False,
        num_worker_per_gpu=0,
        batch_size_per_gpu=2,  # 4 images: 2 iterations per epoch
    )
    return {
        'name': name,
        'model_type': 'FlowPriorModel',
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {'train': dataset},
        'network_flow': dict(TINY_SRFLOW),
        'network_g': {**TINY_PRIOR, 'generator': {'type': 'EDSRBaseline', 'num_blocks': 1, 'width': 8}},
        'path': {'pretrain_network_flow': '../flow.pth'},
        'train': {
            'ema_decay': 0.9,
            'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [3], 'gamma': 0.5},  # a milestone after the kill
            'total_iter': 6,
            'warmup_iter': -1,
            'latent_opt': {'type': 'LatentL1Loss', 'loss_weight': 1.0},
        },
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
    }


def test_killed_prior_training_resumes_bit_identical(tmp_path):
    data = write_paired_images(tmp_path / 'data', count=4, hr_size=(16, 16), scale=4)
    torch.manual_seed(5)
    torch.save({'params': build_network(dict(TINY_SRFLOW)).state_dict()}, tmp_path / 'flow.pth')
    plugin = install_test_plugin(tmp_path / 'plugin', 'stall_after_checkpoint', STALL)
    for name in ('full', 'cut'):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'opt.yml').write_text(yaml.safe_dump(options(data, 'run')))

    full = run_cli(['train', '-opt', 'opt.yml'], cwd=tmp_path / 'full')
    assert full.returncode == 0, full.stderr[-3000:]

    mark = tmp_path / 'stalled'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(plugin))
    env.update(FLOWPRIOR_TEST_STALL_AT='2', FLOWPRIOR_TEST_STALL_MARK=str(mark))
    proc = subprocess.Popen(
        [sys.executable, '-m', 'flowprior_plugin', 'train', '-opt', 'opt.yml'],
        cwd=tmp_path / 'cut',
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert mark.exists(), f'the first run never reached its checkpoint (exit code {proc.poll()})'
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    cut_exp = tmp_path / 'cut' / 'experiments' / 'run'
    assert sorted(p.name for p in (cut_exp / 'training_states').iterdir()) == ['2.state']

    resumed = run_cli(['train', '-opt', 'opt.yml', '--auto_resume'], cwd=tmp_path / 'cut')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = '\n'.join(p.read_text() for p in cut_exp.glob('train_run_*.log'))
    assert 'Resuming training from epoch: 1, iter: 2' in log  # the finished epoch 0 is not replayed

    full_exp = tmp_path / 'full' / 'experiments' / 'run'
    for name in ('net_g_6.pth', 'net_g_latest.pth'):
        a = torch.load(full_exp / 'models' / name, weights_only=True)
        b = torch.load(cut_exp / 'models' / name, weights_only=True)
        for key in ('params', 'params_ema'):  # the prior and its EMA
            assert a[key].keys() == b[key].keys()
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), f'{name} {key} differ'
    a = torch.load(full_exp / 'training_states' / '6.state', weights_only=False)
    b = torch.load(cut_exp / 'training_states' / '6.state', weights_only=False)
    assert (a['iter'], a['epoch']) == (b['iter'], b['epoch']) == (6, 2)
    assert a['schedulers'] == b['schedulers']  # milestones, last_epoch, the learning rate after the milestone
    assert a['schedulers'][0]['_last_lr'] == [5e-4]
    sa, sb = a['optimizers'][0]['state'], b['optimizers'][0]['state']
    assert sa.keys() == sb.keys() and {int(s['step']) for s in sb.values()} == {6}
    for index in sa:
        for slot in ('exp_avg', 'exp_avg_sq'):
            assert torch.equal(sa[index][slot], sb[index][slot])
