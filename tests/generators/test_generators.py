"""Latent generators: any input size, train and eval, gradients, registry and option errors."""

from __future__ import annotations

import socket

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY

from flowprior_plugin.errors import OptionError
from flowprior_plugin.generators import (
    GENERATOR_REGISTRY,
    build_generator,
    generator_default_out_channels,
    known_generators,
)

# Tiny configurations keep every case well under a second on two shared CPU cores.
TINY = {
    'UNet': {'type': 'UNet', 'depth': 2, 'width': 8},
    'EDSRBaseline': {'type': 'EDSRBaseline', 'num_blocks': 2, 'width': 8},
    'SwinT': {
        'type': 'SwinT',
        'embed_dim': 16,
        'depths': [2],  # two blocks: one unshifted, one shifted window
        'num_heads': [2],
        'window_size': 4,
        'head_channels': [8],
    },
}
SIZES = [(1, 1), (5, 7), (13, 9), (19, 26)]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registry_is_separate_from_basicsr_archs():
    assert known_generators() == ['EDSRBaseline', 'SwinT', 'UNet']
    assert GENERATOR_REGISTRY._name == 'latent_generator'
    assert 'SwinT' not in ARCH_REGISTRY  # short names stay out of BasicSR's global registry


@pytest.mark.parametrize('name', sorted(TINY))
@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
def test_any_size_train_and_eval(name, size):
    gen = build_generator(TINY[name], in_channels=5, out_channels=3)
    x = torch.randn(2, 5, *size, requires_grad=True)
    gen.train()
    y = gen(x)
    assert y.shape == (2, 3, *size)
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in gen.parameters()), 'every parameter takes part'
    gen.eval()
    with torch.no_grad():
        y = gen(x[:1])
    assert y.shape == (1, 3, *size) and torch.isfinite(y).all()


@pytest.mark.parametrize('size', [(1, 1), (5, 7), (8, 9)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_unet_batch_of_one_trains_where_the_deepest_map_is_one_pixel(size):
    gen = build_generator({'type': 'UNet', 'depth': 3, 'width': 8}, 4, 4).train()
    x = torch.randn(1, 4, *size, requires_grad=True)
    gen(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_unet_small_input_equals_padded_input_cropped():
    gen = build_generator(TINY['UNet'], 3, 3).eval()
    x = torch.randn(1, 3, 2, 3)
    padded = torch.nn.functional.pad(x, [0, 1, 0, 2], mode='replicate')  # up to 2**depth = 4
    with torch.no_grad():
        assert torch.allclose(gen(x), gen(padded)[..., :2, :3])


def test_unet_release_channel_plan():
    gen = build_generator({'type': 'UNet'}, 64, 64)
    downs = [(d.conv[0].in_channels, d.conv[3].out_channels) for d in gen.downs]
    ups = [(u.conv[0].in_channels, u.conv[0].out_channels, u.conv[3].out_channels) for u in gen.ups]
    assert downs == [(64, 128), (128, 256), (256, 256)]
    assert ups == [(512, 256, 128), (256, 128, 64), (128, 64, 64)]
    assert isinstance(gen.proj, torch.nn.Identity)
    assert n_params(gen) == 4317312


def test_default_out_channels():
    assert generator_default_out_channels({'type': 'UNet', 'width': 32}) == 32
    assert generator_default_out_channels({'type': 'EDSRBaseline'}) == 64
    assert generator_default_out_channels({'type': 'SwinT'}) == 48


def test_swin_builds_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError('SwinT tried to reach the network')

    monkeypatch.setattr(socket.socket, 'connect', no_network)
    monkeypatch.setattr(socket, 'create_connection', no_network)
    gen = build_generator({'type': 'SwinT'}, 192, 48)  # the authors' defaults
    assert isinstance(gen.embed, torch.nn.Identity)  # 96 + 96 encoder features need no embedding
    assert [len(s) for s in gen.stages] == [2, 2, 6, 2]
    assert [s[0].attn.num_heads for s in gen.stages] == [3, 6, 12, 24]
    shifts = [blk.shift_size for s in gen.stages for blk in s]
    assert shifts[:2] == [(0, 0), (3, 3)]
    assert n_params(gen) == 5385258
    tiny = build_generator(TINY['SwinT'], 3, 3).eval()
    with torch.no_grad():
        assert tiny(torch.randn(1, 3, 6, 5)).shape == (1, 3, 6, 5)


def test_edsr_layouts():
    assert n_params(build_generator({'type': 'EDSRBaseline'}, 128, 64)) == 1329344
    assert n_params(build_generator({'type': 'EDSRBaseline', 'plain': True}, 64, 64)) == 16 * 2 * (64 * 64 * 9 + 64)
    with pytest.raises(OptionError, match='plain'):
        build_generator({'type': 'EDSRBaseline', 'plain': True}, 128, 64)


def test_unknown_type_lists_known_names():
    with pytest.raises(OptionError) as err:
        build_generator({'type': 'ResNet50'}, 3, 3)
    message = str(err.value)
    assert 'ResNet50' in message and all(name in message for name in ('EDSRBaseline', 'SwinT', 'UNet'))
    with pytest.raises(OptionError, match='missing "type"'):
        build_generator({'depth': 3}, 3, 3)


def test_unknown_option_and_options_not_mutated():
    opt = {'type': 'UNet', 'depth': 2, 'width': 8}
    build_generator(opt, 3, 3)
    assert opt == {'type': 'UNet', 'depth': 2, 'width': 8}
    with pytest.raises(OptionError, match='no option dim.*depth, width'):
        build_generator({'type': 'UNet', 'dim': 64}, 3, 3)
    with pytest.raises(OptionError, match='divisible'):
        build_generator({'type': 'SwinT', 'embed_dim': 10, 'depths': [2], 'num_heads': [3]}, 3, 3)
