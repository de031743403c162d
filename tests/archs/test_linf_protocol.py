"""LINFNet through the flow protocol: what is LINF's own (latent geometry at any output size, the
initial prior, the dequantisation, training by the likelihood). The contract every flow keeps is
tested in test_flow_contract.py."""

from __future__ import annotations

import math

import pytest
import torch
from basicsr.archs import build_network
from conftest import TINY_LINF


def _linf(patch_size: int = 3):
    torch.manual_seed(0)
    return build_network(dict(TINY_LINF, patch_size=patch_size))


def _lr_hr(h: int = 6, w: int = 5, out: tuple[int, int] = (24, 20), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(2, 3, *out, generator=g)
    lq = torch.nn.functional.interpolate(gt, size=(h, w), mode='area')
    return lq, gt


def test_linf_protocol_attributes():
    net = _linf()
    assert net.arbitrary_scale is True and net.lr_multiple == 1 and net.scale == 4
    assert net.latent_channels() == [27]
    assert _linf(patch_size=1).latent_channels() == [3]
    lq, gt = _lr_hr()
    assert net.initialize_from_batch(lq, gt) is False


@pytest.mark.parametrize('patch_size', [1, 3])
@pytest.mark.parametrize('out_size', [None, (18, 15), (17, 23)])
def test_sample_latents_shapes(patch_size, out_size):
    net = _linf(patch_size)
    lq, _ = _lr_hr()
    expected = net.latent_shape(lq.shape, out_size)
    size = out_size or (24, 20)
    if patch_size == 3:
        assert expected == (2, 27, -(-size[0] // 3), -(-size[1] // 3))  # whole patches, padded as needed
    else:
        assert expected == (2, 3, *size)
    zeros = net.sample_latents(lq, 0.0, out_size=out_size)
    assert [tuple(z.shape) for z in zeros] == [expected] and torch.count_nonzero(zeros[0]) == 0
    g = torch.Generator().manual_seed(1)
    z = net.sample_latents(lq, 0.7, generator=g, cond=net.condition(lq), out_size=out_size)[0]
    # The std of n Gaussian draws has a relative standard error of 1 / sqrt(2 (n - 1)): 6 of them.
    assert tuple(z.shape) == expected and abs(float(z.std()) / 0.7 - 1) < 6 / math.sqrt(2 * (z.numel() - 1))


def test_initial_prior_is_the_encoding_of_the_lp_residual():
    # LINF-LP's recipe, written with F.interpolate as its data code does (bilinear, align_corners
    # False, no antialiasing): r = up(y) - up(down(up(y))) in [-1, 1], encoded with the flow
    # parameters of the real LR.
    net = _linf().double().eval()
    lq, _ = _lr_hr()
    lq = lq.double()

    def resize(x, size):
        return torch.nn.functional.interpolate(x, size=size, mode='bilinear', align_corners=False)

    with torch.no_grad():
        cond = net.condition(lq)
        up = resize(lq * 2 - 1, (24, 20))
        residual = net.to_patches(up - resize(resize(up, (6, 5)), (24, 20)))
        expected = net.log_prob_patches(residual, net.params_for(cond, (24, 20)))[1]
        assert torch.allclose(net.initial_prior(lq, cond=cond)[0], expected, atol=1e-10)
        # Not the antialiased bicubic "down" this package used before reading the release.
        bicubic = torch.nn.functional.interpolate(up, size=(6, 5), mode='bicubic', antialias=True)
        other = net.to_patches(up - resize(bicubic, (24, 20)))
        other = net.log_prob_patches(other, net.params_for(cond, (24, 20)))[1]
        assert not torch.allclose(other, expected, atol=1e-3)


def test_nll_bits_per_pixel_and_dequantisation():
    net = _linf()
    lq, gt = _lr_hr()
    bits = net.nll(lq, gt)
    assert bits.shape == (2,) and torch.isfinite(bits).all()
    log_p, _ = net.log_prob(lq, gt)
    # 24 rows: 8 whole patches; 20 columns: 7 patches, the last one padded by one column.
    assert log_p.shape == (2, 8, 7)
    assert torch.allclose(bits, -log_p.flatten(1).sum(1) / (math.log(2) * 24 * 20), rtol=1e-5)
    # LINF's release trains without dequantisation: by default likelihood training adds nothing.
    assert torch.equal(net.nll(lq, gt, dequantize=True), bits)
    # Opt-in uniform dequantisation: the discrete 8-bit term, 3 values per pixel of a 1/255 bin in [-1, 1].
    uniform = build_network(dict(TINY_LINF, dequantization='uniform'))
    uniform.load_state_dict(net.state_dict())
    g = torch.Generator().manual_seed(0)
    deq = uniform.nll(lq, gt, dequantize=True, generator=g)
    assert torch.allclose(deq - bits, torch.full_like(bits, 3 * math.log2(127.5)), atol=0.05)
    with pytest.raises(ValueError, match='dequantization must be one of none, uniform'):
        build_network(dict(TINY_LINF, dequantization='gaussian'))
    with pytest.raises(ValueError, match='HR batch'):
        net.nll(lq, gt[:, :2])


def test_nll_decreases_in_a_short_training_run():
    net = _linf()
    lq, gt = _lr_hr(out=(24, 24), h=6, w=6, seed=3)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = net(lq, gt, dequantize=True).mean()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses
