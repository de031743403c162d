"""LINF through FlowLikelihoodModel (likelihood) and FlowPriorModel (learned prior), in process: the
models have no LINF branch, they pass the gt's size as ``out_size`` to an arbitrary-scale flow."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from basicsr.data import build_dataloader, build_dataset
from conftest import (
    RANDOM_VGG,
    TINY_LINF,
    TINY_PRIOR,
    VAL_METRICS,
    finalize_options,
    smooth_batch,
    train_options,
    write_paired_images,
)

from flowprior_plugin.archs.linf_arch import LINFNet
from flowprior_plugin.flow_protocol import HRWindow
from flowprior_plugin.models.flow_likelihood_model import FlowLikelihoodModel
from flowprior_plugin.models.flow_prior_model import FlowPriorModel


def flow_model(tmp_path) -> FlowLikelihoodModel:
    opt = {
        'name': 'linf',
        'model_type': 'FlowLikelihoodModel',
        'scale': 4,
        'network_g': dict(TINY_LINF),
        'path': {},
        'train': train_options(),
        'val': {'temperatures': [0.0, 0.8], 'metrics': VAL_METRICS},
    }
    torch.manual_seed(0)
    return FlowLikelihoodModel(finalize_options(opt, tmp_path, is_train=True))


def prior_model(tmp_path, scale: int = 4, **overrides) -> FlowPriorModel:
    opt = {
        'name': 'linf_prior',
        'model_type': 'FlowPriorModel',
        'scale': scale,
        'network_flow': dict(TINY_LINF),
        'network_g': copy.deepcopy(TINY_PRIOR),
        'path': {},
        'train': train_options(latent_opt={'type': 'LatentL1Loss', 'loss_weight': 1.0}),
        'val': {'temperatures': [0.0, 0.8], 'metrics': VAL_METRICS},
    }
    opt.update(overrides)
    torch.manual_seed(0)
    return FlowPriorModel(finalize_options(opt, tmp_path, is_train=True))


def _validate(model, tmp_path, scale: int, hr_size: tuple[int, int]) -> list[dict]:
    """Validate through BasicSR's PairedImageDataset on paired folders at ``scale``; the summary."""
    data = write_paired_images(tmp_path / f'data_x{scale}', count=2, hr_size=hr_size, scale=scale)
    dataset_opt = {
        'name': f'x{scale}',
        'type': 'PairedImageDataset',
        'dataroot_gt': str(data / 'hr'),
        'dataroot_lq': str(data / 'lr'),
        'io_backend': {'type': 'disk'},
        'phase': 'val',
        'scale': scale,
    }
    loader = build_dataloader(build_dataset(dataset_opt), dataset_opt, num_gpu=0, dist=False)
    model.opt['is_train'] = False  # a test run writes the tables
    model.validation(loader, current_iter=0, tb_logger=None, save_img=True)
    root = tmp_path / 'experiments' / model.opt['name']
    return json.loads((root / f'summary_x{scale}.json').read_text())['methods']


def test_likelihood_training_steps_decrease_the_nll(tmp_path):
    model = flow_model(tmp_path)
    batch = smooth_batch(seed=3, n=4)
    losses = []
    for step in range(20):
        model.feed_data(batch)
        model.optimize_parameters(step + 1)
        losses.append(float(model.log_dict['l_nll']))
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.1, f'NLL did not decrease: {first:.3f} -> {last:.3f} bits/pixel'


def test_likelihood_training_at_another_scale_uses_the_gt_size(tmp_path):
    model = flow_model(tmp_path)
    model.feed_data(smooth_batch(lr=(8, 7), hr=(24, 21)))  # x3 pairs for a flow whose default scale is 4
    model.optimize_parameters(1)
    assert math.isfinite(float(model.log_dict['l_nll']))
    assert model._out_size() == (24, 21)
    model.test()
    assert tuple(model.output.shape) == (2, 3, 24, 21)


@pytest.mark.parametrize('scale,hr_size', [(4, (24, 20)), (3, (24, 21))])
def test_flow_model_validates_at_a_fixed_scale(tmp_path, scale, hr_size):
    model = flow_model(tmp_path)
    summary = _validate(model, tmp_path, scale, hr_size)
    assert [entry['method'] for entry in summary] == ['tau0', 'tau0.8']
    for entry in summary:
        assert entry['images'] == 2 and math.isfinite(entry['psnr']) and math.isfinite(entry['lr_psnr'])


def test_prior_steps_train_the_prior_and_keep_the_flow(tmp_path):
    model = prior_model(tmp_path, train=train_options(latent_opt={'type': 'LatentL1Loss', 'loss_weight': 1.0}))
    assert model.opt['network_g']['latent_channels'] == [27]
    flow_before = {k: v.clone() for k, v in model.net_flow.state_dict().items()}
    prior_before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    for step, (lr, hr) in enumerate((((6, 6), (24, 24)), ((8, 7), (24, 21)), ((6, 5), (24, 20)))):
        model.feed_data(smooth_batch(step, lr=lr, hr=hr))
        model.optimize_parameters(step + 1)
        assert math.isfinite(float(model.log_dict['l_latent']))
    assert all(torch.equal(v, flow_before[k]) for k, v in model.net_flow.state_dict().items())
    assert any(not torch.equal(v, prior_before[k]) for k, v in model.net_g.state_dict().items())


def test_gradient_reaches_the_prior_through_linf_decode(tmp_path):
    model = prior_model(tmp_path)
    model.feed_data(smooth_batch(lr=(8, 8), hr=(24, 24)))
    out_size = model._out_size()
    assert out_size == (24, 24)
    with torch.no_grad():
        cond = model.net_flow.condition(model.lq)
        z0 = model.initial_prior(model.lq, cond, out_size=out_size)
    sr = model.net_flow.decode(model.lq, model.net_g(model.lq, z0), cond=cond, out_size=out_size)
    assert tuple(sr.shape) == (2, 3, 24, 24)
    torch.nn.functional.l1_loss(sr, model.gt).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net_g.parameters())


@pytest.mark.parametrize('scale,hr_size', [(4, (24, 20)), (3, (24, 21))])
def test_prior_model_validates_at_a_fixed_scale(tmp_path, scale, hr_size):
    model = prior_model(tmp_path, scale=scale)
    summary = _validate(model, tmp_path, scale, hr_size)
    assert [entry['method'] for entry in summary] == ['prior', 'tau0', 'tau0.8']
    for entry in summary:
        assert entry['images'] == 2 and entry['nonfinite'] == 0
        assert math.isfinite(entry['psnr']) and math.isfinite(entry['lr_psnr'])
    root = tmp_path / 'experiments' / 'linf_prior' / 'visualization' / f'x{scale}'
    assert len(list((root / 'prior').glob('*.png'))) == 2


def _window_loader(tmp_path, gt_size: int = 9, lq_size: int = 6, batch: int = 3):
    """Training batches of BasicSR's loader over ArbitraryScaleSRDataset: mixed scales, HR windows."""
    data = write_paired_images(tmp_path / 'hr_pool', count=3, hr_size=(40, 40), scale=4)
    dataset_opt = {
        'name': 'windows',
        'type': 'ArbitraryScaleSRDataset',
        'dataroot_gt': str(data / 'hr'),
        'phase': 'train',
        'scale_min': 1.5,
        'scale_max': 4.0,
        'gt_size': gt_size,
        'lq_size': lq_size,
        'num_worker_per_gpu': 0,
        'batch_size_per_gpu': batch,
        'scale': 4,
    }
    return build_dataloader(build_dataset(dataset_opt), dataset_opt, num_gpu=0, dist=False, seed=0)


def test_window_batches_train_both_stages(tmp_path):
    """Stage 1 and stage 2 on random-scale windows: the flow sees each window in its whole HR crop."""
    torch.manual_seed(0)
    batch = next(iter(_window_loader(tmp_path)))
    assert batch['lq'].shape == (3, 3, 6, 6) and batch['gt'].shape == (3, 3, 9, 9)
    assert len(set(batch['hr_size'][:, 0].tolist())) > 1, 'expected mixed scales in one batch'

    model = flow_model(tmp_path)
    model.feed_data(batch)
    window = model._out_size()
    assert window.size == (9, 9) and torch.equal(window.full_size, batch['hr_size'])
    expected = model.net_g.nll(model.lq, model.gt, out_size=window).mean()
    assert not torch.allclose(expected, model.net_g.nll(model.lq, model.gt).mean())  # the window matters
    model.optimize_parameters(1)
    assert math.isfinite(float(model.log_dict['l_nll']))

    prior = prior_model(
        tmp_path / 'prior',
        train=train_options(
            latent_opt={'type': 'LatentL1Loss', 'loss_weight': 1.0},
            perceptual_opt=dict(RANDOM_VGG),
        ),
    )
    before = {k: v.clone() for k, v in prior.net_g.state_dict().items()}
    prior.feed_data(batch)
    prior.optimize_parameters(1)
    assert math.isfinite(float(prior.log_dict['l_latent'])) and math.isfinite(float(prior.log_dict['l_percep']))
    assert any(not torch.equal(v, before[k]) for k, v in prior.net_g.state_dict().items())


def test_fixed_scale_flow_refuses_window_batches_clearly(tmp_path):
    from conftest import TINY_SRFLOW

    from flowprior_plugin.errors import OptionError

    batch = next(iter(_window_loader(tmp_path, gt_size=8, lq_size=6)))
    opt = {
        'name': 'srflow',
        'model_type': 'FlowLikelihoodModel',
        'scale': 4,
        'network_g': dict(TINY_SRFLOW),
        'path': {},
        'train': train_options(),
        'val': {'temperatures': [0.0]},
    }
    model = FlowLikelihoodModel(finalize_options(opt, tmp_path, is_train=True))
    with pytest.raises(OptionError, match='fixed-scale flow.*gt_size = lq_size \\* scale'):
        model.feed_data(batch)


def test_window_training_under_data_parallel_asks_for_ddp(tmp_path):
    from flowprior_plugin.errors import OptionError

    model = flow_model(tmp_path)
    model.feed_data(next(iter(_window_loader(tmp_path))))
    model._first_batch_done = True
    model.net_g = torch.nn.DataParallel(model.net_g)  # what BasicSR does with num_gpu > 1 and no launcher
    with pytest.raises(OptionError, match='--launcher pytorch'):
        model.optimize_parameters(1)


# ---------------------------------------------------------------- padding for an arbitrary-scale flow


class EvenSidedLINF(LINFNet):
    """LINF that takes even LR sides only: an arbitrary-scale flow with ``lr_multiple`` 2."""

    lr_multiple = 2

    def condition(self, lq, normalized=False):
        if lq.shape[-2] % 2 or lq.shape[-1] % 2:
            raise ValueError(f'EvenSidedLINF takes even LR sides only, got {tuple(lq.shape)}')
        return super().condition(lq, normalized)


def _even_sided_model(tmp_path) -> tuple[FlowLikelihoodModel, LINFNet]:
    """A FlowLikelihoodModel predicting with :class:`EvenSidedLINF`, and the plain LINF of the same weights."""
    model = flow_model(tmp_path)
    plain = model.net_g.eval()
    even = EvenSidedLINF(**{k: v for k, v in TINY_LINF.items() if k != 'type'})
    even.load_state_dict(plain.state_dict())
    model.net_g = even
    return model, plain


def test_padded_lr_of_an_arbitrary_scale_flow_keeps_the_hr_grid(tmp_path):
    # LR 21 x 23 is padded to 22 x 24; at x3 the flow decodes 66 x 72 and the 63 x 69 asked for is
    # cropped: the same HR pixel grid, so away from the padded border it is the unpadded decode.
    model, plain = _even_sided_model(tmp_path)
    batch = smooth_batch(lr=(21, 23), hr=(63, 69))
    model.feed_data(batch)
    sr = model._predict_cropped(['tau0'], torch.Generator().manual_seed(0))['tau0'][0]
    assert tuple(sr.shape) == (2, 3, 63, 69)
    lq = batch['lq']
    with torch.no_grad():
        unpadded = plain.decode(lq, plain.sample_latents(lq, 0.0, out_size=(63, 69)), out_size=(63, 69))
        assert torch.allclose(sr[..., :36, :42], unpadded[..., :36, :42], atol=1e-5)
        # The HR windows of larger images grow with the LR too; the windows stay where they are.
        window = HRWindow((9, 9), torch.tensor([[63, 69], [63, 69]]), torch.tensor([[3, 6], [0, 12]]))
        model.feed_data({**batch, 'gt': batch['gt'][..., :9, :9], 'hr_size': window.full_size, 'window': window.offset})
        sr = model._predict_cropped(['tau0'], torch.Generator().manual_seed(0))['tau0'][0]
        expected = plain.decode(lq, plain.sample_latents(lq, 0.0, out_size=window), out_size=window)
    assert tuple(sr.shape) == (2, 3, 9, 9)
    assert torch.allclose(sr, expected, atol=1e-5)


def test_padded_lr_that_cannot_keep_the_hr_grid_is_refused_in_one_line(tmp_path):
    model, _ = _even_sided_model(tmp_path)
    model.feed_data(smooth_batch(lr=(21, 23), hr=(64, 69)))  # 64 * 22 / 21 is no whole pixel count
    with pytest.raises(ValueError) as info:
        model.test()
    message = str(info.value)
    assert '\n' not in message
    assert 'EvenSidedLINF (lr_multiple 2)' in message and '(2, 3, 21, 23)' in message, message
