"""The flow protocol's contract (flowprior_plugin.flow_protocol), tested once for every flow.

Every test runs on every case of :data:`FLOWS`; a new family gets the whole contract by adding
one line there. What is specific to a family (golden vectors, key lists, its own equivalences)
stays in that family's test file.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import TINY_HCFLOW, TINY_LINF, TINY_SRFLOW, tiny_module

from flowprior_plugin.archs.base_flow_net import ActNormFlowNet
from flowprior_plugin.flow_protocol import (
    FORWARD_ARGUMENTS,
    PROTOCOL_ATTRIBUTES,
    PROTOCOL_METHODS,
    TILING_HOOKS,
    FlowSRProtocol,
    HRWindow,
    check_flow_protocol,
    supports_tiling,
)
from flowprior_plugin.layers.flow_layers import ActNorm, standardize_per_pixel
from flowprior_plugin.tiling import TileInputs, slice_latents


@dataclass(frozen=True)
class FlowCase:
    """A tiny flow and an LR it takes.

    Attributes:
        options: ``build_network`` options of the flow.
        lr_size: (h, w) of an LR the flow takes (sides multiples of its ``lr_multiple``; for
            patch flows, an HR of whole patches, so decode -> encode gives every latent back).
        reconstructs_hr: Whether ``decode(lq, encode(lq, gt))`` gives ``gt`` back for any LR.
            HCFlow's does only for the LR it computes itself (its reverse pass starts from ``lq``).
    """

    options: dict
    lr_size: tuple[int, int]
    reconstructs_hr: bool = True

    def build(self, randomize: bool = True, seed: int = 0) -> torch.nn.Module:
        """The flow, built under ``seed``, in eval mode; with ``randomize`` every parameter is random
        (no coupling is the identity, ActNorms count as initialised)."""
        options = dict(self.options)
        net = tiny_module(ARCH_REGISTRY.get(options.pop('type')), options, randomize, seed)
        if randomize:  # what randomize_parameters_ leaves at zero (LINF's flow biases) takes part too
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in net.parameters():
                    if not p.any():
                        p.copy_(torch.randn(p.shape, generator=g) * 0.01)
        return net


FLOWS = {
    'SRFlow-4X': FlowCase(dict(TINY_SRFLOW, scale=4), (4, 6)),
    'SRFlow-8X': FlowCase(dict(TINY_SRFLOW, scale=8, L=4), (4, 6)),
    'HCFlow-4X': FlowCase(dict(TINY_HCFLOW, scale=4), (3, 5), reconstructs_hr=False),
    'HCFlow-8X': FlowCase(dict(TINY_HCFLOW, scale=8), (2, 3), reconstructs_hr=False),
    'LINF-pixel': FlowCase(dict(TINY_LINF, patch_size=1), (6, 9)),
    'LINF-3x3-patch': FlowCase(dict(TINY_LINF, patch_size=3), (6, 9)),
}
ACTNORM_FLOWS = {
    name: case for name, case in FLOWS.items() if issubclass(ARCH_REGISTRY.get(case.options['type']), ActNormFlowNet)
}
RECONSTRUCTING_FLOWS = {name: case for name, case in FLOWS.items() if case.reconstructs_hr}


@pytest.fixture(params=list(FLOWS))
def case(request) -> FlowCase:
    return FLOWS[request.param]


def lr_hr(net, case: FlowCase, batch: int = 2, dtype=torch.float64, seed: int = 1, lr_scale: int = 1):
    """A random LR of ``case.lr_size`` (times ``lr_scale``) and an HR ``net.scale`` times its size."""
    g = torch.Generator().manual_seed(seed)
    h, w = (side * lr_scale for side in case.lr_size)
    lq = torch.rand(batch, 3, h, w, generator=g, dtype=dtype)
    gt = torch.rand(batch, 3, h * net.scale, w * net.scale, generator=g, dtype=dtype)
    return lq, gt


def shapes(latents) -> list[tuple[int, ...]]:
    return [tuple(z.shape) for z in latents]


def assert_same(a, b) -> None:
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- the interface


def test_implements_the_protocol(case):
    net = case.build(randomize=False)
    check_flow_protocol(net, 'network_g')  # the optional hooks too: tiling, checkpoint_format
    assert isinstance(net, FlowSRProtocol)
    assert all(callable(getattr(net, name)) for name in PROTOCOL_METHODS)
    assert isinstance(net.scale, int) and isinstance(net.lr_multiple, int) and isinstance(net.arbitrary_scale, bool)
    channels = net.latent_channels()
    assert channels and all(isinstance(c, int) and c > 0 for c in channels)
    assert all(side % net.lr_multiple == 0 for side in case.lr_size)


# ---------------------------------------------------------------- encode, decode, conditioning


def test_encode_inverts_decode(case):
    # The direction every flow inverts exactly: latents -> SR -> the same latents.
    net = case.build().double()
    lq, _ = lr_hr(net, case)
    with torch.no_grad():
        cond = net.condition(lq)
        latents = net.sample_latents(lq, 0.8, torch.Generator().manual_seed(4), cond=cond)
        sr = net.decode(lq, latents, cond=cond)
        back = net.encode(lq, sr, cond=cond)
        assert_same(back, net.encode(lq, sr, cond=cond))  # deterministic: no dequantisation noise
    assert tuple(sr.shape) == (2, 3, lq.shape[2] * net.scale, lq.shape[3] * net.scale)
    assert shapes(back) == shapes(latents)
    assert [z.shape[1] for z in back] == net.latent_channels()
    assert all((a - b).abs().max().item() < 1e-8 for a, b in zip(back, latents, strict=True))


@pytest.mark.parametrize('name', list(RECONSTRUCTING_FLOWS))
def test_decode_inverts_encode_with_every_parameter_randomised(name):
    case = RECONSTRUCTING_FLOWS[name]
    net = case.build()
    all_zero = [key for key, p in net.named_parameters() if not p.detach().abs().gt(0).any()]
    assert not all_zero, f'parameters left at zero: {all_zero}'
    lq, gt = lr_hr(net, case, dtype=torch.float32)
    with torch.no_grad():
        cond = net.condition(lq)
        latents = net.encode(lq, gt, cond=cond)
        rec = net.decode(lq, latents, cond=cond)
    assert shapes(latents) == shapes(net.sample_latents(lq, 0.0))
    assert (rec - gt).abs().max().item() < 1e-4


def test_decode_changes_nothing_and_is_differentiable(case):
    net = case.build(randomize=False).train()  # fresh: a data-dependent init has not run, training mode
    untouched = copy.deepcopy(net)
    lq, gt = lr_hr(net, case, dtype=torch.float32)
    lq_before = lq.clone()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    latents = [z.requires_grad_() for z in net.sample_latents(lq, 0.8, torch.Generator().manual_seed(3))]
    snapshot = [z.detach().clone() for z in latents]
    listed = list(latents)

    sr = net.decode(lq, latents)
    sr.square().sum().backward()

    assert latents == listed and all(a is b for a, b in zip(latents, listed, strict=True))
    assert all(torch.equal(z.detach(), s) for z, s in zip(latents, snapshot, strict=True))
    assert torch.equal(lq, lq_before)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in latents)
    # decode ran no data-dependent initialisation either: the first batch still finds it to do.
    assert net.initialize_from_batch(lq, gt) == untouched.initialize_from_batch(lq, gt)


def test_cond_reuse_equals_recomputation(case):
    net = case.build().double()
    lq, gt = lr_hr(net, case)
    g = torch.Generator
    with torch.no_grad():
        cond = net.condition(lq)
        latents = net.encode(lq, gt, cond=cond)
        assert_same(latents, net.encode(lq, gt))
        assert torch.equal(net.decode(lq, latents, cond=cond), net.decode(lq, latents))
        assert torch.equal(net.nll(lq, gt, cond=cond), net.nll(lq, gt))
        assert_same(net.initial_prior(lq, cond=cond), net.initial_prior(lq))
        drawn = net.sample_latents(lq, 0.5, g().manual_seed(2), cond=cond)
        assert_same(drawn, net.sample_latents(lq, 0.5, g().manual_seed(2)))


def test_a_cond_of_another_lr_or_type_is_rejected(case):
    net = case.build(randomize=False)
    lq, gt = lr_hr(net, case, dtype=torch.float32)
    cond = net.condition(lq[:1])
    latents = net.sample_latents(lq, 0.0)
    calls = {
        'encode': lambda c: net.encode(lq, gt, cond=c),
        'decode': lambda c: net.decode(lq, latents, cond=c),
        'nll': lambda c: net.nll(lq, gt, cond=c),
        'initial_prior': lambda c: net.initial_prior(lq, cond=c),
        'sample_latents': lambda c: net.sample_latents(lq, 0.5, cond=c),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match='conditioning was computed for an LR of shape'):
            call(cond)
        with pytest.raises(TypeError, match=type(cond).__name__):
            call(object())


# ---------------------------------------------------------------- sampling, likelihood, forward


def test_sample_latents_shapes_zeros_and_generator(case):
    net = case.build(randomize=False)
    lq, _ = lr_hr(net, case)
    zeros = net.sample_latents(lq, 0.0)
    assert [z.shape[0] for z in zeros] == [2] * len(zeros)
    assert [z.shape[1] for z in zeros] == net.latent_channels()
    assert all(z.dtype == torch.float64 and not z.any() for z in zeros)
    a = net.sample_latents(lq, 0.7, torch.Generator().manual_seed(5))
    b = net.sample_latents(lq, 0.7, torch.Generator().manual_seed(5))
    c = net.sample_latents(lq, 0.7, torch.Generator().manual_seed(6))
    assert shapes(a) == shapes(zeros) and all(z.dtype == torch.float64 for z in a)
    assert_same(a, b)
    assert not any(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    big = torch.cat([z.flatten() for z in net.sample_latents(lq.repeat(4, 1, 4, 4), 0.7)])
    # The std of n Gaussian draws has a relative standard error of 1 / sqrt(2 (n - 1)): 6 of them.
    assert abs(big.std().item() / 0.7 - 1) < 6 / math.sqrt(2 * (big.numel() - 1))


def test_nll_shape_and_dequantisation(case):
    net = case.build()
    lq, gt = lr_hr(net, case, dtype=torch.float32)
    with torch.no_grad():
        bits = net.nll(lq, gt)
        noisy = net.nll(lq, gt, dequantize=True, generator=torch.Generator().manual_seed(7))
        again = net.nll(lq, gt, dequantize=True, generator=torch.Generator().manual_seed(7))
    assert bits.shape == (2,) and bits.dtype == torch.float32 and torch.isfinite(bits).all()
    assert noisy.shape == (2,) and torch.isfinite(noisy).all()
    assert torch.equal(noisy, again)


def test_forward_is_nll_with_gt_and_decode_without(case):
    # Likelihood training calls forward (DDP synchronises gradients only through it).
    net = case.build().double()
    lq, gt = lr_hr(net, case)
    latents = net.sample_latents(lq, 0.6, torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(net(lq, gt), net.nll(lq, gt))
        torch.manual_seed(3)
        through_forward = net(lq, gt, dequantize=True)
        torch.manual_seed(3)
        assert torch.equal(through_forward, net.nll(lq, gt, dequantize=True))
        assert torch.equal(net(lq, latents=latents), net.decode(lq, latents))
        assert torch.equal(net(lq), net.decode(lq, net.sample_latents(lq, 0.0)))  # temperature 0
        size = (lq.shape[2] * net.scale, lq.shape[3] * net.scale)
        assert torch.equal(net(lq, latents=latents, out_size=size), net.decode(lq, latents, out_size=size))


def test_every_trainable_tensor_gets_a_gradient_through_forward(case):
    # DDP (find_unused_parameters=False) needs a gradient for every tensor that requires one.
    net = case.build(randomize=False).train()
    lq, gt = lr_hr(net, case, batch=1, dtype=torch.float32)
    net.initialize_from_batch(lq, gt)
    net(lq, gt, dequantize=True).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_initial_prior_shapes(case):
    net = case.build()
    lq, _ = lr_hr(net, case)
    net = net.double()
    with torch.no_grad():
        z0 = net.initial_prior(lq)
        size = (lq.shape[2] * net.scale, lq.shape[3] * net.scale)
        assert_same(z0, net.initial_prior(lq, out_size=size))
    assert shapes(z0) == shapes(net.sample_latents(lq, 0.0))
    assert all(torch.isfinite(z).all() for z in z0)


# ---------------------------------------------------------------- initialisation from a first batch


def test_initialize_from_batch_runs_at_most_once_and_keeps_the_mode(case):
    lq, gt = lr_hr(case.build(randomize=False), case, dtype=torch.float32)
    for training in (False, True):
        net = case.build(randomize=False).train(training)
        assert isinstance(net.initialize_from_batch(lq, gt), bool)
        assert net.training is training
        assert net.initialize_from_batch(lq, gt) is False
        with torch.no_grad():
            assert torch.isfinite(net.nll(lq, gt)).all()


def test_initialize_from_batch_never_overwrites_loaded_weights(case):
    state = {k: v.clone() for k, v in case.build(seed=2).state_dict().items()}
    net = case.build(randomize=False)
    net.load_state_dict(state)
    lq, gt = lr_hr(net, case, dtype=torch.float32)
    assert net.initialize_from_batch(lq, gt) is False
    net.train()
    net(lq, gt, dequantize=True).mean().backward()  # a training step's forward and backward
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


# ---------------------------------------------------------------- out_size


def test_out_size_of_the_default_scale_and_a_whole_window(case):
    # Every flow takes out_size = lq * scale, as (H, W) or as a window covering the whole image.
    net = case.build().double()
    lq, gt = lr_hr(net, case)
    size = tuple(gt.shape[-2:])
    whole = HRWindow(size, torch.tensor([size] * 2), torch.zeros(2, 2, dtype=torch.long))
    with torch.no_grad():
        latents = net.sample_latents(lq, 0.0, out_size=size)
        assert tuple(net.decode(lq, latents, out_size=size).shape) == tuple(gt.shape)
        assert torch.equal(net.nll(lq, gt, out_size=whole), net.nll(lq, gt))
        assert_same(net.encode(lq, gt, out_size=whole), net.encode(lq, gt))


def test_out_size_rules(case):
    # Fixed-scale flows refuse any other size; arbitrary-scale flows take it everywhere.
    net = case.build().double()
    lq, gt = lr_hr(net, case)
    h, w = gt.shape[-2:]
    others = [(h - net.scale, w), (h + 1, w - 1), (max(1, h // 2 + 1), w + 5)]
    with torch.no_grad():
        latents = net.sample_latents(lq, 0.0)
        if not net.arbitrary_scale:
            for other in others:
                for call in (
                    lambda size: net.sample_latents(lq, 0.5, out_size=size),
                    lambda size: net.decode(lq, latents, out_size=size),
                    lambda size: net.initial_prior(lq, out_size=size),
                ):
                    with pytest.raises(ValueError, match='fixed-scale flow'):
                        call(other)
                with pytest.raises(ValueError, match=f'{net.scale}x the LR'):
                    net.encode(lq, F.interpolate(gt, size=other))
            return
        cond = net.condition(lq)
        for other in others:
            z = net.sample_latents(lq, 0.7, torch.Generator().manual_seed(1), cond=cond, out_size=other)
            z0 = net.initial_prior(lq, cond=cond, out_size=other)
            other_gt = F.interpolate(gt, size=other, mode='bilinear', align_corners=False)
            encoded = net.encode(lq, other_gt, cond=cond)
            assert shapes(z0) == shapes(z) == shapes(encoded)
            assert all(torch.isfinite(t).all() for t in z0)
            assert tuple(net.decode(lq, z, cond=cond, out_size=other).shape) == (2, 3, *other)
            assert net.nll(lq, other_gt, cond=cond).shape == (2,)


# ---------------------------------------------------------------- optional hooks: tiling


def test_tiling_hooks_are_consistent(case):
    net = case.build(randomize=False)
    assert supports_tiling(net)
    strides = net.latent_strides()
    assert len(strides) == len(net.latent_channels())
    align = net.tile_alignment()
    assert all(align % stride == 0 for stride in strides)
    if not net.arbitrary_scale:
        assert align % (net.scale * net.lr_multiple) == 0  # tile borders on whole LR pixels
    for lr_scale in (1, 2):  # the strides are those of every LR size
        lq, _ = lr_hr(net, case, lr_scale=lr_scale, dtype=torch.float32)
        hr = (lq.shape[2] * net.scale, lq.shape[3] * net.scale)
        expected = [(math.ceil(hr[0] / s), math.ceil(hr[1] / s)) for s in strides]
        assert [tuple(z.shape[-2:]) for z in net.sample_latents(lq, 0.0)] == expected

    # One tile on the alignment grid: its inputs decode exactly the box, from the whole image's
    # latents sliced by the strides.
    lq, _ = lr_hr(net, case, lr_scale=2, dtype=torch.float32)
    hr = (lq.shape[2] * net.scale, lq.shape[3] * net.scale)
    assert hr[1] >= 2 * align and hr[0] >= align
    box = (0, align, align, 2 * align)
    inputs = net.tile_inputs(lq, net.tile_context(lq, hr), box, hr)
    assert isinstance(inputs, TileInputs) and tuple(inputs.box) == box
    whole = net.sample_latents(lq, 0.7, torch.Generator().manual_seed(0))
    tile = slice_latents(whole, box, strides)
    assert shapes(tile) == shapes(net.sample_latents(inputs.lq, 0.0, out_size=inputs.out_size))
    with torch.no_grad():
        sr = net.decode(inputs.lq, tile, inputs.cond, inputs.out_size)
    assert tuple(sr.shape[-2:]) == (align, align)


# ---------------------------------------------------------------- shared by the ActNorm flows


@pytest.mark.parametrize('name', list(ACTNORM_FLOWS))
def test_actnorm_initial_prior_is_the_standardised_encoding_of_the_upsampled_lr(name):
    case = ACTNORM_FLOWS[name]
    net = case.build()
    lq, _ = lr_hr(net, case, dtype=torch.float32)
    with torch.no_grad():
        z0 = net.initial_prior(lq)
        up = F.interpolate(lq, scale_factor=net.scale, mode='bilinear', align_corners=False)
        raw = net.encode(lq, up)
    assert shapes(z0) == shapes(raw)
    for z in z0:
        assert z.mean(dim=1).abs().max() < 1e-5
        assert (z.std(dim=1, unbiased=True) - 1).abs().max() < 1e-4
    assert all(torch.allclose(a, standardize_per_pixel(b)) for a, b in zip(z0, raw, strict=True))


@pytest.mark.parametrize('name', list(ACTNORM_FLOWS))
def test_actnorm_dequantised_nll_is_the_noisy_nll_plus_log2_quant(name):
    case = ACTNORM_FLOWS[name]
    net = case.build().double()
    lq, gt = lr_hr(net, case)
    with torch.no_grad():
        nll = net.nll(lq, gt, dequantize=True, generator=torch.Generator().manual_seed(7))
        noise = torch.rand(gt.shape, generator=torch.Generator().manual_seed(7), dtype=gt.dtype)
        noisy = gt + (noise - net.dequantization_offset) / net.quant
        manual = net.nll(lq, noisy) + math.log2(net.quant)
    assert torch.allclose(nll, manual, rtol=1e-12)


@pytest.mark.parametrize('name', list(ACTNORM_FLOWS))
def test_actnorm_initialize_from_batch_initialises_every_actnorm_once(name):
    case = ACTNORM_FLOWS[name]
    net = case.build(randomize=False)
    lq, gt = lr_hr(net, case, dtype=torch.float32)
    norms = [m for m in net.modules() if isinstance(m, ActNorm)]
    assert norms and not any(m.initialized for m in norms)
    assert net.initialize_from_batch(lq, gt) is True
    assert all(m.initialized for m in norms) and all(m.logs.abs().sum() > 0 for m in norms)
    assert net.initialize_from_batch(lq, gt) is False


# ---------------------------------------------------------------- check_flow_protocol


class _Stub(torch.nn.Module):
    """Everything the protocol asks for, each piece removable or breakable by a test."""

    scale, lr_multiple, arbitrary_scale = 4, 1, False

    def forward(self, lq, gt=None, latents=None, dequantize=False, out_size=None):
        return lq


for _name in PROTOCOL_METHODS:
    if _name != 'forward':
        setattr(_Stub, _name, lambda self, *args, **kwargs: None)


def test_check_flow_protocol_accepts_a_minimal_flow():
    check_flow_protocol(_Stub())
    assert set(FORWARD_ARGUMENTS) == {'gt', 'latents', 'dequantize', 'out_size'}
    assert PROTOCOL_ATTRIBUTES == ('scale', 'lr_multiple', 'arbitrary_scale')


def test_check_flow_protocol_lists_every_problem_in_one_type_error():
    class Broken(torch.nn.Module):  # no forward: nn.Module's placeholder
        scale, lr_multiple, arbitrary_scale = 2.5, 0, 'yes'
        supports_tiling = True
        latent_strides = 4

    for name in PROTOCOL_METHODS[:-2]:  # all but initialize_from_batch and forward
        setattr(Broken, name, lambda self, *args, **kwargs: None)
    with pytest.raises(TypeError) as info:
        check_flow_protocol(Broken(), 'network_flow')
    message = str(info.value)
    assert '\n' not in message and message.startswith('network_flow: Broken is not a flow SR network')
    for words in (
        'lacks initialize_from_batch',
        'scale must be a positive int, got 2.5',
        'lr_multiple must be a positive int, got 0',
        "arbitrary_scale must be a bool, got 'yes'",
        'forward is not defined',
        'latent_strides must be a method',
        *(f'supports_tiling is True but {hook} is missing' for hook in TILING_HOOKS if hook != 'latent_strides'),
    ):
        assert words in message, (words, message)


def test_check_flow_protocol_reads_forward_and_optional_hooks():
    class OldForward(_Stub):
        def forward(self, lq, gt=None):
            return lq

    with pytest.raises(TypeError, match='forward takes no latents, dequantize, out_size argument'):
        check_flow_protocol(OldForward())

    class KeywordForward(_Stub):
        def forward(self, lq, **kwargs):
            return lq

    check_flow_protocol(KeywordForward())

    class TilingFlag(_Stub):
        supports_tiling = 'yes'

    with pytest.raises(TypeError, match="supports_tiling must be a bool, got 'yes'"):
        check_flow_protocol(TilingFlag())
    assert not supports_tiling(_Stub())

    class FormatByName(_Stub):
        checkpoint_format = 'SRFlow'

    with pytest.raises(TypeError, match='checkpoint_format must be a CheckpointFormat, got str'):
        check_flow_protocol(FormatByName())
