"""LINF's cached flow parameters (``cache_flow_params``): the cached path equals the plain one (every
call recomputes the MLP) for decode, encode, the initial prior and the prior's gradient; the MLP runs
once per learned-prior step; the cache follows weight changes and keeps gradients to the MLP exact."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_LINF, TINY_PRIOR, finalize_options

from flowprior_plugin.archs.linf_arch import LINFNet
from flowprior_plugin.flow_protocol import HRWindow
from flowprior_plugin.models.flow_prior_model import FlowPriorModel

TOL = 1e-5


def _pair(seed: int = 0) -> tuple[LINFNet, LINFNet]:
    """The same random tiny LINF twice: with the cache (default) and without."""
    torch.manual_seed(seed)
    cached = LINFNet(encoder_opt={'nf': 8, 'num_blocks': 1}, patch_size=3, hidden_dim=16, flow_layers=3, mlp_layers=2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in cached.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    plain = copy.deepcopy(cached)
    plain.cache_flow_params = False
    for net in (cached, plain):
        net.eval().requires_grad_(False)
    return cached, plain


def _count_mlp(monkeypatch, net: LINFNet) -> list[int]:
    """Counts the MLP's chunk evaluations of ``net`` (each appends its number of queries)."""
    calls: list[int] = []
    original = net._query_params

    def counted(cond, coord, cell):
        calls.append(coord.shape[1])
        return original(cond, coord, cell)

    monkeypatch.setattr(net, '_query_params', counted)
    return calls


def _data(lr=(7, 8), hr=(24, 29), batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *lr, generator=g), torch.rand(batch, 3, *hr, generator=g)


def _window(full=(24, 29), top=3, left=6, size=(12, 15), batch=2) -> HRWindow:
    return HRWindow(size, torch.tensor([list(full)] * batch), torch.tensor([[top, left]] * batch))


def _maxdiff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize('windowed', [False, True])
def test_cached_and_plain_paths_agree_for_prior_encode_and_decode(monkeypatch, windowed):
    cached, plain = _pair()
    lq, gt = _data()
    out_size = _window() if windowed else None
    if windowed:
        gt = gt[..., 3:15, 6:21]
    target = out_size if windowed else tuple(gt.shape[-2:])
    calls = _count_mlp(monkeypatch, cached)
    results = {}
    with torch.no_grad():
        for name, net in (('cached', cached), ('plain', plain)):
            cond = net.condition(lq)
            z0 = net.initial_prior(lq, cond=cond, out_size=target)
            z = net.encode(lq, gt, cond=cond, out_size=out_size)
            sr = net.decode(lq, z, cond=cond, out_size=target)
            sampled = net.decode(
                lq, net.sample_latents(lq, 0.8, torch.Generator().manual_seed(3), cond, target), cond, target
            )
            nll = net.nll(lq, gt, cond=cond, out_size=out_size)
            results[name] = (z0[0], z[0], sr, sampled, nll)
    for got, want in zip(results['cached'], results['plain']):
        assert got.shape == want.shape
        assert _maxdiff(got, want) <= TOL
    # Five calls on one grid and one condition: the MLP ran once (one chunk: no query_chunk set).
    assert len(calls) == 1
    # The decode inverts the encode on the cached path too (the parameters are the right ones).
    assert _maxdiff(results['cached'][2], gt) < 1e-4


def test_prior_gradient_is_the_same_through_the_cached_decode():
    cached, plain = _pair()
    lq, gt = _data(lr=(6, 6), hr=(24, 24))
    grads, losses = {}, {}
    for name, net in (('cached', cached), ('plain', plain)):
        torch.manual_seed(5)
        head = torch.nn.Conv2d(net.dim, net.dim, 3, padding=1)  # stands in for the latent module
        with torch.no_grad():  # as FlowPriorModel's step: everything of the frozen flow first
            cond = net.condition(lq)
            z0 = net.initial_prior(lq, cond=cond)
        sr = net.decode(lq, [z0[0] + 0.1 * head(z0[0])], cond=cond)
        loss = torch.nn.functional.l1_loss(sr, gt)
        loss.backward()
        losses[name] = loss.detach()
        grads[name] = [p.grad.clone() for p in head.parameters()]
    assert _maxdiff(losses['cached'], losses['plain']) <= TOL
    for got, want in zip(grads['cached'], grads['plain']):
        assert want.abs().max() > 0
        assert _maxdiff(got, want) <= TOL * max(1.0, want.abs().max().item())


def test_gradients_to_the_mlp_and_condition_are_never_served_from_the_cache():
    cached, plain = _pair()
    lq, gt = _data()
    grads = {}
    for name, net in (('cached', cached), ('plain', plain)):
        net.requires_grad_(True)
        cond = net.condition(lq)
        with torch.no_grad():  # fills the cache with parameters that carry no graph
            net.initial_prior(lq, cond=cond, out_size=tuple(gt.shape[-2:]))
        net.nll(lq, gt, cond=cond).mean().backward()  # likelihood training: needs the MLP's graph
        grads[name] = {k: p.grad for k, p in net.named_parameters()}
    for key, want in grads['plain'].items():
        if want is None:  # weights the forward pass never reads (EDSR's mean shifts)
            assert grads['cached'][key] is None, key
            continue
        assert _maxdiff(grads['cached'][key], want) <= TOL * max(1.0, want.abs().max().item()), key
    assert grads['cached']['layers.0.weight'].abs().max() > 0


def test_cache_follows_weight_changes_and_holds_one_grid(monkeypatch):
    cached, plain = _pair()
    lq, _ = _data()
    calls = _count_mlp(monkeypatch, cached)
    with torch.no_grad():
        cond = cached.condition(lq)
        z = cached.sample_latents(lq, 0.8, torch.Generator().manual_seed(2), cond, (24, 29))
        cached.decode(lq, z, cond=cond, out_size=(24, 29))
        cached.decode(lq, z, cond=cond, out_size=(24, 29))
        assert len(calls) == 1
        for net in (cached, plain):  # an optimiser step or a new checkpoint changes the MLP in place
            net.layers[0].weight.mul_(1.5)
        after = cached.decode(lq, z, cond=cond, out_size=(24, 29))
        assert len(calls) == 2
        assert _maxdiff(after, plain.decode(lq, z, out_size=(24, 29))) <= TOL
        # Another grid (a tile of the same image) replaces the entry: one grid is held at a time.
        window = _window()
        cached.decode(lq, cached.sample_latents(lq, 0.0, cond=cond, out_size=window), cond=cond, out_size=window)
        assert len(calls) == 3
        assert cond.params_cache[1].shape[-2:] == cached.query_shape(window)
        cached.decode(lq, z, cond=cond, out_size=(24, 29))
        assert len(calls) == 4


def test_cache_can_be_switched_off(monkeypatch):
    _, plain = _pair()
    lq, _ = _data()
    calls = _count_mlp(monkeypatch, plain)
    with torch.no_grad():
        cond = plain.condition(lq)
        z0 = plain.initial_prior(lq, cond=cond)
        plain.decode(lq, z0, cond=cond)
    assert len(calls) == 2 and cond.params_cache is None


@pytest.mark.parametrize('iteration,encodes', [(1, False), (100, True)])
def test_prior_training_step_runs_the_mlp_once(tmp_path, monkeypatch, iteration, encodes):
    """FlowPriorModel on options/linf_prior.yml's losses (perceptual 1, latent 0 logged every
    print_freq): one MLP pass per step, whether or not the step also encodes the HR."""
    opt = {
        'name': 'linf_cache',
        'model_type': 'FlowPriorModel',
        'scale': 4,
        'network_flow': dict(TINY_LINF),
        'network_g': copy.deepcopy(TINY_PRIOR),
        'path': {},
        'logger': {'print_freq': 100},
        'train': {
            'ema_decay': 0,
            'optim_g': {'type': 'Adam', 'lr': 1e-3},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
            'total_iter': 200,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
            'latent_opt': {'type': 'LatentL1Loss', 'loss_weight': 0.0},
        },
    }
    torch.manual_seed(0)
    model = FlowPriorModel(finalize_options(opt, tmp_path, is_train=True))
    calls = _count_mlp(monkeypatch, model.net_flow)
    lq, gt = _data(lr=(8, 8), hr=(24, 24))
    model.feed_data({'lq': lq, 'gt': gt})
    model.optimize_parameters(iteration)
    assert ('l_latent' in model.log_dict) == encodes
    assert len(calls) == 1
