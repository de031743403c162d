"""LatentPriorNet: golden outputs of the released SRFlow-LP module, loading routes, errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from basicsr.archs import build_network
from conftest import REPO_ROOT, load_golden

from flowprior_plugin.archs.latent_prior_arch import (
    LINF_LP_RELEASE_OPTIONS,
    LatentPriorNet,
    convert_linf_lp_state_dict,
    convert_srflow_lp_state_dict,
    is_linf_lp_release,
    is_srflow_lp_release,
    to_linf_lp_state_dict,
    to_srflow_lp_state_dict,
)
from flowprior_plugin.checkpoints import load_checked
from flowprior_plugin.errors import CheckpointMismatchError, OptionError
from flowprior_plugin.models.base_flow_model import BaseFlowModel

RELEASE_ARGS = {'depth': 3, 'dim': 64, 'bilinear': True}
RELEASE_OPTIONS = {
    'latent_channels': [6, 96],
    'generator': {'type': 'UNet', 'depth': 3, 'width': 64},
    'prior_features': 64,
    'lr_encoder': False,
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class _BasicSRLoader(BaseFlowModel):
    """Just enough of our BasicSR model to call its ``load_network`` (BasicSR's loader with the
    checkpoint check of :mod:`flowprior_plugin.checkpoints`)."""

    def __init__(self) -> None:
        self.opt = {'dist': False, 'num_gpu': 0}


@pytest.fixture(scope='module')
def released_file(tmp_path_factory, reference_dir, golden_weights) -> Path:
    """The golden weights saved in exactly the released file format."""
    sd = golden_weights.golden_state_dict(reference_dir / 'srflow_lp_unet_keys.txt', dtype=torch.float64)
    path = tmp_path_factory.mktemp('release') / 'SRFlow-LP.pth'
    torch.save({'prior_model': {'name': 'unet', 'args': dict(RELEASE_ARGS), 'sd': sd}}, path)
    return path


@pytest.fixture(scope='module')
def golden(reference_dir) -> dict:
    return load_golden(reference_dir, 'srflow_lp_unet_seed0.pt')


@pytest.fixture(scope='module')
def release_net(released_file) -> LatentPriorNet:
    """The release's configuration with the golden weights, loaded through our loader."""
    net = LatentPriorNet(**RELEASE_OPTIONS)
    # Convert to float64 before loading: loading float64 weights into float32 parameters would
    # round them (a ~1e-7 relative difference in the outputs).
    net.double()
    load_checked(net, torch.load(released_file, weights_only=True), strict=True)
    return net.eval()


def test_golden_through_our_loader(release_net, golden):
    assert golden['args'] == RELEASE_ARGS
    assert n_params(release_net) == 9672934
    lq = torch.rand(1, 3, 32, 40, dtype=torch.float64)  # accepted, unused without the LR encoder
    with torch.no_grad():
        outputs = release_net(lq, golden['inputs'])
    assert len(outputs) == len(golden['outputs'])
    for got, want in zip(outputs, golden['outputs']):
        assert got.shape == want.shape
        # float64 weights in a float64 net match the release to rounding (brief asks for 1e-6).
        assert ((got - want).abs().max() / want.abs().max()).item() < 1e-9


def test_golden_through_basicsr_load_network(released_file, release_net):
    net = build_network({'type': 'LatentPriorNet', **RELEASE_OPTIONS}).double()
    _BasicSRLoader().load_network(net, str(released_file), strict=True, param_key='prior_model')
    # The same tensors as the net that reproduces the golden outputs, so the same outputs.
    ours, theirs = release_net.state_dict(), net.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_converter_forms_and_round_trip(released_file, release_net):
    whole = torch.load(released_file, weights_only=True)
    sd = whole['prior_model']['sd']
    converted = convert_srflow_lp_state_dict(whole)
    for form in (whole['prior_model'], sd, {f'module.{k}': v for k, v in sd.items()}):
        assert list(convert_srflow_lp_state_dict(form)) == list(converted)
    back = to_srflow_lp_state_dict(converted)
    assert list(back) == list(sd) and all(back[k] is sd[k] for k in sd)
    loaded = release_net.state_dict()
    assert set(loaded) == set(converted) and all(torch.equal(loaded[k], v) for k, v in converted.items())


def test_convert_script_then_default_param_key(tmp_path):
    # A small net in the release's layout keeps this fast; the script only renames keys.
    options = {
        'latent_channels': [2, 5],
        'generator': {'type': 'UNet', 'depth': 1, 'width': 4},
        'prior_features': 4,
        'lr_encoder': False,
    }
    source = LatentPriorNet(**options)
    for p in source.parameters():
        torch.nn.init.normal_(p)
    released = tmp_path / 'tiny-LP.pth'
    torch.save(
        {'prior_model': {'name': 'unet', 'args': {}, 'sd': to_srflow_lp_state_dict(source.state_dict())}}, released
    )

    spec = importlib.util.spec_from_file_location(
        'convert_srflow_lp', REPO_ROOT / 'integrations' / 'convert_srflow_lp.py'
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / 'out' / 'converted.pth'
    assert script.main([str(released), str(out)]) == 0

    assert set(torch.load(out, weights_only=True)) == {'params'}
    net = LatentPriorNet(**options)
    _BasicSRLoader().load_network(net, str(out), strict=True)  # BasicSR's default param_key
    z0 = [torch.randn(1, 2, 6, 4), torch.randn(1, 5, 3, 2)]
    source.eval(), net.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(source(None, z0), net(None, z0)))


def test_released_file_into_lr_encoder_net_says_what_to_change(released_file):
    released = torch.load(released_file, weights_only=True)
    for strict in (True, False):  # differently shaped tensors are refused even when not strict
        with pytest.raises(CheckpointMismatchError) as err:
            load_checked(LatentPriorNet(latent_channels=[6, 96]), released, strict=strict)
        message = str(err.value)
        assert 'SRFlow-LP checkpoint holds 2 latent level(s) with channels [6, 96]' in message
        assert 'LR encoder off' in message and 'LR encoder on' in message
        assert 'set lr_encoder: false' in message


def test_released_file_with_other_channels(released_file):
    options = dict(RELEASE_OPTIONS, latent_channels=[6, 48])
    with pytest.raises(CheckpointMismatchError, match=r'channels \[6, 48\].*use the flow'):
        load_checked(LatentPriorNet(**options), torch.load(released_file, weights_only=True))


def test_own_checkpoint_mismatch_and_non_strict():
    tiny = {'latent_channels': [3], 'generator': {'type': 'UNet', 'depth': 1, 'width': 4}, 'prior_features': 4}
    with_lr = LatentPriorNet(**tiny, lr_features=4).state_dict()
    net = LatentPriorNet(**tiny, lr_encoder=False)
    with pytest.raises(CheckpointMismatchError, match='set lr_encoder: true'):
        load_checked(net, with_lr)
    without_lr = net.state_dict()
    lr_net = LatentPriorNet(**tiny, lr_features=4)
    with pytest.raises(CheckpointMismatchError):
        load_checked(lr_net, without_lr)  # strict: the LR encoder would be missing
    # The generator input differs (4 vs 8 features), so even non-strict loading refuses.
    with pytest.raises(CheckpointMismatchError, match='other shapes'):
        load_checked(lr_net, without_lr, strict=False)
    load_checked(LatentPriorNet(**tiny, lr_features=4), with_lr)


@pytest.mark.parametrize(
    'generator',
    [
        {'type': 'UNet', 'depth': 2, 'width': 8},
        {'type': 'EDSRBaseline', 'num_blocks': 1, 'width': 8},
        {'type': 'SwinT', 'embed_dim': 16, 'depths': [2], 'num_heads': [2], 'window_size': 4, 'head_channels': [8]},
    ],
    ids=lambda g: g['type'],
)
def test_tiny_net_forward_backward(generator):
    net = LatentPriorNet(latent_channels=[2, 5], generator=generator, prior_features=8, lr_features=8)
    lq = torch.rand(2, 3, 5, 7)
    z0 = [torch.randn(2, 2, 10, 14, requires_grad=True), torch.randn(2, 5, 3, 4)]
    out = net(lq, z0)
    assert [o.shape for o in out] == [z.shape for z in z0]
    sum(o.square().mean() for o in out).backward()
    assert all(p.grad is not None for p in net.parameters())
    assert z0[0].grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        assert [o.shape for o in net(lq[:1], [z[:1] for z in z0])] == [(1, 2, 10, 14), (1, 5, 3, 4)]


def test_lq_may_be_none_without_lr_encoder():
    net = LatentPriorNet(
        latent_channels=[2], generator={'type': 'UNet', 'depth': 1, 'width': 4}, prior_features=4, lr_encoder=False
    ).eval()
    z0 = [torch.randn(1, 2, 4, 6)]
    with torch.no_grad():
        assert torch.equal(net(None, z0)[0], net(torch.rand(1, 3, 2, 3), z0)[0])


def test_module_names_and_authors_param_counts():
    net = LatentPriorNet(latent_channels=[27], prior_features=32, lr_features=32)
    names = {n.split('.', 3)[2] for n, _ in net.named_parameters()}
    assert names == {'prior_encoder', 'lr_encoder', 'generator', 'head'}
    # METHOD.md's LINF-LP figures at 27 channels (32 + 32 features; plain EDSR trunk).
    assert n_params(net) == 4582223
    plain = {'type': 'EDSRBaseline', 'plain': True}
    assert n_params(LatentPriorNet([27], plain, prior_features=32, lr_features=32)) == 1446607


def test_input_errors():
    net = LatentPriorNet(
        latent_channels=[2, 5], generator={'type': 'UNet', 'depth': 1, 'width': 4}, prior_features=4, lr_features=4
    )
    lq = torch.rand(1, 3, 4, 4)
    good = [torch.randn(1, 2, 8, 8), torch.randn(1, 5, 2, 2)]
    with pytest.raises(ValueError, match=r'built for 2 latent level\(s\) with channels \[2, 5\], but got 1'):
        net(lq, good[:1])
    with pytest.raises(ValueError, match='latent level 1: expected 5 channels, got 4'):
        net(lq, [good[0], torch.randn(1, 4, 2, 2)])
    with pytest.raises(ValueError, match='latent level 1: batch size 2'):
        net(lq, [good[0], torch.randn(2, 5, 2, 2)])
    with pytest.raises(ValueError, match='expected the LR image'):
        net(None, good)
    with pytest.raises(ValueError, match=r'LR image: expected \(B=1, 3'):
        net(torch.rand(1, 1, 4, 4), good)


def test_option_errors():
    for missing in (None, []):
        with pytest.raises(OptionError, match='latent_channels is missing'):
            LatentPriorNet(latent_channels=missing)
    with pytest.raises(OptionError, match='positive integers'):
        LatentPriorNet(latent_channels=[6, 0])
    with pytest.raises(OptionError, match='unknown latent generator .*EDSRBaseline, SwinT, UNet'):
        LatentPriorNet(latent_channels=[6], generator={'type': 'Transformer'})
    generator = {'type': 'UNet', 'depth': 1, 'width': 4, 'out_channels': 6}
    net = LatentPriorNet(latent_channels=[3], generator=generator, prior_features=4, lr_encoder=False)
    assert generator['out_channels'] == 6 and net.levels[0].head.in_channels == 6


# ---------------------------------------------------------------- LINF-LP (the released 3x3-patch LINF module)

LINF_LP_ARGS = {'in_chans': 3, 'depth': 3, 'dim': 64, 'bilinear': True}


@pytest.fixture(scope='module')
def linf_lp_file(tmp_path_factory, reference_dir, golden_weights) -> Path:
    """The LINF-LP golden weights saved in exactly the released file format."""
    sd = golden_weights.golden_state_dict(reference_dir / 'linf_lp_unet_keys.txt', dtype=torch.float64)
    path = tmp_path_factory.mktemp('release') / 'LINF-LP.pth'
    torch.save({'prior_model': {'name': 'unet', 'args': dict(LINF_LP_ARGS), 'sd': sd}}, path)
    return path


@pytest.fixture(scope='module')
def linf_lp_net(linf_lp_file) -> LatentPriorNet:
    net = LatentPriorNet(**LINF_LP_RELEASE_OPTIONS)
    net.double()  # before loading: float64 weights into float32 parameters would be rounded
    load_checked(net, torch.load(linf_lp_file, weights_only=True), strict=True)
    return net.eval()


def test_linf_lp_golden_through_our_loader(reference_dir, linf_lp_net):
    golden = load_golden(reference_dir, 'linf_lp_unet_seed0.pt')
    assert golden['args'] == LINF_LP_ARGS
    assert n_params(linf_lp_net) == 4582223
    # The LR (10 x 14) goes through the stride-3 conv (4 x 5), then is resized to the 14 x 19 grid.
    assert golden['lr'].shape[-2:] == (10, 14) and golden['z_in'].shape == (1, 27, 14, 19)
    with torch.no_grad():
        (z_out,) = linf_lp_net(golden['lr'], [golden['z_in']])
    assert z_out.shape == golden['z_out'].shape
    # float64 weights in a float64 net match the release to rounding (the brief asks for 1e-6).
    assert ((z_out - golden['z_out']).abs().max() / golden['z_out'].abs().max()).item() < 1e-9


def test_linf_lp_through_basicsr_load_network(linf_lp_file, linf_lp_net):
    net = build_network({'type': 'LatentPriorNet', **LINF_LP_RELEASE_OPTIONS}).double()
    _BasicSRLoader().load_network(net, str(linf_lp_file), strict=True, param_key='prior_model')
    ours, theirs = linf_lp_net.state_dict(), net.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_linf_lp_converter_forms_and_round_trip(linf_lp_file, linf_lp_net):
    whole = torch.load(linf_lp_file, weights_only=True)
    sd = whole['prior_model']['sd']
    converted = convert_linf_lp_state_dict(whole)
    for form in (whole['prior_model'], sd, {f'module.{k}': v for k, v in sd.items()}):
        assert is_linf_lp_release(form) and not is_srflow_lp_release(form)
        assert list(convert_linf_lp_state_dict(form)) == list(converted)
    back = to_linf_lp_state_dict(converted)
    assert list(back) == list(sd) and all(back[k] is sd[k] for k in sd)
    loaded = linf_lp_net.state_dict()
    assert set(loaded) == set(converted) and all(torch.equal(loaded[k], v) for k, v in converted.items())
    with pytest.raises(CheckpointMismatchError, match='unknown|no counterpart'):
        convert_srflow_lp_state_dict({'input_proj0.conv1.weight': torch.zeros(1), 'lr_proj.9.x': torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match='not a LINF-LP checkpoint'):
        convert_linf_lp_state_dict({'prior_model': {'name': 'unet', 'sd': {'input_proj0.conv1.weight': 0}}})


def test_linf_lp_file_needs_stride_3_and_the_lr_encoder(linf_lp_file):
    released = torch.load(linf_lp_file, weights_only=True)
    # Same tensor shapes at stride 1, so without this check the file would load and compute nonsense.
    with pytest.raises(CheckpointMismatchError, match='needs lr_encoder_stride: 3.*set lr_encoder_stride: 3'):
        load_checked(LatentPriorNet(**dict(LINF_LP_RELEASE_OPTIONS, lr_encoder_stride=1)), released)
    with pytest.raises(CheckpointMismatchError, match='LINF-LP checkpoint holds .*set lr_encoder: true'):
        load_checked(LatentPriorNet(**dict(LINF_LP_RELEASE_OPTIONS, lr_encoder=False)), released)


def test_strided_lr_encoder_resizes_only_when_needed(monkeypatch):
    options = dict(LINF_LP_RELEASE_OPTIONS, generator={'type': 'UNet', 'depth': 1, 'width': 4})
    net = LatentPriorNet(**dict(options, prior_features=4, lr_features=4)).eval()
    resized = []
    interpolate = torch.nn.functional.interpolate

    def recording(*args, **kwargs):
        if kwargs.get('size') is not None:  # the UNet's own x2 upsampling passes scale_factor
            resized.append(tuple(kwargs['size']))
        return interpolate(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, 'interpolate', recording)
    with torch.no_grad():
        out = net(torch.rand(2, 3, 12, 15), [torch.randn(2, 27, 4, 5)])  # stride 3 gives 4 x 5 already
        assert out[0].shape == (2, 27, 4, 5) and not resized
        out = net(torch.rand(2, 3, 10, 14), [torch.randn(2, 27, 14, 19)])  # 4 x 5 -> 14 x 19
        assert out[0].shape == (2, 27, 14, 19) and resized == [(14, 19)]
    with pytest.raises(OptionError, match='lr_encoder_stride must be a positive integer'):
        LatentPriorNet(latent_channels=[27], lr_encoder_stride=0)


def test_linf_convert_script_on_the_lp_file(tmp_path, capsys):
    options = dict(LINF_LP_RELEASE_OPTIONS, generator={'type': 'UNet', 'depth': 1, 'width': 4})
    options.update(prior_features=4, lr_features=4)
    source = LatentPriorNet(**options)
    for p in source.parameters():
        torch.nn.init.normal_(p)
    released = tmp_path / 'tiny-LINF-LP.pth'
    torch.save(
        {'prior_model': {'name': 'unet', 'args': {}, 'sd': to_linf_lp_state_dict(source.state_dict())}}, released
    )
    spec = importlib.util.spec_from_file_location('convert_linf', REPO_ROOT / 'integrations' / 'convert_linf.py')
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / 'converted.pth'
    assert script.main([str(released), str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'type: LatentPriorNet' in printed and 'lr_encoder_stride: 3' in printed and 'lr_encoder: true' in printed
    net = LatentPriorNet(**options)
    _BasicSRLoader().load_network(net, str(out), strict=True)
    ours, theirs = source.state_dict(), net.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
