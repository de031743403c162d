"""HCFlowNet: checkpoint format, golden vectors of the release, flow invariants, caching, training.

The flow protocol's contract (round trips, conditioning, sampling, likelihood, out_size, tiling
hooks, ActNorm initialisation) is tested for every flow in test_flow_contract.py.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import load_golden, meta_module, meta_state_dict, random_lr_hr, rel_err, tiny_module

from flowprior_plugin.archs.hcflow_arch import (
    HCFlowCondition,
    HCFlowNet,
    official_hcflow_options,
    quantize_straight_through,
    read_hcflow_architecture,
)
from flowprior_plugin.checkpoints import describe_checkpoint_mismatch, load_checked
from flowprior_plugin.errors import CheckpointMismatchError
from flowprior_plugin.layers.flow_layers import gaussian_log_prob

KEY_FILES = {'DF2K 4X': 'hcflow_SR_DF2K_4X_keys.txt', 'CelebA 8X': 'hcflow_SR_CelebA_8X_keys.txt'}
GOLDEN = {'DF2K 4X': 'hcflow_SR_DF2K_4X_seed0.pt', 'CelebA 8X': 'hcflow_SR_CelebA_8X_seed0.pt'}
TINY = dict(nf=8, nb=1, gc=4, K=3, n_additional_steps=2, hidden_channels=8)


def tiny_net(scale: int = 4, randomize: bool = True, seed: int = 0, **overrides) -> HCFlowNet:
    return tiny_module(HCFlowNet, {'scale': scale, **TINY, **overrides}, randomize, seed)


def meta_net(config: str) -> HCFlowNet:
    """Official architecture without allocating or initialising its parameters."""
    return meta_module(HCFlowNet, official_hcflow_options(config))


def key_list(reference_dir, golden_weights, config: str) -> list[tuple[str, tuple[int, ...]]]:
    return golden_weights.read_keys(reference_dir / KEY_FILES[config])


def lr_hr(net: HCFlowNet, h: int = 3, w: int = 5, batch: int = 2, dtype=torch.float32, seed: int = 1):
    return random_lr_hr(net.scale, h, w, batch, dtype, seed)


def quantized_8bit(y: torch.Tensor) -> torch.Tensor:
    """q(y) of HCFLOW.md's LR term, written from the formula: round(clamp(y, 0, 1) * 255) / 255."""
    return torch.round(torch.clamp(y, 0, 1) * 255) / 255


def lr_term(lq: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """HCFLOW.md's LR term log N(lq; q(y), sigma^2) with log sigma = -6, summed per image."""
    sigma = math.exp(-6.0)
    density = -0.5 * ((lq - quantized_8bit(y)) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    return density.flatten(1).sum(1)


# ---------------------------------------------------------------- checkpoint format


@pytest.mark.parametrize('config', list(KEY_FILES))
def test_state_dict_matches_official_key_list(reference_dir, golden_weights, config):
    expected = key_list(reference_dir, golden_weights, config)
    header = (reference_dir / KEY_FILES[config]).read_text()
    totals = re.search(r'num tensors (\d+), params (\d+)', header)
    ours = [(k, tuple(v.shape)) for k, v in meta_net(config).state_dict().items()]

    assert ours == expected  # same keys, same shapes, same order
    assert len(ours) == int(totals.group(1))
    assert sum(math.prod(shape) for _, shape in ours) == int(totals.group(2))
    if config == 'DF2K 4X':
        assert int(totals.group(2)) == 23_232_539


def test_latent_channels_shapes_and_protocol():
    assert meta_net('DF2K 4X').latent_channels() == [6, 21]
    assert meta_net('CelebA 8X').latent_channels() == [6, 12, 45]
    net = tiny_net(randomize=False)
    assert ARCH_REGISTRY.get('HCFlowNet') is HCFlowNet
    assert net.scale == 4 and net.lr_multiple == 1  # any LR size: no odd-size padding needed
    assert net.dequantization_offset == 0 and net.quant == 64  # noise U(0, 1) / quant, not centred
    assert net.latent_shapes((2, 3, 5, 7)) == [(2, 6, 10, 14), (2, 21, 5, 7)]
    assert tiny_net(scale=8, randomize=False).latent_shapes((1, 3, 3, 2)) == [
        (1, 6, 12, 8),
        (1, 12, 6, 4),
        (1, 45, 3, 2),
    ]


def test_built_from_yml_options():
    net = build_network({'type': 'HCFlowNet', 'scale': 8, **TINY, 'quant': 32, 'lr_noise_logstd': -2.0})
    assert isinstance(net, HCFlowNet) and net.scale == 8 and net.quant == 32 and net.lr_noise_logstd == -2.0


def test_bad_options_are_named():
    with pytest.raises(ValueError, match='power of 2'):
        HCFlowNet(scale=3, **TINY)
    with pytest.raises(ValueError, match='n_additional_steps must be between 0 and K'):
        HCFlowNet(**{**TINY, 'n_additional_steps': 4})


# ---------------------------------------------------------------- golden vectors of the release


@pytest.fixture(scope='module', params=list(GOLDEN))
def golden_case(request, reference_dir, golden_weights):
    """(the official net in float64 with the golden weights of seed 0, the golden file), per config."""
    config = request.param
    state = golden_weights.golden_state_dict(reference_dir / KEY_FILES[config], dtype=torch.float64)
    net = HCFlowNet(**official_hcflow_options(config)).double().eval()
    net.load_state_dict(state, strict=True)
    return net, load_golden(reference_dir, GOLDEN[config])


def test_golden_vectors_of_the_release(golden_case):
    net, golden = golden_case
    hr, lq = golden['hr'], golden['lr']
    # The golden decode starts from the flow's own LR, so encode conditioned on the given LR and
    # the release's encode from the HR alone (conditioned on its own LR) coincide here.
    assert torch.equal(lq, golden['encoded_lr'])
    with torch.no_grad():
        released, own_lr = net.encode_hr(hr)
        cond = net.condition(lq)
        latents, encoded_lr = net.encode_with_lr(lq, hr, cond=cond)
        sr = net.decode(lq, golden['decode_latents'], cond=cond)

    assert rel_err(own_lr, golden['encoded_lr']) < 1e-9
    assert rel_err(encoded_lr, golden['encoded_lr']) < 1e-9
    assert [z.shape for z in latents] == [z.shape for z in golden['latents']]
    for ours, theirs, ref in zip(latents, released, golden['latents']):
        assert rel_err(ours, ref) < 1e-9
        assert rel_err(theirs, ref) < 1e-9
    assert rel_err(sr, golden['sr_unclamped']) < 1e-9


def test_golden_nll_of_the_release(golden_case):
    net, golden = golden_case
    lq, expected = golden['nll_lr'], golden['nll_bits_per_pixel_no_dequantisation']
    assert lq.dtype == torch.float64 and torch.equal(lq * 255, (lq * 255).round())  # an 8-bit LR
    with torch.no_grad():
        nll = net.nll(lq, golden['hr'])
    assert nll.shape == expected.shape
    assert rel_err(nll, expected) < 1e-9, (nll.item(), expected.item())


# ---------------------------------------------------------------- flow invariants


@pytest.mark.parametrize('scale', [4, 8])
def test_round_trips_with_every_parameter_randomised(scale):
    net = tiny_net(scale=scale).double()
    all_zero = [name for name, p in net.named_parameters() if not p.detach().abs().gt(0).any()]
    assert not all_zero, f'parameters left at zero: {all_zero}'
    lq, gt = lr_hr(net, h=2, w=3, dtype=torch.float64)
    with torch.no_grad():
        # Exact: encode -> decode with the flow's own LR (the release's encode from the HR alone).
        latents, own_lr = net.encode_hr(gt)
        assert [tuple(z.shape) for z in latents] == net.latent_shapes(lq.shape)
        assert (net.decode(own_lr, latents) - gt).abs().max().item() < 1e-10
        assert all(torch.equal(a, b) for a, b in zip(net.encode(own_lr, gt), latents))

        # Not exact: encode -> decode with the real LR. Its conditional part is inverted exactly,
        # but the reverse pass starts from the real LR instead of the flow's own.
        real = net.decode(lq, net.encode(lq, gt))
        assert (real - gt).abs().max().item() > 1e-3

        # Exact: decode -> encode with the real LR (the forward pass gives back that LR as y).
        eps = net.sample_latents(lq, 0.8, torch.Generator().manual_seed(4))
        back, y = net.encode_with_lr(lq, net.decode(lq, eps))
        assert (y - lq).abs().max().item() < 1e-10
        assert all((a - b).abs().max().item() < 1e-9 for a, b in zip(back, eps))


def test_log_determinant_matches_brute_force_jacobian():
    net = tiny_net(scale=4, nf=4, gc=4, K=2, n_additional_steps=1, hidden_channels=4).double()
    lq, gt = lr_hr(net, h=2, w=2, batch=1, dtype=torch.float64)

    def flat_outputs(x):  # x -> (the flow's own LR y, eps_0, eps_1), every level conditioned on y
        latents, y = net.encode_hr(x.view_as(gt))
        return torch.cat([y.flatten(), *[z.flatten() for z in latents]])

    jac = torch.autograd.functional.jacobian(flat_outputs, gt.flatten(), vectorize=True)  # ~10x faster
    assert jac.shape == (gt.numel(), gt.numel())
    brute = torch.linalg.slogdet(jac)[1]

    # nll * ln2 * HW = -(log|det J| + sum_l log N(eps_l; 0, I) + log N(lq; q(y), e^-6 std)): the
    # standardised latents are standard normal under the model, so the implied log-det follows.
    # The quantiser q enters only the LR term's value, not the bijection, so J is smooth.
    with torch.no_grad():
        num_pixels = gt.shape[2] * gt.shape[3]
        nll = net.nll(lq, gt)
        latents, y = net.encode_hr(gt)
        log_prior = sum(gaussian_log_prob(z) for z in latents) + lr_term(lq, y)
        implied = -nll * math.log(2) * num_pixels - log_prior
    assert torch.allclose(implied, brute, rtol=1e-9, atol=1e-9)


def test_nll_depends_on_the_lr_only_through_its_quantised_lr_term():
    # Every level is conditioned on the flow's own LR, so two LRs change the NLL by the LR terms
    # alone: log N(lq; q(y), e^-6 std), an 8-bit q(y). lq_b differs from lq_a by 1/255 in places.
    net = tiny_net().double()
    lq_a, gt = lr_hr(net, dtype=torch.float64)
    lq_a = quantized_8bit(lq_a)
    step = torch.randint(-1, 2, lq_a.shape, generator=torch.Generator().manual_seed(2)).double()
    lq_b = lq_a + step / 255
    with torch.no_grad():
        _, y = net.encode_hr(gt)
        change = net.nll(lq_b, gt) - net.nll(lq_a, gt)
    expected = -(lr_term(lq_b, y) - lr_term(lq_a, y)) / (math.log(2) * gt.shape[2] * gt.shape[3])
    assert expected.abs().min() > 1.0  # the LR term is strong: 1/255 off costs bits per pixel
    assert torch.allclose(change, expected, rtol=1e-9, atol=1e-9), (change, expected)


def test_quantiser_is_8bit_forward_and_identity_backward():
    y = torch.tensor([-0.3, 0.0, 0.2, 0.50197, 0.9999, 1.7], dtype=torch.float64, requires_grad=True)
    q = quantize_straight_through(y)
    assert torch.allclose(q, quantized_8bit(y.detach()), rtol=0, atol=1e-15)
    weights = torch.arange(1.0, 7.0, dtype=torch.float64)
    (q * weights).sum().backward()
    assert torch.equal(y.grad, weights)  # straight through the rounding and the clamp


def test_lr_term_gradient_goes_straight_through_the_quantiser():
    # d nll / d gt for two LRs differs by the LR term's gradient alone, carried back through y as
    # if q(y) were y: J_y^T (-(lq_a - lq_b) / sigma^2) / (ln2 H W). A rounding without the
    # straight-through gradient would give no difference at all.
    net = tiny_net().double()
    lq_a, gt = lr_hr(net, dtype=torch.float64)
    lq_b = torch.rand(lq_a.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def grad_gt(lq):
        x = gt.clone().requires_grad_()
        net.nll(lq, x).sum().backward()
        return x.grad

    difference = grad_gt(lq_a) - grad_gt(lq_b)
    x = gt.clone().requires_grad_()
    y = net.encode_hr(x)[1]
    seed = -(lq_a - lq_b) * math.exp(12.0) / (math.log(2) * gt.shape[2] * gt.shape[3])
    (expected,) = torch.autograd.grad(y, x, grad_outputs=seed)
    assert expected.abs().max() > 1.0
    assert rel_err(difference, expected) < 1e-9


def test_cached_condition_equals_uncached_and_plain_computation():
    net = tiny_net(scale=8).double()
    lq, gt = lr_hr(net, h=2, w=3, dtype=torch.float64)
    coarsest_trunk = net.flow.level2_condFlow.RRDB_trunk0
    finer_trunk = net.flow.level0_condFlow.RRDB_trunk0
    calls = []
    coarsest_trunk.register_forward_hook(lambda m, i, o: calls.append('coarsest'))
    finer_trunk.register_forward_hook(lambda m, i, o: calls.append('finer'))
    with torch.no_grad():
        cond = net.condition(lq)
        assert isinstance(cond, HCFlowCondition) and sorted(cond.first_terms) == [0, 1]
        assert calls == ['coarsest']
        calls.clear()
        latents = net.encode(lq, gt, cond=cond)
        sr = net.decode(lq, latents, cond=cond)
        # With a cached condition the coarsest condition network never runs again; the finer
        # ones depend on kept channels (HR in encode, reverse pass in decode) and always run.
        assert calls == ['finer', 'finer']

        for cached, fresh in zip(latents, net.encode(lq, gt)):
            assert torch.equal(cached, fresh)
        assert torch.equal(sr, net.decode(lq, latents))
        assert torch.equal(net.nll(lq, gt, cond=cond), net.nll(lq, gt))
        # The likelihood conditions on the flow's own LR: one coarsest condition (on y), never on lq.
        calls.clear()
        net.nll(lq, gt)
        assert calls == ['coarsest', 'finer']
        # The factorised convolutions equal the release's plain concatenated ones.
        for ours, plain in zip(latents, net.plain_encode(lq, gt)):
            assert torch.allclose(ours, plain, rtol=1e-10, atol=1e-12)
        assert torch.allclose(sr, net.plain_decode(lq, latents), atol=1e-12)


# ---------------------------------------------------------------- ActNorm initialisation, training


def test_every_trainable_tensor_gets_a_gradient_and_checkpoint_only_ones_are_frozen():
    # DDP (find_unused_parameters=False) needs a gradient for every tensor that requires one.
    net = tiny_net(scale=8, randomize=False)
    lq, gt = torch.rand(1, 3, 2, 2), torch.rand(1, 3, 16, 16)
    net.nll(lq, gt, dequantize=True).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert missing == []
    assert frozen == []  # HCFlow has no checkpoint-only tensor: every one takes part in the NLL


def test_tiny_config_trains_with_decreasing_nll():
    net = tiny_net(randomize=False)
    lq, gt = lr_hr(net, h=4, w=4, batch=4, seed=3)
    lq = F.interpolate(gt, scale_factor=0.25, mode='area')  # an LR the flow can learn to match
    net.initialize_from_batch(lq, gt)
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = net(lq, gt, dequantize=True).mean()  # through forward, as DDP would
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = net.nll(lq, gt, dequantize=True).mean().item()
    assert all(math.isfinite(v) for v in losses)
    assert final < losses[0] - 0.5, losses + [final]
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 6, losses


# ---------------------------------------------------------------- errors with a clear message


def test_wrong_gt_and_latents_raise_clear_messages():
    net = tiny_net(randomize=False)
    lq = torch.rand(1, 3, 4, 6)
    with pytest.raises(ValueError, match=r'exactly 4x the LR.*\(1, 3, 16, 24\).*\(1, 3, 16, 20\)'):
        net.encode(lq, torch.rand(1, 3, 16, 20))
    with pytest.raises(ValueError, match='expects latents of shapes'):
        net.decode(lq, net.sample_latents(torch.rand(1, 3, 4, 8), 0.0))
    with pytest.raises(ValueError, match=r'expects an LR of shape \(B, 3, h, w\)'):
        net.condition(torch.rand(1, 1, 4, 6))
    with pytest.raises(ValueError, match='multiples of 4'):
        net.encode_hr(torch.rand(1, 3, 16, 18))


@pytest.mark.parametrize(
    ('checkpoint', 'options'),
    [('CelebA 8X', 'DF2K 4X'), ('DF2K 4X', 'CelebA 8X')],
)
def test_loading_another_config_names_both(reference_dir, golden_weights, checkpoint, options):
    state = meta_state_dict(key_list(reference_dir, golden_weights, checkpoint))
    net = meta_net(options)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checked(net, state)
    message = str(info.value)
    ours_scale, theirs_scale = options.split()[1], checkpoint.split()[1]
    assert f'checkpoint holds HCFlow {theirs_scale}' in message, message
    assert f'the official {checkpoint} config' in message and f'the official {options} config' in message, message
    assert f'options build HCFlow {ours_scale}' in message, message
    assert 'nb=5' in message and 'nb=7' in message, message


def test_other_checkpoints_and_partial_loads(reference_dir, golden_weights):
    net = tiny_net(randomize=False)
    srflow = meta_state_dict(golden_weights.read_keys(reference_dir / 'srflow_DF2K_4X_keys.txt'))
    with pytest.raises(CheckpointMismatchError, match='SRFlow checkpoint'):
        load_checked(meta_net('DF2K 4X'), srflow)
    with pytest.raises(CheckpointMismatchError, match=r"pass state_dict\['params'\]"):
        load_checked(net, {'params': net.state_dict()})

    source = tiny_net(seed=3)
    main_only = {k: v for k, v in source.state_dict().items() if k.startswith('flow.layers.')}
    result = load_checked(net, main_only, strict=False)  # a deliberate partial load goes to torch
    assert result.missing_keys and all('_condFlow.' in k for k in result.missing_keys)
    assert torch.equal(net.flow.layers[1].permute.weight, source.flow.layers[1].permute.weight)


def test_matching_checkpoint_is_described_as_fitting(reference_dir, golden_weights):
    state = meta_state_dict(key_list(reference_dir, golden_weights, 'CelebA 8X'))
    assert describe_checkpoint_mismatch(meta_net('CelebA 8X'), state) is None
    arch = read_hcflow_architecture(state)
    assert arch == dict(scale=8, nb=5, K=26, n_additional_steps=13, nf=64, gc=32, in_nc=3, hidden_channels=64), arch
    assert read_hcflow_architecture(meta_net('DF2K 4X').state_dict())['nb'] == 7
