"""Sanity checks of the learned-prior training loop that a broken loop cannot pass.

Each test drives FlowPriorModel's own feed_data / optimize_parameters / predict on tiny flows:
overfitting one real photo crop through the frozen decode, recovering a latent whose optimum is
known, and the prior giving a training window the same output as the whole image (aligned LR).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_HCFLOW, TINY_LINF, TINY_PRIOR, TINY_SRFLOW, finalize_options, train_options

from flowprior_plugin.archs.latent_prior_arch import LatentPriorNet, LatentWindow
from flowprior_plugin.data.demo_photos import load_photo
from flowprior_plugin.flow_protocol import HRWindow
from flowprior_plugin.layers.random_init import randomize_parameters_
from flowprior_plugin.models.flow_prior_model import FlowPriorModel


def _photo_pair(scale: int, lr_side: int, name: str = 'astronaut') -> dict:
    """One real photo crop (HR ``lr_side * scale`` square) and its bicubic LR, as a batch of one."""
    photo = load_photo(name)[::2, ::2]  # halved: more detail per pixel, as a training crop would have
    side = lr_side * scale
    crop = np.ascontiguousarray(photo[100 : 100 + side, 60 : 60 + side])
    gt = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    lq = F.interpolate(gt, size=(lr_side, lr_side), mode='bicubic', align_corners=False, antialias=True)
    return {'lq': lq.clamp(0, 1), 'gt': gt}


def _prior_model(
    tmp_path, flow: dict, scale: int, lr: float = 3e-3, milestones: tuple[int, ...] = (10_000,), **losses
) -> FlowPriorModel:
    opt = {
        'name': 'sanity',
        'model_type': 'FlowPriorModel',
        'scale': scale,
        'network_flow': dict(flow, scale=scale) if flow['type'] != 'LINFNet' else dict(flow),
        'network_g': copy.deepcopy(TINY_PRIOR),
        'path': {},
        'logger': {'print_freq': 10},
        'train': train_options(1000, lr=lr, milestones=milestones, gamma=0.1, **losses),
        'val': {'temperatures': [0.0]},
    }
    torch.manual_seed(0)
    return FlowPriorModel(finalize_options(opt, tmp_path, is_train=True))


def _psnr(sr: torch.Tensor, gt: torch.Tensor) -> float:
    mse = float(((sr.clamp(0, 1) - gt) ** 2).mean())
    return -10 * np.log10(mse)


def _train(model: FlowPriorModel, batches, steps: int) -> list[dict]:
    """BasicSR's training loop body for ``steps`` iterations; the logged losses of each step."""
    logs = []
    for step in range(1, steps + 1):
        model.update_learning_rate(step, warmup_iter=-1)
        model.feed_data(batches(step))
        model.optimize_parameters(step)
        logs.append({k: float(v) for k, v in model.log_dict.items()})
    return logs


def _scores(model: FlowPriorModel, batch: dict) -> dict[str, float]:
    """PSNR of the prior and of τ = 0 on ``batch``, through the model's own evaluation path."""
    model.feed_data(batch)
    outputs = model._predict_cropped(['prior', 'tau0'], torch.Generator().manual_seed(0))
    return {name: _psnr(draws[0], model.gt) for name, draws in outputs.items()}


FLOWS = [
    pytest.param(TINY_SRFLOW, 4, id='srflow-x4'),
    pytest.param(TINY_HCFLOW, 4, id='hcflow-x4'),
    pytest.param(TINY_LINF, 2, id='linf-x2'),
    pytest.param(TINY_LINF, 3, id='linf-x3'),
]


@pytest.mark.parametrize(('flow', 'scale'), FLOWS)
def test_pixel_loss_overfits_one_photo_well_above_temperature_zero(tmp_path, flow, scale):
    model = _prior_model(tmp_path, flow, scale, pixel_opt={'type': 'L1Loss', 'loss_weight': 1.0})
    batch = _photo_pair(scale, lr_side=12)
    before = _scores(model, batch)
    logs = _train(model, lambda step: batch, 200)
    assert set(logs[-1]) == {'l_pix'}
    after = _scores(model, batch)
    print(f'{flow["type"]} x{scale}: before {before}, after {after}')
    # The flow is frozen, so τ = 0 cannot move; the prior must pass it by 3 dB and must have learned
    # (an untrained prior is no better than τ = 0 here).
    assert after['tau0'] == pytest.approx(before['tau0'], abs=1e-9)
    assert after['prior'] >= after['tau0'] + 3.0, (before, after)
    assert after['prior'] >= before['prior'] + 3.0, (before, after)


@pytest.mark.parametrize(('flow', 'scale'), FLOWS)
def test_latent_loss_alone_halves_on_one_photo(tmp_path, flow, scale):
    model = _prior_model(tmp_path, flow, scale, latent_opt={'type': 'LatentL1Loss', 'loss_weight': 1.0})
    batch = _photo_pair(scale, lr_side=12)
    losses = [log['l_latent'] for log in _train(model, lambda step: batch, 100)]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f'{flow["type"]} x{scale}: l_latent {first:.4f} -> {last:.4f}')
    assert last <= 0.5 * first, (first, last)


def test_prior_recovers_a_known_optimal_latent_and_the_hr_exactly(tmp_path):
    # HR images made by decoding one fixed latent c for many LR images: the best latent for every
    # image is c, whatever its LR, and decoding c gives the HR exactly.
    model = _prior_model(
        tmp_path,
        TINY_SRFLOW,
        4,
        lr=1e-2,
        milestones=(180, 260),
        latent_opt={'type': 'LatentL1Loss', 'loss_weight': 1.0},
    )
    flow = model.net_flow
    g = torch.Generator().manual_seed(3)

    def lr_batch(n: int) -> torch.Tensor:
        coarse = torch.rand(n, 3, 4, 4, generator=g)
        return F.interpolate(coarse, size=(8, 8), mode='bicubic', align_corners=False).clamp(0, 1)

    shapes = [z.shape[1:] for z in flow.sample_latents(lr_batch(1), 0.0)]
    optimum = [0.3 * torch.randn(1, c, 1, 1, generator=g).expand(1, *s) for c, s in zip(flow.latent_channels(), shapes)]

    def batch(n: int) -> dict:
        lq = lr_batch(n)
        with torch.no_grad():
            gt = flow.decode(lq, [z.expand(n, -1, -1, -1) for z in optimum])
        return {'lq': lq, 'gt': gt}

    _train(model, lambda step: batch(4), 300)
    test = batch(3)  # LR images the prior never saw
    model.feed_data(test)
    with torch.no_grad():
        cond = flow.condition(model.lq)
        latents = model.prior_net.eval()(model.lq, model.initial_prior(model.lq, cond))
        sr = flow.decode(model.lq, latents, cond=cond)
    errors = [float((z - best).abs().mean()) for z, best in zip(latents, optimum)]
    print(
        'latent mean abs error per level',
        errors,
        'SR mean / max abs error',
        float((sr - model.gt).abs().mean()),
        float((sr - model.gt).abs().max()),
    )
    assert max(errors) < 0.005
    assert float((sr - model.gt).abs().mean()) < 0.005


# ---------------------------------------------------------------- windows and whole images
def _window_case(alignment: str):
    """A tiny LINF, an LR of 64x64 at x3 (a 64x64 latent grid) and a 144x144 HR window at (24, 36)."""
    torch.manual_seed(0)
    from basicsr.archs import build_network

    flow = build_network(dict(TINY_LINF)).eval().double()
    prior_opt = copy.deepcopy(TINY_PRIOR)
    prior_opt.update(latent_channels=flow.latent_channels(), lr_encoder_stride=3, lr_alignment=alignment)
    # A translation-equivariant generator: the released UNet's align_corners=True upsampling makes
    # its output depend on the grid size, so a window of it differs from the whole image by about
    # 5e-5 (relative) even far from the window's edge, whatever the LR branch does.
    prior_opt['generator'] = {'type': 'EDSRBaseline', 'num_blocks': 1, 'width': 8}
    prior_opt.pop('type')
    prior = LatentPriorNet(**prior_opt).eval()
    # Random weights everywhere: at its initialisation the LR branch barely reaches the output.
    randomize_parameters_(prior, torch.Generator().manual_seed(2))
    prior.double()
    g = torch.Generator().manual_seed(1)
    lq = F.interpolate(torch.rand(1, 3, 12, 12, generator=g, dtype=torch.float64), size=(64, 64), mode='bicubic')
    lq = lq.clamp(0, 1)
    window = HRWindow((144, 144), full_size=torch.tensor([[192, 192]]), offset=torch.tensor([[24, 36]]))
    return flow, prior, lq, window


@pytest.mark.parametrize('alignment', ['window', 'release'])
def test_window_prior_equals_the_whole_image_prior_away_from_borders_only_when_aligned(alignment):
    flow, prior, lq, window = _window_case(alignment)
    with torch.no_grad():
        whole_z0 = flow.initial_prior(lq, out_size=(192, 192))
        whole = prior(lq, whole_z0)[0]
        win_z0 = flow.initial_prior(lq, out_size=window)
        windows = [LatentWindow.from_hr_window(window, z.shape[-2:]) for z in win_z0]
        part = prior(lq, win_z0, windows)[0]
    top, left, cells = 24 // 3, 36 // 3, 144 // 3
    assert torch.allclose(win_z0[0], whole_z0[0][..., top : top + cells, left : left + cells], atol=1e-9)
    # The reach of the prior encoder (5 convs) and the generator (5 convs) in cells: zero padding
    # at the window's edge stays inside this margin.
    margin = 12
    inner = part[..., margin:-margin, margin:-margin]
    same = whole[..., top + margin : top + cells - margin, left + margin : left + cells - margin]
    difference = float((inner - same).abs().max() / same.abs().max())
    if alignment == 'window':
        assert difference < 1e-9
    else:  # the release squeezes the whole crop's LR onto the window: not the whole image's output
        assert difference > 1e-3


@pytest.mark.parametrize('stride', [1, 3])
def test_latent_window_samples_what_resize_then_crop_gives(stride):
    g = torch.Generator().manual_seed(0)
    features = torch.rand(2, 5, 17, 13, generator=g, dtype=torch.float64)
    full, grid = (40, 31), (12, 9)
    window = HRWindow(
        (grid[0] * stride, grid[1] * stride),
        full_size=torch.tensor([[full[0] * stride, full[1] * stride]] * 2),
        offset=torch.tensor([[0, 0], [28 * stride, 22 * stride]]),
    )
    sampled = LatentWindow.from_hr_window(window, grid).sample(features, grid)
    resized = F.interpolate(features, size=full, mode='bilinear', align_corners=False)
    assert torch.allclose(sampled[0], resized[0, :, :12, :9], atol=1e-12)
    assert torch.allclose(sampled[1], resized[1, :, 28:40, 22:31], atol=1e-12)
