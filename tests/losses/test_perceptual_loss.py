"""VGGPerceptualLoss: the three weight routes, BasicSR equivalence, 'l2', and offline errors."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torchvision
from basicsr.archs import vgg_arch
from basicsr.losses import basic_loss, build_loss
from basicsr.losses.basic_loss import PerceptualLoss
from basicsr.utils.registry import LOSS_REGISTRY
from conftest import captured, offline_torch_hub
from torch.nn import functional as F

from flowprior_plugin.errors import CheckpointMismatchError, MissingWeightsError, OptionError
from flowprior_plugin.losses import perceptual_loss
from flowprior_plugin.losses.perceptual_loss import VGGPerceptualLoss
from flowprior_plugin.pretrained_weights import hub_cache_path

VGG19_FILE = 'vgg19-dcbb9e9d.pth'
VGG19_URL = 'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth'


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Work in an empty folder (no experiments/pretrained_models), empty torch hub, downloads fail.

    Returns the list of URLs a download was attempted for.
    """
    monkeypatch.chdir(tmp_path)
    return offline_torch_hub(tmp_path, monkeypatch)


@pytest.fixture(scope='module')
def vgg19_file(tmp_path_factory):
    """A torchvision-layout VGG19 state dict: random conv weights, zero-stride classifier tensors
    (so BasicSR's strict load of the full network works while the file stays ~80 MB)."""
    from torchvision.models import vgg as tv_vgg

    generator = torch.Generator().manual_seed(7)
    features = tv_vgg.make_layers(tv_vgg.cfgs['E'])
    state = {}
    for key, value in features.state_dict().items():
        fan_in = value[0].numel() if value.dim() > 1 else 1
        state[f'features.{key}'] = torch.randn(value.shape, generator=generator) * (2 / fan_in) ** 0.5
    for key, shape in [
        ('classifier.0.weight', (4096, 25088)),
        ('classifier.0.bias', (4096,)),
        ('classifier.3.weight', (4096, 4096)),
        ('classifier.3.bias', (4096,)),
        ('classifier.6.weight', (1000, 4096)),
        ('classifier.6.bias', (1000,)),
    ]:
        state[key] = torch.zeros(1).expand(shape)
    path = tmp_path_factory.mktemp('vgg') / VGG19_FILE
    torch.save(state, path)
    return path, state


def _inputs():
    x = torch.rand(2, 3, 32, 32)
    return x, (x + 0.1 * torch.randn_like(x)).clamp(0, 1)


def test_random_weights_build_zero_for_identical_positive_otherwise_and_backward(offline):
    with captured(perceptual_loss.logger) as records:
        loss = VGGPerceptualLoss(random_weights_for_tests=True)
    assert any('RANDOM vgg19' in r.getMessage() and 'meaningless' in r.getMessage() for r in records)
    # METHOD.md's configuration is the default: conv5_4 before its ReLU, ImageNet norm, [0, 1], L1.
    assert loss.layer_weights == {'conv5_4': 1.0} and loss.criterion_type == 'l1'
    assert loss.vgg.use_input_norm and not loss.vgg.range_norm
    # The trunk stops at conv5_4 (features[34]): nothing after the last requested layer is built into the graph.
    assert list(loss.vgg.vgg_net.features._modules)[-1] == str(vgg_arch.NAMES['vgg19'].index('conv5_4'))

    x, gt = _inputs()
    same, style = loss(x, x.clone())
    assert same.item() == 0.0 and style is None
    x.requires_grad_(True)
    percep, _ = loss(x, gt)
    assert percep.item() > 0
    percep.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.vgg.parameters())
    assert offline == []


def test_random_weights_are_reproducible_and_leave_the_rng_alone():
    state = torch.get_rng_state()
    a = VGGPerceptualLoss(random_weights_for_tests=True)
    assert torch.equal(torch.get_rng_state(), state)
    b = VGGPerceptualLoss(random_weights_for_tests=True)
    assert torch.equal(a.vgg.layer('conv5_4').weight, b.vgg.layer('conv5_4').weight)


def test_weights_path_loads_those_exact_weights(vgg19_file, offline):
    path, state = vgg19_file
    loss = VGGPerceptualLoss(layer_weights={'conv1_1': 0.5, 'conv5_4': 1.0}, weights_path=str(path))
    assert torch.equal(loss.vgg.layer('conv1_1').weight, state['features.0.weight'])
    assert torch.equal(loss.vgg.layer('conv5_4').weight, state['features.34.weight'])
    assert torch.equal(loss.vgg.layer('conv5_4').bias, state['features.34.bias'])
    assert offline == []


def test_default_route_reads_basicsr_path_and_matches_basicsrs_own_loss(vgg19_file, offline):
    path, state = vgg19_file
    os.makedirs('experiments/pretrained_models')
    os.symlink(path, vgg_arch.VGG_PRETRAIN_PATH)
    layer_weights = {'conv3_4': 0.5, 'conv5_4': 1.0}
    ours = VGGPerceptualLoss(layer_weights=layer_weights, style_weight=2.0)
    assert torch.equal(ours.vgg.layer('conv3_4').weight, state['features.16.weight'])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        # BasicSR's own route on torchvision 0.29: vgg19(pretrained=False) still works through
        # torchvision's deprecated-argument shim, with warnings, and builds the full network.
        theirs = PerceptualLoss(layer_weights=layer_weights, style_weight=2.0)
    assert any("'pretrained' is deprecated" in str(w.message) for w in caught)
    x, gt = _inputs()
    ours_percep, ours_style = ours(x, gt)
    theirs_percep, theirs_style = theirs(x, gt)
    assert torch.allclose(ours_percep, theirs_percep, rtol=1e-5)
    assert torch.allclose(ours_style, theirs_style, rtol=1e-5)
    assert offline == []


def test_default_route_uses_the_torch_hub_cache(vgg19_file, offline):
    path, state = vgg19_file
    cached = hub_cache_path('vgg19')
    assert cached == os.path.join(os.environ['TORCH_HOME'], 'hub', 'checkpoints', VGG19_FILE)
    os.makedirs(os.path.dirname(cached))
    os.symlink(path, cached)
    loss = VGGPerceptualLoss()
    assert torch.equal(loss.vgg.layer('conv5_4').weight, state['features.34.weight'])
    assert offline == []


def test_absent_default_weights_raise_missing_weights_error_naming_both_places(offline):
    saved = vgg_arch.vgg, vgg_arch.VGG_PRETRAIN_PATH
    with pytest.raises(MissingWeightsError) as info:
        VGGPerceptualLoss()
    message = str(info.value)
    assert os.path.abspath(vgg_arch.VGG_PRETRAIN_PATH) in message
    assert hub_cache_path('vgg19') in message
    assert 'weights_path' in message and VGG19_URL in message and '\n' not in message
    assert offline == [VGG19_URL]  # one attempt, failed fast (no network in tests)
    assert (vgg_arch.vgg, vgg_arch.VGG_PRETRAIN_PATH) == saved  # BasicSR's module globals untouched
    assert vgg_arch.vgg is torchvision.models.vgg


def _random_vgg_state(vgg_type: str, seed: int) -> dict[str, torch.Tensor]:
    """A torchvision-layout ``features.*`` state dict of ``vgg_type`` with random weights (and, for
    the '_bn' types, random BatchNorm statistics, so that eval-mode BatchNorm matters)."""
    from torchvision.models import vgg as tv_vgg

    base = vgg_type.replace('_bn', '')
    config = tv_vgg.cfgs[{'vgg11': 'A', 'vgg13': 'B', 'vgg16': 'D', 'vgg19': 'E'}[base]]
    features = tv_vgg.make_layers(config, batch_norm=vgg_type.endswith('_bn'))
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in features.state_dict().items():
        if key.endswith('num_batches_tracked'):
            state[f'features.{key}'] = value
        elif key.endswith('running_var'):
            state[f'features.{key}'] = 0.5 + torch.rand(value.shape, generator=generator)
        else:
            fan_in = value[0].numel() if value.dim() > 1 else 1
            state[f'features.{key}'] = torch.randn(value.shape, generator=generator) * (2 / fan_in) ** 0.5
    return state


def _basicsr_builder_with(state: dict[str, torch.Tensor], vgg_type: str):
    """A stand-in for torchvision's ``vgg*`` builder that returns a VGG holding ``state``."""
    from torchvision.models import vgg as tv_vgg

    def build(pretrained: bool = True, **kwargs):
        base = vgg_type.replace('_bn', '')
        config = tv_vgg.cfgs[{'vgg11': 'A', 'vgg13': 'B', 'vgg16': 'D', 'vgg19': 'E'}[base]]
        holder = torch.nn.Module()
        holder.features = tv_vgg.make_layers(config, batch_norm=vgg_type.endswith('_bn'))
        holder.load_state_dict(state)
        return holder

    return build


EQUIVALENCE_CASES = [
    ('vgg19', {'layer_weights': {'conv5_4': 1.0}}),  # the paper's
    ('vgg19', {'layer_weights': {'relu1_2': 0.3, 'conv3_4': 0.5, 'relu3_4': 0.2, 'pool4': 1.0}, 'style_weight': 2.0}),
    ('vgg19', {'layer_weights': {'conv2_2': 1.0, 'conv4_1': 0.7}, 'criterion': 'fro', 'style_weight': 0.5}),
    (
        'vgg19',
        {
            'layer_weights': {'conv1_1': 0.1, 'relu5_1': 0.2},
            'use_input_norm': False,
            'range_norm': True,
            'perceptual_weight': 0.5,
            'style_weight': 1.5,
        },
    ),
    ('vgg16_bn', {'layer_weights': {'bn3_3': 1.0, 'relu4_1': 0.5}, 'style_weight': 0.7}),
    ('vgg11', {'layer_weights': {'conv4_2': 1.0}, 'perceptual_weight': 0.0, 'style_weight': 1.0}),
    ('vgg13', {'layer_weights': {'conv3_2': 1.0}, 'criterion': 'l2', 'style_weight': 3.0}),
]


@pytest.mark.parametrize('vgg_type, options', EQUIVALENCE_CASES)
def test_loss_equals_basicsrs_perceptual_loss_with_the_same_vgg(vgg_type, options, tmp_path, monkeypatch, offline):
    state = _random_vgg_state(vgg_type, seed=11)
    weights = tmp_path / 'weights.pth'
    torch.save(state, weights)
    ours = VGGPerceptualLoss(vgg_type=vgg_type, weights_path=str(weights), **options)

    # BasicSR's own loss on the same weights: no file at VGG_PRETRAIN_PATH (empty working folder),
    # so it calls torchvision's <vgg_type>(pretrained=True), replaced here (this test only).
    assert not os.path.exists(vgg_arch.VGG_PRETRAIN_PATH)
    monkeypatch.setattr(torchvision.models.vgg, vgg_type, _basicsr_builder_with(state, vgg_type))
    basicsr_options = dict(options)
    if options.get('criterion') == 'l2':
        basicsr_options['criterion'] = 'l1'  # BasicSR 1.4.2's 'l2' crashes (torch.nn.L2loss) ...
    theirs = PerceptualLoss(vgg_type=vgg_type, **basicsr_options)
    if options.get('criterion') == 'l2':
        theirs.criterion = torch.nn.MSELoss()  # ... so give it the mean squared error it intends
    # BasicSR's VGG is built in eval mode; ours stays there even when a model calls .train().
    ours.train()

    generator = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 40, 48, generator=generator)
    gt = (x + 0.2 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    if options.get('range_norm'):
        x, gt = x * 2 - 1, gt * 2 - 1
    for got, expected in zip(ours(x, gt), theirs(x, gt), strict=True):
        if expected is None:
            assert got is None
        else:
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert sorted(ours.vgg(x)) == sorted(options['layer_weights'])
    assert offline == []


def test_vgg16_does_not_load_basicsrs_vgg19_file(vgg19_file, offline):
    path, _ = vgg19_file
    os.makedirs('experiments/pretrained_models')
    os.symlink(path, vgg_arch.VGG_PRETRAIN_PATH)
    # BasicSR would load that VGG19 file into a VGG16 and crash; ours asks for vgg16's own file.
    with pytest.raises(MissingWeightsError, match='vgg16-397923af.pth') as info:
        VGGPerceptualLoss(layer_weights={'conv5_3': 1.0}, vgg_type='vgg16')
    assert 'VGG_PRETRAIN_PATH' not in str(info.value)


def test_missing_or_wrong_weights_file(tmp_path, vgg19_file):
    missing = tmp_path / 'nowhere' / VGG19_FILE
    with pytest.raises(MissingWeightsError, match=str(missing)):
        VGGPerceptualLoss(weights_path=str(missing))
    with pytest.raises(CheckpointMismatchError, match='not a torchvision vgg16 state dict'):
        VGGPerceptualLoss(layer_weights={'conv5_3': 1.0}, vgg_type='vgg16', weights_path=str(vgg19_file[0]))


def test_l2_criterion_is_mse_where_basicsr_crashes(monkeypatch):
    loss = VGGPerceptualLoss(criterion='l2', random_weights_for_tests=True)
    x, gt = _inputs()
    expected = F.mse_loss(loss.vgg(x)['conv5_4'], loss.vgg(gt)['conv5_4'])
    assert torch.allclose(loss(x, gt)[0], expected)
    # BasicSR 1.4.2 itself: torch.nn.L2loss does not exist (VGG stubbed out: only the criterion matters).
    monkeypatch.setattr(basic_loss, 'VGGFeatureExtractor', lambda **kwargs: torch.nn.Identity())
    with pytest.raises(AttributeError, match='L2loss'):
        PerceptualLoss(layer_weights={'conv5_4': 1.0}, criterion='l2')


def test_fro_criterion_and_style_loss():
    loss = VGGPerceptualLoss(
        layer_weights={'conv4_4': 1.0}, criterion='fro', style_weight=1.0, random_weights_for_tests=True
    )
    x, gt = _inputs()
    percep, style = loss(x, gt)
    feats_x, feats_gt = loss.vgg(x)['conv4_4'], loss.vgg(gt)['conv4_4']
    assert torch.allclose(percep, torch.norm(feats_x - feats_gt, p='fro'))
    assert style is not None and style.item() > 0


def test_registered_and_built_by_basicsr():
    assert LOSS_REGISTRY.get('VGGPerceptualLoss') is VGGPerceptualLoss
    assert VGGPerceptualLoss.__module__.startswith('flowprior_plugin.')
    assert issubclass(VGGPerceptualLoss, PerceptualLoss)
    loss = build_loss({'type': 'VGGPerceptualLoss', 'layer_weights': {'conv5_4': 1}, 'random_weights_for_tests': True})
    assert isinstance(loss, VGGPerceptualLoss)


def test_train_mode_keeps_the_vgg_frozen_in_eval():
    loss = VGGPerceptualLoss(layer_weights={'relu2_1': 1.0}, vgg_type='vgg11_bn', random_weights_for_tests=True)
    loss.train()
    assert loss.training and not loss.vgg.training and not loss.vgg.layer('bn2_1').training


def test_option_errors(tmp_path):
    with pytest.raises(OptionError, match='conv9_9'):
        VGGPerceptualLoss(layer_weights={'conv9_9': 1.0}, random_weights_for_tests=True)
    with pytest.raises(OptionError, match='unknown vgg_type'):
        VGGPerceptualLoss(vgg_type='resnet50', random_weights_for_tests=True)
    with pytest.raises(OptionError, match='criterion must be one of'):
        VGGPerceptualLoss(criterion='l3', random_weights_for_tests=True)
    with pytest.raises(OptionError, match='not both'):
        VGGPerceptualLoss(weights_path=str(tmp_path / 'x.pth'), random_weights_for_tests=True)
