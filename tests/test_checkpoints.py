"""flowprior_plugin.checkpoints: release layouts -> our state dicts, the one-line mismatch message,
and BasicSR's loader going through both."""

from __future__ import annotations

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import meta_module, meta_state_dict, tiny_module

from flowprior_plugin.archs.hcflow_arch import HCFlowNet, official_hcflow_options
from flowprior_plugin.archs.latent_prior_arch import (
    LINF_LP_RELEASE,
    LINF_LP_RELEASE_OPTIONS,
    SRFLOW_LP_RELEASE,
    LatentPriorNet,
    to_linf_lp_state_dict,
)
from flowprior_plugin.archs.linf_arch import LINF_RELEASE, LINFNet, official_linf_options
from flowprior_plugin.archs.srflow_arch import SRFlowNet, official_srflow_options
from flowprior_plugin.checkpoints import (
    CheckpointFormat,
    checked_state_dict,
    checkpoint_format_of,
    describe_checkpoint_mismatch,
    load_checked,
)
from flowprior_plugin.errors import CheckpointMismatchError
from flowprior_plugin.models.base_flow_model import BaseFlowModel

SRFLOW_LP_OPTIONS = {
    'latent_channels': [6, 96],
    'generator': {'type': 'UNet', 'depth': 3, 'width': 64},
    'prior_features': 64,
    'lr_encoder': False,
}
TINY_SRFLOW = dict(scale=4, nf=8, nb=2, gc=4, K=2, hidden_channels=8, stacked_blocks=(0, 1))
TINY_PRIOR = {'latent_channels': [3], 'generator': {'type': 'UNet', 'depth': 1, 'width': 4}, 'prior_features': 4}


class _OurLoader(BaseFlowModel):
    """Just enough of our BasicSR model to call its ``load_network`` (BasicSR's, with the check)."""

    def __init__(self) -> None:
        self.opt = {'dist': False, 'num_gpu': 0}


def _keys(reference_dir, golden_weights, name: str) -> dict[str, torch.Tensor]:
    return meta_state_dict(golden_weights.read_keys(reference_dir / name))


def test_every_network_declares_its_format():
    for name in ('SRFlowNet', 'HCFlowNet', 'LINFNet', 'LatentPriorNet'):
        fmt = ARCH_REGISTRY.get(name).checkpoint_format
        assert isinstance(fmt, CheckpointFormat) and name.startswith(fmt.family[:4])
    assert checkpoint_format_of(torch.nn.Conv2d(1, 1, 1)) is None


@pytest.mark.parametrize(
    ('key_file', 'build'),
    [
        ('srflow_DF2K_4X_keys.txt', lambda: meta_module(SRFlowNet, official_srflow_options('DF2K 4X'))),
        ('hcflow_SR_DF2K_4X_keys.txt', lambda: meta_module(HCFlowNet, official_hcflow_options('DF2K 4X'))),
        ('linf_linf_patch_rrdb_keys.txt', lambda: meta_module(LINFNet, official_linf_options('rrdb-linf-patch'))),
    ],
)
def test_our_layout_passes_through_unchanged(reference_dir, golden_weights, key_file, build):
    net = build()
    state = _keys(reference_dir, golden_weights, key_file)
    assert checkpoint_format_of(net).to_our_layout(state) == (state, None)
    assert checked_state_dict(net, state) is state
    assert describe_checkpoint_mismatch(net, state) is None


def test_linf_release_round_trip(reference_dir, golden_weights):
    net = meta_module(LINFNet, official_linf_options('rrdb-linf-patch'))
    state = _keys(reference_dir, golden_weights, 'linf_linf_patch_rrdb_keys.txt')
    released = {'model': {'name': 'linf-patch', 'args': {}, 'sd': state}, 'optimizer': {}, 'epoch': 1}
    for form in (released, released['model']):
        ours, release = net.checkpoint_format.to_our_layout(form)
        assert release is LINF_RELEASE and list(ours) == list(state) == list(net.state_dict())
        assert all(ours[k] is state[k] for k in state)  # renamed or unwrapped, never copied
        assert describe_checkpoint_mismatch(net, form) is None


@pytest.mark.parametrize(
    ('key_file', 'options', 'release'),
    [
        ('srflow_lp_unet_keys.txt', SRFLOW_LP_OPTIONS, SRFLOW_LP_RELEASE),
        ('linf_lp_unet_keys.txt', LINF_LP_RELEASE_OPTIONS, LINF_LP_RELEASE),
    ],
)
def test_latent_prior_release_round_trip(reference_dir, golden_weights, key_file, options, release):
    net = meta_module(LatentPriorNet, options)
    state = _keys(reference_dir, golden_weights, key_file)
    for form in ({'prior_model': {'name': 'unet', 'args': {}, 'sd': state}}, state):
        ours, found = net.checkpoint_format.to_our_layout(form)
        assert found is release
        # Our keys and shapes: exactly the network's state dict (in the release's order).
        assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in net.state_dict().items()}
        assert describe_checkpoint_mismatch(net, form) is None
    # The released names say which file it is in the message.
    other = meta_module(LatentPriorNet, dict(options, latent_channels=[2] * len(options['latent_channels'])))
    message = describe_checkpoint_mismatch(other, state)
    assert message.startswith(f'{release.name} holds ') and 'they differ in latent_channels' in message


def test_wrong_architecture_is_one_line_naming_both():
    net = tiny_module(SRFlowNet, TINY_SRFLOW, randomize=False)
    other = tiny_module(SRFlowNet, dict(TINY_SRFLOW, scale=8, L=4), randomize=False).state_dict()
    message = describe_checkpoint_mismatch(net, other)
    assert message.startswith('checkpoint holds SRFlow 8X') and 'but the options build SRFlow 4X' in message
    assert 'they differ in' in message and '\n' not in message
    with pytest.raises(CheckpointMismatchError) as info:
        load_checked(net, other)
    assert str(info.value) == message
    # Only tensors of other shapes stop a deliberate partial load.
    with pytest.raises(CheckpointMismatchError, match='of other shapes'):
        load_checked(net, other, strict=False)
    rrdb_only = {k: v for k, v in other.items() if k.startswith('RRDB.conv_first.')}
    assert load_checked(net, rrdb_only, strict=False).missing_keys


def test_fields_that_agree_with_tensors_that_do_not():
    # The architecture fields cannot see a missing ActNorm: the keys still say it in one line.
    net = tiny_module(SRFlowNet, TINY_SRFLOW, randomize=False)
    state = dict(net.state_dict())
    del state['flowUpsamplerNet.layers.1.actnorm.logs']
    message = describe_checkpoint_mismatch(net, state)
    assert message.startswith('checkpoint does not fit the options, which build SRFlow 4X')
    assert '1 (e.g. flowUpsamplerNet.layers.1.actnorm.logs) missing' in message


def test_basicsr_wrapper_and_our_loader(tmp_path):
    source = tiny_module(LatentPriorNet, TINY_PRIOR)
    wrapped = {'params': source.state_dict()}
    net = LatentPriorNet(**TINY_PRIOR)
    assert "BasicSR checkpoint: pass state_dict['params']" in describe_checkpoint_mismatch(net, wrapped)
    torch.save(wrapped, tmp_path / 'net_g.pth')
    _OurLoader().load_network(net, str(tmp_path / 'net_g.pth'), strict=True)  # param_key 'params'
    ours, theirs = source.state_dict(), net.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # A release in the file: converted in BasicSR's own loader, under its param_key.
    options = dict(LINF_LP_RELEASE_OPTIONS, generator=TINY_PRIOR['generator'], prior_features=4, lr_features=4)
    source = tiny_module(LatentPriorNet, options)
    release = {'prior_model': {'name': 'unet', 'args': {}, 'sd': to_linf_lp_state_dict(source.state_dict())}}
    torch.save(release, tmp_path / 'LINF-LP.pth')
    net = LatentPriorNet(**options)
    _OurLoader().load_network(net, str(tmp_path / 'LINF-LP.pth'), strict=True, param_key='prior_model')
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in source.state_dict().items())
    with pytest.raises(CheckpointMismatchError, match=r'LINF-LP.pth: the authors\' LINF-LP checkpoint needs'):
        _OurLoader().load_network(
            LatentPriorNet(**dict(options, lr_encoder_stride=1)), str(tmp_path / 'LINF-LP.pth'), True, 'prior_model'
        )


def test_plain_load_state_dict_is_torchs():
    # No network overrides loading: a release layout is torch's "unexpected keys", not converted.
    net = LatentPriorNet(**TINY_PRIOR)
    assert type(net).load_state_dict is torch.nn.Module.load_state_dict
    assert SRFlowNet.load_state_dict is torch.nn.Module.load_state_dict
    assert LINFNet.load_state_dict is torch.nn.Module.load_state_dict
    with pytest.raises(RuntimeError):
        net.load_state_dict({'prior_model': {'name': 'unet', 'sd': {}}})
