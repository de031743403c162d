"""SRFlowNet: checkpoint format, golden vectors of the release, flow invariants, caching, errors.

The flow protocol's contract (round trips, conditioning, sampling, likelihood, out_size, tiling
hooks, ActNorm initialisation) is tested for every flow in test_flow_contract.py.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import load_golden, meta_module, meta_state_dict, random_lr_hr, rel_err, tiny_module

from flowprior_plugin.archs.srflow_arch import (
    SRFlowCondition,
    SRFlowNet,
    official_srflow_options,
    read_srflow_architecture,
)
from flowprior_plugin.checkpoints import describe_checkpoint_mismatch, load_checked
from flowprior_plugin.errors import CheckpointMismatchError
from flowprior_plugin.layers.flow_layers import (
    ActNorm,
    InvertibleConv1x1,
    gaussian_log_prob,
    squeeze2d,
    unsqueeze2d,
)

KEY_FILES = {
    'DF2K 4X': 'srflow_DF2K_4X_keys.txt',
    'DF2K 8X': 'srflow_DF2K_8X_keys.txt',
    'CelebA 8X': 'srflow_CelebA_8X_keys.txt',
}
GOLDEN = {'DF2K 4X': 'srflow_DF2K_4X_seed0.pt', 'DF2K 8X': 'srflow_DF2K_8X_seed0.pt'}
TINY = dict(nf=8, nb=2, gc=4, K=2, hidden_channels=8, stacked_blocks=(0, 1))


def tiny_net(scale: int = 4, randomize: bool = True, seed: int = 0, **overrides) -> SRFlowNet:
    return tiny_module(SRFlowNet, {'scale': scale, **TINY, **overrides}, randomize, seed)


def meta_net(config: str) -> SRFlowNet:
    """Official architecture without allocating or initialising its 40M parameters."""
    return meta_module(SRFlowNet, official_srflow_options(config))


def key_list(reference_dir, golden_weights, config: str) -> list[tuple[str, tuple[int, ...]]]:
    return golden_weights.read_keys(reference_dir / KEY_FILES[config])


def lr_hr(net: SRFlowNet, h: int = 4, w: int = 6, batch: int = 2, dtype=torch.float32, seed: int = 1):
    return random_lr_hr(net.scale, h, w, batch, dtype, seed)


# ---------------------------------------------------------------- checkpoint format


@pytest.mark.parametrize('config', list(KEY_FILES))
def test_state_dict_matches_official_key_list(reference_dir, golden_weights, config):
    expected = key_list(reference_dir, golden_weights, config)
    header = (reference_dir / KEY_FILES[config]).read_text()
    totals = re.search(r'num tensors (\d+), total elements (\d+)', header)
    ours = [(k, tuple(v.shape)) for k, v in meta_net(config).state_dict().items()]

    assert ours == expected  # same keys, same shapes, same order
    assert len(ours) == int(totals.group(1))
    assert sum(math.prod(shape) for _, shape in ours) == int(totals.group(2))


def test_latent_channels_are_derived():
    assert meta_net('DF2K 4X').latent_channels() == [6, 96]
    assert meta_net('DF2K 8X').latent_channels() == [6, 12, 192]
    assert tiny_net(scale=2, randomize=False).latent_channels() == [48]  # L=2: no split level
    assert tiny_net(randomize=False).latent_shapes((2, 3, 6, 8)) == [(2, 6, 12, 16), (2, 96, 3, 4)]


def test_registered_with_the_release_attributes():
    assert ARCH_REGISTRY.get('SRFlowNet') is SRFlowNet
    net = tiny_net(randomize=False)
    assert net.scale == 4 and net.lr_multiple == 2 and net.L == 3
    assert net.dequantization_offset == 0.5 and net.quant == 32  # noise (U(0, 1) - 0.5) / 32, centred


def test_bad_options_are_named():
    with pytest.raises(ValueError, match='power of 2'):
        SRFlowNet(scale=3, **TINY)
    with pytest.raises(ValueError, match='L must be between 1 and'):
        SRFlowNet(scale=4, L=4, **TINY)
    with pytest.raises(ValueError, match='stacked_blocks'):
        SRFlowNet(scale=4, **{**TINY, 'stacked_blocks': (0, 5)})


# ---------------------------------------------------------------- golden vectors of the release


@pytest.mark.parametrize('config', list(GOLDEN))
def test_golden_vectors_of_the_release(reference_dir, golden_weights, config):
    golden = load_golden(reference_dir, GOLDEN[config])
    state = golden_weights.golden_state_dict(reference_dir / KEY_FILES[config], dtype=torch.float64)
    net = SRFlowNet(**official_srflow_options(config)).double().eval()
    net.load_state_dict(state, strict=True)
    lq = golden['lq']
    with torch.no_grad():
        cond = net.condition(lq)
        latents = net.encode(lq, golden['gt'], cond=cond)
        sr = net.decode(lq, golden['decode_latents'], cond=cond)
        nll = net.nll(lq, golden['gt'], cond=cond)

    assert [z.shape for z in latents] == [z.shape for z in golden['latents']]
    for ours, ref in zip(latents, golden['latents']):
        assert rel_err(ours, ref) < 1e-9  # float64 goldens, float64 network
    assert rel_err(sr, golden['sr']) < 1e-9
    assert rel_err(nll, golden['nll_bits_per_pixel_no_dequantisation']) < 1e-9


# ---------------------------------------------------------------- flow invariants


def test_log_determinant_matches_brute_force_jacobian():
    net = tiny_net(scale=4, nf=4, nb=1, gc=4, K=1, hidden_channels=4, stacked_blocks=(0,)).double()
    lq, gt = lr_hr(net, h=2, w=2, batch=1, dtype=torch.float64)
    cond = net.condition(lq)

    def flat_latents(x):
        return torch.cat([z.flatten() for z in net.encode(lq, x.view_as(gt), cond=cond)])

    jac = torch.autograd.functional.jacobian(flat_latents, gt.flatten())
    assert jac.shape == (gt.numel(), gt.numel())
    brute = torch.linalg.slogdet(jac)[1]

    # nll * ln2 * HW = -(log|det J| + sum_i log N(latent_i; 0, I)): every latent is standard normal
    # under the model (the split eps by construction), so the implied log-det follows.
    with torch.no_grad():
        num_pixels = gt.shape[2] * gt.shape[3]
        nll = net.nll(lq, gt, cond=cond)
        log_prior = sum(gaussian_log_prob(z) for z in net.encode(lq, gt, cond=cond))
        implied = -nll * math.log(2) * num_pixels - log_prior
    assert torch.allclose(implied, brute, rtol=1e-9, atol=1e-9)


def test_cached_condition_equals_uncached_and_plain_computation():
    net = tiny_net().double()
    lq, gt = lr_hr(net, dtype=torch.float64)
    unused = [net.RRDB.HRconv, net.RRDB.conv_last, net.RRDB.upconv2, net.flowUpsamplerNet.f]
    calls = []
    for module in unused:
        module.register_forward_hook(lambda m, i, o: calls.append(m))
    with torch.no_grad():
        cond = net.condition(lq)
        assert not calls  # HRconv, conv_last, fea_up4 (upconv2) and f are never computed at 4X
        assert isinstance(cond, SRFlowCondition)
        # Only the resolutions the levels use (fea_up2, fea_up1, fea_up0 at 4X), never fea_up4.
        assert sorted(cond.features) == ['fea_up0', 'fea_up1', 'fea_up2']
        latents = net.encode(lq, gt, cond=cond)
        for cached, fresh in zip(latents, net.encode(lq, gt)):
            assert torch.equal(cached, fresh)
        assert torch.equal(net.decode(lq, latents, cond=cond), net.decode(lq, latents))
        assert torch.equal(net.nll(lq, gt, cond=cond), net.nll(lq, gt))
        # The factorised coupling conv equals the release's plain concat conv.
        for ours, plain in zip(latents, net.plain_encode(lq, gt)):
            assert torch.allclose(ours, plain, rtol=1e-10, atol=1e-12)
        assert torch.allclose(net.decode(lq, latents, cond=cond), net.plain_decode(lq, latents), atol=1e-12)


# ---------------------------------------------------------------- ActNorm initialisation


def test_actnorm_initialises_fresh_weights_once():
    norm = ActNorm(4).train()
    x = torch.randn(8, 4, 5, 5) * 3 + 2
    y = norm(x)
    assert norm.initialized
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert (y.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-4
    params = [p.clone() for p in norm.parameters()]
    norm(torch.randn(8, 4, 5, 5))
    assert all(torch.equal(a, b) for a, b in zip(params, norm.parameters()))


def test_actnorm_never_overwrites_loaded_weights():
    norm = ActNorm(4).train()
    norm.load_state_dict({'bias': torch.zeros(1, 4, 1, 1), 'logs': torch.zeros(1, 4, 1, 1)})  # zero, but loaded
    norm(torch.randn(8, 4, 5, 5) * 3 + 2)
    assert not norm.bias.any() and not norm.logs.any()
    assert list(norm.state_dict()) == ['bias', 'logs']  # the flag is no buffer


# ---------------------------------------------------------------- 1x1 convolution and squeeze


def test_invconv_inverse_cache_follows_the_weight():
    conv = InvertibleConv1x1(6)
    x = torch.randn(2, 6, 3, 3)
    with torch.no_grad():
        y, logdet = conv(x)
        assert torch.allclose(conv.reverse(y), x, atol=1e-5)
        assert conv.inverse(torch.float32) is conv.inverse(torch.float32)  # cached
        assert conv.inverse(torch.float64).dtype == torch.float64

        first = conv.inverse(torch.float32)
        conv.weight.mul_(2.0)  # in-place update (as an optimizer step): version changes
        assert torch.allclose(conv.inverse(torch.float32), first / 2, atol=1e-6)
        y2, logdet2 = conv(x)
        assert torch.allclose(logdet2, logdet + 6 * math.log(2) * 9, atol=1e-4)
        assert torch.allclose(conv.reverse(y2), x, atol=1e-5)

        conv.weight.data.copy_(torch.linalg.qr(torch.randn(6, 6))[0])  # .data write: no version bump
        y3, _ = conv(x)
        assert torch.allclose(conv.reverse(y3), x, atol=1e-5)

    # Trainable weight under grad mode: fresh, differentiable inverse and log-det.
    out = conv.reverse(torch.randn(2, 6, 3, 3)).sum() + conv(x)[1]
    out.backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_squeeze_channel_order_and_inverse():
    x = torch.arange(2 * 2 * 4 * 6, dtype=torch.float32).view(2, 2, 4, 6)
    s = squeeze2d(x)
    assert s.shape == (2, 8, 2, 3)
    c, dy, dx, i, j = 1, 1, 0, 1, 2
    assert s[0, 4 * c + 2 * dy + dx, i, j] == x[0, c, 2 * i + dy, 2 * j + dx]
    assert torch.equal(unsqueeze2d(s), x)


# ---------------------------------------------------------------- errors with a clear message


def test_odd_lr_and_wrong_gt_raise_clear_messages():
    net = tiny_net(randomize=False)
    with pytest.raises(ValueError, match=r'even LR sides.*\(1, 3, 15, 16\)'):
        net.condition(torch.rand(1, 3, 15, 16))
    lq = torch.rand(1, 3, 4, 6)
    with pytest.raises(ValueError, match=r'exactly 4x the LR.*\(1, 3, 16, 24\).*\(1, 3, 16, 20\)'):
        net.encode(lq, torch.rand(1, 3, 16, 20))
    with pytest.raises(ValueError, match='expects latents of shapes'):
        net.decode(lq, net.sample_latents(torch.rand(1, 3, 4, 8), 0.0))


@pytest.mark.parametrize(
    ('checkpoint', 'options', 'words'),
    [
        ('DF2K 8X', 'DF2K 4X', ['checkpoint holds SRFlow 8X', 'DF2K 8X', 'options build SRFlow 4X', 'DF2K 4X']),
        ('CelebA 8X', 'DF2K 8X', ['nb=8', 'CelebA 8X', 'nb=23', 'DF2K 8X']),
        ('DF2K 4X', 'CelebA 8X', ['DF2K 4X', 'CelebA 8X']),
    ],
)
def test_loading_another_config_names_both(reference_dir, golden_weights, checkpoint, options, words):
    state = meta_state_dict(key_list(reference_dir, golden_weights, checkpoint))
    net = meta_net(options)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checked(net, state)
    message = str(info.value)
    assert all(word in message for word in words), message
    assert 'but the options build' in message


def test_non_strict_partial_load_is_left_to_torch():
    source = tiny_net(seed=3)
    rrdb_only = {k: v for k, v in source.state_dict().items() if k.startswith('RRDB.')}
    net = tiny_net(randomize=False)
    result = load_checked(net, rrdb_only, strict=False)
    assert result.missing_keys and all(k.startswith('flowUpsamplerNet.') for k in result.missing_keys)
    assert torch.equal(net.RRDB.conv_first.weight, source.RRDB.conv_first.weight)
    assert not any(m.initialized for m in net.modules() if isinstance(m, ActNorm))  # flow ActNorms not loaded
    with pytest.raises(CheckpointMismatchError, match='no SRFlow weights'):
        load_checked(net, {'params': source.state_dict()})


def test_matching_checkpoint_is_described_as_fitting(reference_dir, golden_weights):
    state = meta_state_dict(key_list(reference_dir, golden_weights, 'CelebA 8X'))
    assert describe_checkpoint_mismatch(meta_net('CelebA 8X'), state) is None
    arch = read_srflow_architecture(state)
    assert (arch['scale'], arch['nb'], arch['K'], arch['L'], arch['splits']) == (8, 8, 16, 4, 2)
    wrapped = {'params': state}
    assert 'params' in describe_checkpoint_mismatch(meta_net('CelebA 8X'), wrapped)


def test_every_trainable_tensor_gets_a_gradient_and_checkpoint_only_ones_are_frozen():
    # DDP (find_unused_parameters=False) needs a gradient for every tensor that requires one.
    net = SRFlowNet(nf=8, nb=2, gc=4, K=1, hidden_channels=8, stacked_blocks=[0, 1])
    lq, gt = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 16, 16)
    net.nll(lq, gt, dequantize=True).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    frozen = sorted({n.rsplit('.', 1)[0] for n, p in net.named_parameters() if not p.requires_grad})
    assert missing == []
    assert frozen == ['RRDB.HRconv', 'RRDB.conv_last', 'RRDB.upconv2', 'flowUpsamplerNet.f.0']
