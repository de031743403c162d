"""``docs/adding_a_flow.md``, run: the example plugin's flow, loaded through its ``basicsr.plugins``
entry point, trained by likelihood and then under the learned prior with the ``basicsr`` command,
from the option files the page shows.

The page shows the example's files whole; the first test keeps the page and the files identical.
"""

from __future__ import annotations

import configparser
import copy
import math
import os
import re
from pathlib import Path

import torch
import yaml
from conftest import REPO_ROOT, run_cli, write_paired_images
from probe_plugins import install_test_plugin

DOC = REPO_ROOT / 'docs' / 'adding_a_flow.md'
EXAMPLE = REPO_ROOT / 'examples' / 'affine_flow_plugin'
EXAMPLE_FILES = ('setup.cfg', 'affine_flow_plugin/__init__.py', 'affine_flow_plugin/affine_flow_arch.py')

# A code block of the page introduced by the path of the file it shows: `examples/...`:
SHOWN_FILE = re.compile(r'^`(examples/[^`]+)`:\n\n```\w*\n(.*?)^```$', re.M | re.S)
YAML_BLOCK = re.compile(r'^```yaml\n(.*?)^```$', re.M | re.S)

# Records the frozen flow as the stage-2 process holds it at its last save (after training).
FLOW_RECORDER = """
import os
import torch
from flowprior_plugin.models.base_flow_model import BaseFlowModel

_save = BaseFlowModel.save


def save(self, epoch, current_iter):
    _save(self, epoch, current_iter)
    path = os.path.join(self.opt['path']['experiments_root'], 'flow_after_training.pth')
    torch.save(self.flow.state_dict(), path)


BaseFlowModel.save = save
"""


def shown_files() -> dict[str, str]:
    return {path: code for path, code in SHOWN_FILE.findall(DOC.read_text())}


def test_the_page_shows_the_example_files_exactly():
    shown = shown_files()
    for name in EXAMPLE_FILES:
        path = f'examples/affine_flow_plugin/{name}'
        assert path in shown, f'docs/adding_a_flow.md does not show {path}'
    for path, code in shown.items():
        assert code == (REPO_ROOT / path).read_text(), f'docs/adding_a_flow.md shows another {path} than the file'


def install_example(root: Path) -> str:
    """The example package on PYTHONPATH with the entry point its setup.cfg declares, as ``pip install``
    would leave it. Returns the PYTHONPATH entries."""
    config = configparser.ConfigParser()
    config.read(EXAMPLE / 'setup.cfg')
    entry_points = config['options.entry_points']['basicsr.plugins'].strip()
    info = root / 'affine_flow_plugin-0.1.0.dist-info'
    info.mkdir(parents=True)
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: affine-flow-plugin\nVersion: 0.1.0\n')
    (info / 'entry_points.txt').write_text(f'[basicsr.plugins]\n{entry_points}\n')
    return os.pathsep.join((str(EXAMPLE), str(root)))


def stage_options(data: Path) -> tuple[dict, dict]:
    """The page's two option files, with the dataset folders pointed at ``data``; stage 2 takes the
    datasets, validation and logger of stage 1, as the page says."""
    blocks = [yaml.safe_load(block) for block in YAML_BLOCK.findall(DOC.read_text())]
    stage1 = next(b for b in blocks if b.get('model_type') == 'FlowLikelihoodModel')
    stage2 = next(b for b in blocks if b.get('model_type') == 'FlowPriorModel')
    for dataset in stage1['datasets'].values():
        dataset.update(dataroot_gt=str(data / 'hr'), dataroot_lq=str(data / 'lr'))
    shared = {key: copy.deepcopy(stage1[key]) for key in ('scale', 'num_gpu', 'manual_seed', 'datasets', 'logger')}
    return stage1, {**shared, **stage2}


def logged(log: str, name: str) -> list[float]:
    return [float(value) for value in re.findall(rf'{name}: ([-+0-9.e]+|nan|inf)', log)]


def test_example_flow_trains_by_likelihood_then_under_the_learned_prior(tmp_path, monkeypatch):
    data = write_paired_images(tmp_path / 'data', count=4, hr_size=(32, 32), scale=2)
    recorder = install_test_plugin(tmp_path / 'recorder', 'flow_recorder', FLOW_RECORDER)
    paths = [install_example(tmp_path / 'site'), str(recorder), os.environ.get('PYTHONPATH', '')]
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(p for p in paths if p))
    stage1, stage2 = stage_options(data)
    (tmp_path / 'stage1.yml').write_text(yaml.safe_dump(stage1))
    (tmp_path / 'stage2.yml').write_text(yaml.safe_dump(stage2))

    first = run_cli(['train', '-opt', 'stage1.yml'], cwd=tmp_path)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    exp1 = tmp_path / 'experiments' / stage1['name']
    log1 = next(exp1.glob('train_*.log')).read_text()
    nll = logged(log1, 'l_nll')
    assert len(nll) == stage1['train']['total_iter'] and all(math.isfinite(v) for v in nll)
    head, tail = sum(nll[:5]) / 5, sum(nll[-5:]) / 5
    assert tail < head - 1.0, f'the NLL did not fall: {head:.3f} -> {tail:.3f} bits per pixel'
    last = stage1['train']['total_iter']
    assert any(p.name.endswith(f'_tau0.9_{last}.png') for p in (exp1 / 'visualization').rglob('*.png'))
    assert re.search(r'^\s+tau0\.9\s.*\d\.\d{4}', log1, re.M) and 'lr_psnr' in log1

    second = run_cli(['train', '-opt', 'stage2.yml'], cwd=tmp_path)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    exp2 = tmp_path / 'experiments' / stage2['name']
    log2 = next(exp2.glob('train_*.log')).read_text()
    assert all(math.isfinite(v) for v in logged(log2, 'l_latent') + logged(log2, 'l_pix'))
    trained = torch.load(exp1 / 'models' / 'net_g_latest.pth', weights_only=True)['params']
    frozen = torch.load(exp2 / 'flow_after_training.pth', weights_only=True)
    assert trained.keys() == frozen.keys()
    assert all(torch.equal(trained[k], frozen[k]) for k in trained), 'stage 2 changed the frozen flow'
    prior = torch.load(exp2 / 'models' / 'net_g_latest.pth', weights_only=True)['params']
    assert prior and not set(prior) & set(trained)  # the prior's checkpoint, without the flow
    images = {p.name for p in (exp2 / 'visualization').rglob('*.png')}
    assert any('_prior_' in name for name in images) and any('_tau0.9_' in name for name in images)
    assert re.search(r'^\s+prior\s.*\d\.\d{4}', log2, re.M), 'no validation metrics of the prior in the log'

    # The example's checkpoint_format: a flow of another configuration is refused in one line.
    wrong = {**stage2, 'name': 'wrong_flow', 'network_flow': {**stage2['network_flow'], 'num_steps': 3}}
    (tmp_path / 'wrong.yml').write_text(yaml.safe_dump(wrong))
    refused = run_cli(['train', '-opt', 'wrong.yml'], cwd=tmp_path)
    assert refused.returncode == 2 and 'Traceback' not in refused.stderr, refused.stderr[-3000:]
    assert 'num_steps=4' in refused.stderr and 'num_steps=3' in refused.stderr, refused.stderr[-3000:]
