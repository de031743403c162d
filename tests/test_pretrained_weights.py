"""pretrained_weights: the lookup order, the one-line missing-file error, and state loading (no network)."""

from __future__ import annotations

import os

import pytest
import torch
from basicsr.archs import vgg_arch
from conftest import offline_torch_hub
from torch import nn

from flowprior_plugin.errors import CheckpointMismatchError, MissingWeightsError
from flowprior_plugin.pretrained_weights import (
    basicsr_pretrained_path,
    existing_weights_path,
    hub_cache_path,
    load_backbone_state,
    load_pretrained_state,
    local_weights_file,
    missing_weights_error,
    read_state_file,
    weights_filename,
    weights_url,
)

VGG19_FILE = 'vgg19-dcbb9e9d.pth'
VGG19_URL = 'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth'
WHO = {'user': 'TestUser', 'option_place': 'in the test options'}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """An empty working folder (no experiments/pretrained_models), an empty torch hub, failing
    downloads. Returns the list of URLs a download was attempted for."""
    monkeypatch.chdir(tmp_path)
    return offline_torch_hub(tmp_path, monkeypatch)


def _save_marker(path, value: float) -> None:
    """A tiny state dict whose one tensor says which file it came from."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({'features.0.bias': torch.tensor([value])}, path)


def test_names_urls_and_the_hub_path_follow_torch_home(tmp_path, monkeypatch):
    assert weights_url('vgg19') == VGG19_URL
    assert weights_filename('vgg19') == VGG19_FILE
    assert weights_filename('alexnet') == 'alexnet-owt-7be5be79.pth'
    assert weights_filename('vgg16_bn') == 'vgg16_bn-6c64b313.pth'
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'elsewhere'))
    assert hub_cache_path('vgg19') == str(tmp_path / 'elsewhere' / 'hub' / 'checkpoints' / VGG19_FILE)


def test_basicsr_place_is_vgg19s_only():
    assert basicsr_pretrained_path('vgg19') == vgg_arch.VGG_PRETRAIN_PATH
    assert basicsr_pretrained_path('vgg16') is None and basicsr_pretrained_path('alexnet') is None


def test_lookup_order_weights_path_then_basicsr_then_hub_then_download(tmp_path, offline, monkeypatch):
    explicit, basicsr, hub = str(tmp_path / 'mine.pth'), vgg_arch.VGG_PRETRAIN_PATH, hub_cache_path('vgg19')
    _save_marker(explicit, 1)
    _save_marker(basicsr, 2)
    _save_marker(hub, 3)

    def source_of(**kwargs):
        state, path = load_pretrained_state('vgg19', **WHO, **kwargs)
        return state['features.0.bias'].item(), path

    assert source_of(weights_path=explicit) == (1, explicit)
    assert local_weights_file('vgg19') == basicsr
    assert source_of() == (2, basicsr)
    os.remove(basicsr)
    assert local_weights_file('vgg19') == hub
    assert source_of() == (3, hub)
    os.remove(hub)
    assert local_weights_file('vgg19') is None

    downloads = []

    def fake_download(url, **kwargs):
        downloads.append((url, kwargs))
        return {'features.0.bias': torch.tensor([4.0])}

    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', fake_download)
    assert source_of() == (4, hub)
    assert downloads == [
        (VGG19_URL, {'map_location': 'cpu', 'progress': True, 'check_hash': True, 'weights_only': True})
    ]
    assert offline == []


def test_other_networks_ignore_basicsrs_vgg19_file(offline):
    _save_marker(vgg_arch.VGG_PRETRAIN_PATH, 2)
    assert local_weights_file('vgg16') is None
    with pytest.raises(MissingWeightsError, match='vgg16-397923af.pth') as info:
        load_pretrained_state('vgg16', **WHO)
    assert 'VGG_PRETRAIN_PATH' not in str(info.value)
    assert offline == [weights_url('vgg16')]


def test_absent_weights_give_one_line_naming_file_places_option_and_url(offline):
    with pytest.raises(MissingWeightsError) as info:
        load_pretrained_state('vgg19', **WHO)
    message = str(info.value)
    assert '\n' not in message and message.startswith('TestUser needs the ImageNet vgg19 weights vgg19-dcbb9e9d.pth')
    assert os.path.abspath(vgg_arch.VGG_PRETRAIN_PATH) in message and hub_cache_path('vgg19') in message
    assert f'weights_path: /path/to/{VGG19_FILE} in the test options' in message and VGG19_URL in message
    assert 'could not be downloaded (network disabled in tests' in message
    assert isinstance(info.value, FileNotFoundError)  # MissingWeightsError's base, for generic handlers
    assert offline == [VGG19_URL]  # one attempt


def test_allow_download_false_reports_without_trying(offline):
    with pytest.raises(MissingWeightsError, match=r'downloads are off \(allow_download: false\)'):
        load_pretrained_state('alexnet', **WHO, allow_download=False)
    assert offline == []
    message = str(missing_weights_error('alexnet', 'LPIPS (alex)', 'in the metric options', 'and so on'))
    assert 'VGG_PRETRAIN_PATH' not in message and hub_cache_path('alexnet') in message


def test_a_download_that_lands_but_cannot_be_read_is_not_reported_as_missing(monkeypatch):
    def broken_download(url, **kwargs):
        _save_marker(hub_cache_path('alexnet'), 0)
        raise RuntimeError('corrupt file')

    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', broken_download)
    with pytest.raises(RuntimeError, match='corrupt file'):
        load_pretrained_state('alexnet', **WHO)


def test_weights_path_must_exist_and_expands_home(tmp_path, monkeypatch, offline):
    missing = tmp_path / 'nowhere' / VGG19_FILE
    with pytest.raises(MissingWeightsError, match=f'TestUser weights_path {missing} does not exist') as info:
        load_pretrained_state('vgg19', str(missing), **WHO)
    assert VGG19_FILE in str(info.value) and VGG19_URL in str(info.value)
    monkeypatch.setenv('HOME', str(tmp_path))
    _save_marker(tmp_path / 'w.pth', 5)
    assert existing_weights_path('vgg19', '~/w.pth', 'TestUser') == str(tmp_path / 'w.pth')
    assert offline == []


def test_read_state_file_unwraps_a_state_dict_entry(tmp_path):
    torch.save({'state_dict': {'a': torch.ones(2)}, 'epoch': 3}, tmp_path / 'wrapped.pth')
    assert list(read_state_file(str(tmp_path / 'wrapped.pth'))) == ['a']


def test_load_backbone_state_maps_keys_checks_shapes_and_ignores_extras():
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    generator = torch.Generator().manual_seed(0)
    state = {
        f'features.{k}': torch.randn(v.shape, generator=generator) if v.is_floating_point() else v + 7
        for k, v in target.state_dict().items()
    }
    state['classifier.0.weight'] = torch.zeros(2, 2)  # not needed: ignored
    load_backbone_state(target, state, 'file.pth', 'net', key_in_state=lambda key: f'features.{key}')
    assert torch.equal(target[0].weight, state['features.0.weight'])
    assert torch.equal(target[1].running_var, state['features.1.running_var'])
    assert target[1].num_batches_tracked.item() == 7

    # torchvision's BatchNorm VGG files predate num_batches_tracked: accepted, the counter stays 0.
    old = {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    load_backbone_state(fresh, old, 'old.pth', 'net', key_in_state=lambda key: f'features.{key}')
    assert fresh[1].num_batches_tracked.item() == 0
    assert torch.equal(fresh[1].running_mean, old['features.1.running_mean'])

    wrong = dict(state, **{'features.0.weight': torch.zeros(4, 3, 5, 5)})
    del wrong['features.0.bias']
    with pytest.raises(CheckpointMismatchError) as info:
        load_backbone_state(target, wrong, 'bad.pth', 'net', key_in_state=lambda key: f'features.{key}', context=' (x)')
    message = str(info.value)
    assert message.startswith('bad.pth is not a torchvision net state dict (x)')
    assert "missing keys ['features.0.bias']" in message
    assert 'features.0.weight (4, 3, 5, 5) (expected (4, 3, 3, 3))' in message
