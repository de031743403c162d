"""LPIPS metric: random-backbone scores, caching, local weights, and offline failures (no network)."""

from __future__ import annotations

import os
import warnings

import lpips
import numpy as np
import pytest
import skimage.data
import torch
from basicsr.metrics import calculate_metric
from basicsr.utils.registry import METRIC_REGISTRY
from conftest import captured, offline_torch_hub

from flowprior_plugin.errors import CheckpointMismatchError, MissingWeightsError, OptionError
from flowprior_plugin.metrics import lpips_metric
from flowprior_plugin.metrics.lpips_metric import (
    backbone_hub_cache_path,
    calculate_lpips,
    calculate_lpips_pt,
    get_lpips_network,
    lpips_available,
)


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Empty torch hub ($TORCH_HOME), every download fails at once, a fresh network cache.

    Returns the list of URLs a download was attempted for.
    """
    attempts = offline_torch_hub(tmp_path, monkeypatch)
    monkeypatch.setattr(lpips_metric, '_NETWORK_CACHE', {})
    return attempts


@pytest.fixture(scope='module')
def images() -> dict[str, np.ndarray]:
    """64x64 BGR uint8 crops of a real photo: one, a noisy copy, and a different crop."""
    photo = skimage.data.astronaut()[..., ::-1]
    a = np.ascontiguousarray(photo[60:124, 180:244])
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 25, a.shape), 0, 255).round().astype(np.uint8)
    other = np.ascontiguousarray(photo[300:364, 300:364])
    return {'a': a, 'noisy': noisy, 'other': other}


def _save_alexnet_features(path, seed: int = 3, full: bool = False) -> dict[str, torch.Tensor]:
    """A torchvision-layout AlexNet state dict with random conv weights (classifier only if
    ``full``, as zero-stride tensors so the file stays a few MB)."""
    from torchvision.models.alexnet import AlexNet

    generator = torch.Generator().manual_seed(seed)
    model = AlexNet()
    state = {k: torch.randn(v.shape, generator=generator) * 0.05 for k, v in model.features.state_dict().items()}
    state = {f'features.{k}': v for k, v in state.items()}
    if full:
        for k, v in model.classifier.state_dict().items():
            state[f'classifier.{k}'] = torch.zeros(1).expand(v.shape)
    torch.save(state, path)
    return state


def test_random_backbone_scores_zero_for_identical_and_positive_otherwise(images):
    same = calculate_lpips(images['a'], images['a'], random_backbone_for_tests=True, device='cpu')
    noisy = calculate_lpips(images['a'], images['noisy'], random_backbone_for_tests=True, device='cpu')
    other = calculate_lpips(images['a'], images['other'], random_backbone_for_tests=True, device='cpu')
    assert abs(same) < 1e-6
    assert noisy > 1e-3 and other > 1e-3


def test_random_backbone_logs_a_warning_and_is_deterministic(images):
    with captured(lpips_metric.logger) as records:
        first = calculate_lpips(images['a'], images['other'], random_backbone_for_tests=True, device='cpu')
    assert any('RANDOM backbone' in r.getMessage() and 'meaningless' in r.getMessage() for r in records)
    lpips_metric.clear_lpips_cache()
    state = torch.get_rng_state()
    again = calculate_lpips(images['a'], images['other'], random_backbone_for_tests=True, device='cpu')
    assert again == first  # fixed seed for the random backbone
    assert torch.equal(torch.get_rng_state(), state)  # and the caller's random stream is untouched


def test_network_is_built_once_per_options(images, monkeypatch):
    builds = []
    real_build = lpips_metric._build_lpips
    monkeypatch.setattr(lpips_metric, '_build_lpips', lambda *a: builds.append(a) or real_build(*a))
    for _ in range(3):
        calculate_lpips(images['a'], images['noisy'], random_backbone_for_tests=True, device='cpu')
    assert len(builds) == 1
    net = get_lpips_network('alex', random_backbone_for_tests=True, device='cpu')
    assert net is get_lpips_network('alex', random_backbone_for_tests=True, device=torch.device('cpu'))
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_linear_heads_come_from_the_package_without_network(offline):
    net = get_lpips_network('alex', random_backbone_for_tests=True, device='cpu')
    heads = torch.load(os.path.join(os.path.dirname(lpips.__file__), 'weights', 'v0.1', 'alex.pth'), map_location='cpu')
    for key, value in heads.items():
        assert torch.equal(net.state_dict()[key], value), key
    assert offline == []  # no download was attempted


def test_bgr_uint8_is_scored_as_rgb_in_minus_one_to_one(images):
    a, b = images['a'], images['noisy']

    def rgb01(x):
        return torch.from_numpy(x[..., ::-1].transpose(2, 0, 1).copy()).float()[None] / 255

    def bgr01(x):
        return torch.from_numpy(x.transpose(2, 0, 1).copy()).float()[None] / 255

    got = calculate_lpips(a, b, random_backbone_for_tests=True, device='cpu')
    rgb = calculate_lpips_pt(rgb01(a), rgb01(b), random_backbone_for_tests=True).item()
    bgr = calculate_lpips_pt(bgr01(a), bgr01(b), random_backbone_for_tests=True).item()
    assert got == pytest.approx(rgb, rel=1e-5)
    assert got != pytest.approx(bgr, rel=1e-3)
    net = get_lpips_network('alex', random_backbone_for_tests=True, device='cpu')
    direct = net(rgb01(a) * 2 - 1, rgb01(b) * 2 - 1).item()  # lpips' own convention: [-1, 1]
    assert got == pytest.approx(direct, rel=1e-5)


def test_batch_function_matches_single_images(images):
    def rgb01(x):
        return torch.from_numpy(x[..., ::-1].transpose(2, 0, 1).copy()).float() / 255

    x = torch.stack([rgb01(images['a']), rgb01(images['other'])])
    y = torch.stack([rgb01(images['noisy']), rgb01(images['a'])])
    batch = calculate_lpips_pt(x, y, random_backbone_for_tests=True)
    assert batch.shape == (2,)
    singles = [
        calculate_lpips(images['a'], images['noisy'], random_backbone_for_tests=True, device='cpu'),
        calculate_lpips(images['other'], images['a'], random_backbone_for_tests=True, device='cpu'),
    ]
    assert batch.tolist() == pytest.approx(singles, rel=1e-4)
    with pytest.raises(ValueError, match='same shape'):
        calculate_lpips_pt(x, y[:, :, :32], random_backbone_for_tests=True)


def test_registered_and_called_through_basicsr(images):
    assert METRIC_REGISTRY.get('calculate_lpips') is calculate_lpips
    assert METRIC_REGISTRY.get('calculate_lpips_pt') is calculate_lpips_pt
    assert calculate_lpips.__module__.startswith('flowprior_plugin.')
    lq = images['a'][::4, ::4]
    data = dict(img=images['a'], img2=images['noisy'], lq=lq)  # what our models pass
    opt = {'type': 'calculate_lpips', 'random_backbone_for_tests': True, 'crop_border': 0, 'test_y_channel': False}
    got = calculate_metric(data, opt)
    assert got == pytest.approx(calculate_lpips(images['a'], images['noisy'], random_backbone_for_tests=True))


def test_missing_backbone_raises_missing_weights_error_naming_the_hub_path(images, offline):
    ok, reason = lpips_available('alex')
    assert not ok
    assert backbone_hub_cache_path('alex') in reason and 'weights_path' in reason
    assert offline == []  # lpips_available never downloads
    with pytest.raises(MissingWeightsError) as info:
        calculate_lpips(images['a'], images['noisy'], device='cpu')
    message = str(info.value)
    assert os.environ['TORCH_HOME'] in message
    assert backbone_hub_cache_path('alex') in message and 'alexnet-owt-7be5be79.pth' in message
    assert 'weights_path' in message
    assert offline == ['https://download.pytorch.org/models/alexnet-owt-7be5be79.pth']
    assert isinstance(info.value, FileNotFoundError)  # MissingWeightsError's base, for generic handlers


def test_weights_path_loads_the_backbone_file(tmp_path, images, offline):
    path = tmp_path / 'alexnet-owt-7be5be79.pth'
    state = _save_alexnet_features(path)
    assert lpips_available('alex', weights_path=str(path)) == (
        True,
        f'LPIPS (alex) backbone from weights_path {path}',
    )
    net = get_lpips_network('alex', weights_path=str(path), device='cpu')
    assert torch.equal(net.net.slice1._modules['0'].weight, state['features.0.weight'])
    assert torch.equal(net.net.slice5._modules['10'].bias, state['features.10.bias'])
    score = calculate_lpips(images['a'], images['noisy'], weights_path=str(path), device='cpu')
    assert score > 0
    assert offline == []


def test_hub_cache_file_is_used_by_the_default_route(images, offline):
    cached = backbone_hub_cache_path('alex')
    os.makedirs(os.path.dirname(cached))
    state = _save_alexnet_features(cached, seed=5, full=True)
    assert lpips_available('alex')[0]
    net = get_lpips_network('alex', device='cpu')
    assert torch.equal(net.net.slice2._modules['3'].weight, state['features.3.weight'])
    assert calculate_lpips(images['a'], images['a'], device='cpu') == pytest.approx(0, abs=1e-6)
    assert offline == []


@pytest.mark.parametrize('net', ['alex', 'squeeze'])
def test_default_route_builds_the_network_lpips_itself_builds(net, images, offline):
    """Same hub file: our backbone loading gives lpips' own pretrained network, score for score."""
    import torchvision

    cached = backbone_hub_cache_path(net)
    os.makedirs(os.path.dirname(cached))
    if net == 'alex':
        _save_alexnet_features(cached, seed=9, full=True)
    else:
        generator = torch.Generator().manual_seed(9)
        full = torchvision.models.squeezenet1_1().state_dict()
        torch.save({k: torch.randn(v.shape, generator=generator) * 0.05 for k, v in full.items()}, cached)
    ours = get_lpips_network(net, device='cpu')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # lpips' deprecated pretrained= call
        theirs = lpips.LPIPS(net=net, verbose=False).eval()  # torchvision reads the hub file itself
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    x = torch.from_numpy(images['a'].transpose(2, 0, 1).copy()).float()[None] / 127.5 - 1
    y = torch.from_numpy(images['other'].transpose(2, 0, 1).copy()).float()[None] / 127.5 - 1
    with torch.no_grad():
        assert torch.equal(ours(x, y), theirs(x, y))
    assert offline == []


def test_bad_options_are_clear_errors(tmp_path, images):
    missing = tmp_path / 'nowhere' / 'alexnet.pth'
    with pytest.raises(MissingWeightsError, match=str(missing)):
        calculate_lpips(images['a'], images['a'], weights_path=str(missing))
    assert lpips_available('alex', weights_path=str(missing))[0] is False
    wrong = tmp_path / 'wrong.pth'
    torch.save({'features.0.weight': torch.zeros(3, 3, 3, 3)}, wrong)
    with pytest.raises(CheckpointMismatchError, match='features.0.weight'):
        get_lpips_network('alex', weights_path=str(wrong), device='cpu')
    with pytest.raises(OptionError, match='not both'):
        get_lpips_network('alex', weights_path=str(wrong), random_backbone_for_tests=True)
    with pytest.raises(OptionError, match='net must be one of'):
        calculate_lpips(images['a'], images['a'], net='resnet', random_backbone_for_tests=True)
    with pytest.raises(ValueError, match='same shape'):
        calculate_lpips(images['a'], images['a'][:32], random_backbone_for_tests=True)


def test_allow_download_false_reports_missing_without_trying(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    attempts = []
    monkeypatch.setattr(torch.hub, 'download_url_to_file', lambda url, *a, **k: attempts.append(url))
    lpips_metric.clear_lpips_cache()
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(MissingWeightsError, match='downloads are off'):
        lpips_metric.calculate_lpips(image, image, allow_download=False)
    assert attempts == []
