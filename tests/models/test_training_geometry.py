"""The training-geometry warning: latent grids too small for the prior's generator."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.utils import get_root_logger
from conftest import REPO_ROOT, TINY_PRIOR, TINY_SRFLOW, captured, finalize_options, train_options

from flowprior_plugin.models.flow_prior_model import FlowPriorModel

PRIOR_TRAINING_FILES = sorted(
    path
    for path in [*(REPO_ROOT / 'options').glob('*.yml'), *(REPO_ROOT / 'options' / 'demo').glob('*.yml')]
    if (opt := yaml.safe_load(path.read_text())).get('model_type') == 'FlowPriorModel'
    and 'train' in (opt.get('datasets') or {})
)


def _first_step_warnings(tmp_path, hr_side: int, generator: dict) -> list[str]:
    prior = copy.deepcopy(TINY_PRIOR)
    prior['generator'] = generator
    opt = {
        'name': 'geometry',
        'model_type': 'FlowPriorModel',
        'scale': 4,
        'network_flow': dict(TINY_SRFLOW),
        'network_g': prior,
        'path': {},
        'train': train_options(2, milestones=(100,), latent_opt={'type': 'LatentL1Loss', 'loss_weight': 1.0}),
    }
    model = FlowPriorModel(finalize_options(opt, tmp_path, is_train=True))
    gt = torch.rand(2, 3, hr_side, hr_side)
    with captured(get_root_logger()) as records:
        for step in (1, 2):
            model.feed_data({'lq': torch.nn.functional.avg_pool2d(gt, 4), 'gt': gt})
            model.optimize_parameters(step)
    return [r.getMessage() for r in records if 'too small for the latent generator' in r.getMessage()]


def test_warns_once_naming_the_level_the_need_and_the_option(tmp_path):
    # SRFlow's top level is HR / 8: 48 -> a 6x6 grid, under the 8x8 a depth-2 UNet needs.
    warnings = _first_step_warnings(tmp_path, 48, {'type': 'UNet', 'depth': 2, 'width': 8})
    assert len(warnings) == 1
    message = warnings[0]
    assert 'latent level 1 is a 6x6 grid' in message and 'at least 8x8' in message
    assert 'generator.depth' in message and 'datasets.train.gt_size' in message
    assert 'latent level 0' not in message  # 24x24: large enough


def test_quiet_when_the_grids_are_large_enough(tmp_path):
    assert _first_step_warnings(tmp_path, 64, {'type': 'UNet', 'depth': 2, 'width': 8}) == []


@pytest.mark.parametrize(
    ('generator', 'expected'),
    [
        ({'type': 'SwinT', 'embed_dim': 24, 'depths': [1], 'num_heads': [3], 'window_size': 4}, 'at least 8x8'),
        ({'type': 'EDSRBaseline', 'num_blocks': 1, 'width': 8}, 'at least 8x8'),
    ],
)
def test_every_generator_states_its_minimum(tmp_path, generator, expected):
    warnings = _first_step_warnings(tmp_path, 48, generator)
    assert len(warnings) == 1 and expected in warnings[0]


def _first_batch_latent_shapes(opt: dict) -> tuple[list[int], list[tuple[int, ...]]]:
    """The flow's latent channels and the latent shapes of the first training batch the option
    file's data give (a whole gt_size crop, or an ArbitraryScaleSRDataset window)."""
    with torch.device('meta'):
        flow = build_network(copy.deepcopy(opt['network_flow']))
    data = opt['datasets']['train']
    gt = int(data['gt_size'])
    if data['type'] == 'ArbitraryScaleSRDataset':
        lq = int(data.get('lq_size', gt))
    else:
        lq = gt // int(opt['scale'])
    shapes = flow.sampled_shapes(torch.empty(1, 3, lq, lq, device='meta'), (gt, gt))
    return flow.latent_channels(), shapes


@pytest.mark.parametrize('path', PRIOR_TRAINING_FILES, ids=lambda p: str(Path(p).relative_to(REPO_ROOT)))
def test_shipped_option_files_give_the_generator_large_enough_grids(path):
    opt = yaml.safe_load(path.read_text())
    channels, shapes = _first_batch_latent_shapes(opt)
    prior_opt = dict(copy.deepcopy(opt['network_g']), latent_channels=channels)
    prior = build_network(prior_opt)  # on the CPU: timm's Swin blocks cannot be built on 'meta'
    grids = [torch.empty(1, *shape[-3:], device='meta') for shape in shapes]
    assert prior.small_training_grids(grids) == []
