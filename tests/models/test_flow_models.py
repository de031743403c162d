"""FlowLikelihoodModel (likelihood) and FlowPriorModel (learned prior on a frozen flow), in process."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import (
    ALL_METRICS,
    RANDOM_VGG,
    TINY_PRIOR,
    TINY_SRFLOW,
    finalize_options,
    smooth_batch,
    train_options,
    write_paired_images,
)

from flowprior_plugin.errors import OptionError
from flowprior_plugin.models.flow_likelihood_model import FlowLikelihoodModel
from flowprior_plugin.models.flow_prior_model import FlowPriorModel


def prior_model(tmp_path, **overrides) -> FlowPriorModel:
    opt = {
        'name': 'prior',
        'model_type': 'FlowPriorModel',
        'scale': 4,
        'network_flow': dict(TINY_SRFLOW),
        'network_g': copy.deepcopy(TINY_PRIOR),
        'path': {},
        'train': train_options(latent_opt={'type': 'LatentL1Loss', 'loss_weight': 1.0}, perceptual_opt=RANDOM_VGG),
        'val': {'temperatures': [0.0, 0.8], 'metrics': ALL_METRICS},
    }
    opt.update(overrides)
    return FlowPriorModel(finalize_options(opt, tmp_path, is_train=True))


def _flow_opt() -> dict:
    return {
        'name': 'flow',
        'model_type': 'FlowLikelihoodModel',
        'scale': 4,
        'network_g': dict(TINY_SRFLOW),
        'path': {},
        'train': train_options(),
    }


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_flow_stays_bit_identical_while_prior_learns(tmp_path):
    model = prior_model(tmp_path)
    flow_before, prior_before = _snapshot(model.net_flow), _snapshot(model.net_g)
    optimized = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert not optimized & {id(p) for p in model.net_flow.parameters()}
    for step in range(3):
        model.feed_data(smooth_batch(step))
        model.optimize_parameters(step + 1)
    assert set(model.log_dict) >= {'l_latent', 'l_percep'}
    assert not model.net_flow.training
    assert all(not p.requires_grad and p.grad is None for p in model.net_flow.parameters())
    for key, value in model.net_flow.state_dict().items():
        assert torch.equal(value, flow_before[key]), f'flow tensor {key} changed'
    changed = [k for k, v in model.net_g.state_dict().items() if not torch.equal(v, prior_before[k])]
    assert changed, 'the prior did not learn'


def test_gradient_reaches_prior_through_the_flow_decode(tmp_path):
    # Perceptual loss only: the prior can only learn through the frozen flow's inverse.
    model = prior_model(tmp_path, train=train_options(perceptual_opt=RANDOM_VGG))
    model.feed_data(smooth_batch())
    model.optimizer_g.zero_grad()
    with torch.no_grad():
        cond = model.net_flow.condition(model.lq)
        z0 = model.initial_prior(model.lq, cond)
    sr = model.net_flow.decode(model.lq, model.net_g(model.lq, z0), cond=cond)
    model.cri_perceptual(sr.clamp(0, 1), model.gt)[0].backward()
    grads = [p.grad for p in model.net_g.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_checkpoint_holds_the_prior_only(tmp_path):
    model = prior_model(tmp_path)
    model.save(epoch=0, current_iter=1)
    saved = torch.load(tmp_path / 'experiments' / 'prior' / 'models' / 'net_g_1.pth', weights_only=True)
    flow_keys = set(model.net_flow.state_dict())
    assert set(saved['params']) == set(model.net_g.state_dict())
    assert not set(saved['params']) & flow_keys


def test_latent_channels_come_from_the_flow_and_wrong_ones_are_refused(tmp_path):
    model = prior_model(tmp_path)
    assert model.opt['network_g']['latent_channels'] == model.net_flow.latent_channels() == [6, 96]
    bad = copy.deepcopy(TINY_PRIOR)
    bad['latent_channels'] = [6, 48]
    with pytest.raises(OptionError, match=r'latent_channels is \[6, 48\].*\[6, 96\]'):
        prior_model(tmp_path, network_g=bad)


def test_needs_a_loss_and_a_known_initial_prior(tmp_path):
    with pytest.raises(OptionError, match='train.latent_opt, train.perceptual_opt, train.pixel_opt'):
        prior_model(tmp_path, train=train_options())
    with pytest.raises(OptionError, match="initial_prior.type 'noise'"):
        prior_model(tmp_path, initial_prior={'type': 'noise'})


@pytest.mark.parametrize('kind', ['zeros', 'gaussian'])
def test_ablation_initial_priors(tmp_path, kind):
    model = prior_model(tmp_path, initial_prior={'type': kind, 'temperature': 0.5})
    lq = smooth_batch()['lq']
    z0 = model.initial_prior(lq, model.net_flow.condition(lq))
    if kind == 'zeros':
        assert all(torch.count_nonzero(z) == 0 for z in z0)
    else:
        # The std of n Gaussian draws has a relative standard error of 1 / sqrt(2 (n - 1)): 6 of them.
        assert all(abs(z.std().item() / 0.5 - 1) < 6 / math.sqrt(2 * (z.numel() - 1)) for z in z0[-1:])


def test_validation_compares_prior_with_temperatures(tmp_path):
    data = write_paired_images(tmp_path / 'data', count=2, hr_size=(24, 20), scale=4)
    model = prior_model(tmp_path)
    model.opt['is_train'] = False  # a test run writes the tables
    dataset_opt = {
        'name': 'tiny',
        'type': 'PairedImageDataset',
        'dataroot_gt': str(data / 'hr'),
        'dataroot_lq': str(data / 'lr'),
        'io_backend': {'type': 'disk'},
        'phase': 'val',
        'scale': 4,
    }
    from basicsr.data import build_dataloader, build_dataset

    loader = build_dataloader(build_dataset(dataset_opt), dataset_opt, num_gpu=0, dist=False)
    model.validation(loader, current_iter=0, tb_logger=None, save_img=True)
    root = tmp_path / 'experiments' / 'prior'
    summary = json.loads((root / 'summary_tiny.json').read_text())
    methods = [entry['method'] for entry in summary['methods']]
    assert methods == ['prior', 'tau0', 'tau0.8']
    for entry in summary['methods']:
        assert entry['images'] == 2 and entry['nonfinite'] == 0
        for name in ('psnr', 'ssim', 'lr_psnr'):
            assert math.isfinite(entry[name])
    assert 'lpips' in summary['skipped_metrics']  # offline: said, not crashed
    assert 'lpips skipped' in (root / 'summary_tiny.md').read_text()
    rows = (root / 'metrics_tiny.csv').read_text().splitlines()
    assert len(rows) == 1 + 2 * 3 and rows[0].startswith('image,method,finite,psnr,ssim,lr_psnr,lpips')
    for method in methods:  # LR 6x5 is odd: padded for the flow, SR cropped back to 24x20
        assert len(list((root / 'visualization' / 'tiny' / method).glob('*.png'))) == 2


def test_nll_decreases_during_likelihood_training(tmp_path):
    opt = _flow_opt()
    model = FlowLikelihoodModel(finalize_options(opt, tmp_path, is_train=True))
    batch = smooth_batch(seed=3, n=4, lr=(4, 4), hr=(16, 16))
    losses = []
    for step in range(25):
        model.feed_data(batch)
        model.optimize_parameters(step + 1)
        losses.append(model.log_dict['l_nll'])
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert all(math.isfinite(v) for v in losses)
    assert last < first - 0.1, f'NLL did not decrease: {first:.3f} -> {last:.3f} bits/pixel'


def test_actnorm_initialised_from_first_batch_not_over_loaded_weights(tmp_path):
    opt = _flow_opt()
    model = FlowLikelihoodModel(finalize_options(opt, tmp_path, is_train=True))
    actnorm_key = next(k for k in model.net_g.state_dict() if k.endswith('actnorm.bias'))
    assert torch.count_nonzero(model.net_g.state_dict()[actnorm_key]) == 0
    model.feed_data(smooth_batch())
    model.optimize_parameters(1)
    assert torch.count_nonzero(model.net_g.state_dict()[actnorm_key]) > 0
    model.save(epoch=0, current_iter=1)
    saved = tmp_path / 'experiments' / 'flow' / 'models' / 'net_g_1.pth'
    opt['path'] = {'pretrain_network_g': str(saved)}
    reloaded = FlowLikelihoodModel(finalize_options(opt, tmp_path, is_train=True))
    before = _snapshot(reloaded.net_g)
    other = smooth_batch(5)
    assert reloaded.get_bare_model(reloaded.net_g).initialize_from_batch(other['lq'], other['gt']) is False
    for key, value in reloaded.net_g.state_dict().items():
        assert torch.equal(value, before[key])


def test_ema_copy_is_saved_beside_the_prior(tmp_path):
    train = train_options(latent_opt={'type': 'LatentL1Loss', 'loss_weight': 1.0}, ema_decay=0.5)
    model = prior_model(tmp_path, train=train)
    for step in range(2):
        model.feed_data(smooth_batch(step))
        model.optimize_parameters(step + 1)
    model.save(epoch=0, current_iter=2)
    saved = torch.load(tmp_path / 'experiments' / 'prior' / 'models' / 'net_g_2.pth', weights_only=True)
    assert set(saved) == {'params', 'params_ema'}
    differs = [k for k in saved['params'] if not torch.equal(saved['params'][k], saved['params_ema'][k])]
    assert differs, 'the EMA copy should lag behind the trained weights'
    assert model.prior_net is model.net_g_ema  # evaluation uses the EMA copy
