"""Tiled prediction (flowprior_plugin.tiling): tiles equal the whole image within the seam tolerance."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_HCFLOW, TINY_LINF, TINY_PRIOR, TINY_SRFLOW, finalize_options, tiny_module

from flowprior_plugin.archs.hcflow_arch import HCFlowNet
from flowprior_plugin.archs.linf_arch import LINFNet
from flowprior_plugin.archs.srflow_arch import SRFlowNet
from flowprior_plugin.layers.random_init import randomize_parameters_
from flowprior_plugin.models.base_flow_model import sample_diversity
from flowprior_plugin.models.flow_prior_model import FlowPriorModel
from flowprior_plugin.tiling import (
    TileOptions,
    _spans,
    predict_tiled,
    predict_whole,
    slice_latents,
    tile_grid,
)

# Tiled vs whole, after clamping to [0, 1], with the margins used here (tiny random flows).
TOLERANCE = 1e-4
# The learned prior's generator (a UNet) sees further than the flow: the target, 1/255.
PRIOR_TOLERANCE = 1 / 255
FLOWS = {
    'SRFlow': (SRFlowNet, TINY_SRFLOW),  # tile_rrdb='crop' (the default): the RRDB runs on each box
    'SRFlow-whole-rrdb': (SRFlowNet, dict(TINY_SRFLOW, tile_rrdb='whole')),
    'HCFlow': (HCFlowNet, TINY_HCFLOW),
    'LINF': (LINFNet, TINY_LINF),
}
TEMPERATURE_METHODS = {'tau0': lambda tile: (None, 0.0), 'tau0.8': lambda tile: (None, 0.8)}


def _flow(family: str):
    cls, options = FLOWS[family]
    return tiny_module(cls, {k: v for k, v in options.items() if k != 'type'})


def _max_diff(a: dict, b: dict) -> float:
    return max(float((x.clamp(0, 1) - y.clamp(0, 1)).abs().max()) for k in a for x, y in zip(a[k], b[k], strict=True))


def _both(flow, lq, options, out_size=None, methods=TEMPERATURE_METHODS, samples=1):
    with torch.no_grad():
        whole = predict_whole(flow, lq, methods, torch.Generator().manual_seed(3), out_size, samples)
        tiled = predict_tiled(flow, lq, methods, torch.Generator().manual_seed(3), options, out_size, samples)
    return whole, tiled


@pytest.mark.parametrize(
    ('family', 'out_size'),
    [('SRFlow', None), ('SRFlow-whole-rrdb', None), ('HCFlow', None), ('LINF', None), ('LINF', (91, 83))],
)
def test_tiled_equals_whole_for_every_flow(family, out_size):
    flow = _flow(family)
    # Larger than one 8 + 2 * 8 box along both axes, so there are tiles (5 x 5 here).
    lq = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(1))
    whole, tiled = _both(flow, lq, TileOptions(8, 8), out_size)
    expected = out_size or (160, 144)
    assert all(img.shape[-2:] == expected for draws in tiled.values() for img in draws)
    assert _max_diff(whole, tiled) <= TOLERANCE
    # The same latents: the tau 0.8 sample differs from tau 0 as much tiled as whole.
    assert _max_diff({'a': whole['tau0.8']}, {'a': whole['tau0']}) > 0.01


@pytest.mark.parametrize('family', ['SRFlow', 'SRFlow-whole-rrdb', 'HCFlow'])
def test_margin_is_what_removes_the_seams(family):
    # Without a margin the tile borders show (the check above is not vacuous); a margin shrinks them.
    flow = _flow(family)
    lq = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(1))
    errors = [_max_diff(*_both(flow, lq, TileOptions(8, overlap))) for overlap in (0, 2, 8)]
    assert errors[0] > 1e-3
    assert errors[0] > errors[1] > errors[2]


def test_linf_window_tiles_are_exact_and_on_the_patch_grid():
    flow = _flow('LINF')
    lq = torch.rand(1, 3, 13, 11, generator=torch.Generator().manual_seed(2))
    whole, tiled = _both(flow, lq, TileOptions(4, 0), (40, 31))  # no margin: windows are exact
    assert _max_diff(whole, tiled) <= 1e-5
    grid = tile_grid((40, 31), 40 / 13, TileOptions(4, 2), flow.tile_alignment())
    assert all(v % 3 == 0 or v in (40, 31) for box, core in grid for v in (*box, *core))


@pytest.mark.parametrize(
    ('length', 'core', 'margin', 'align'), [(100, 16, 8, 4), (97, 24, 6, 2), (33, 8, 4, 1), (32, 8, 12, 4)]
)
def test_tile_boxes_have_one_size_and_cover_the_image(length, core, margin, align):
    spans = _spans(length, core, margin, align)
    full = core + 2 * margin
    if length <= full:
        assert spans == [(0, length, 0, length)]
        return
    # Cores partition the axis; every box holds its core with at least the margin on inner sides.
    assert [c0 for _, _, c0, _ in spans] == list(range(0, length, core))
    assert spans[-1][3] == length
    for start, stop, c0, c1 in spans:
        assert start % align == 0 and (stop % align == 0 or stop == length)
        assert start <= max(0, c0 - margin) and stop >= min(length, c1 + margin)
        # One box size (the last may be up to align - 1 longer, to reach an unaligned border).
        assert full <= stop - start < full + align


def test_srflow_tiles_cut_the_whole_images_rrdb_features():
    # The RRDB trunk runs once on the whole LR; a tile's conditionals are the whole image's under
    # its box (exact), which recomputing the RRDB on the tile's own crop would not give.
    flow = _flow('SRFlow-whole-rrdb')
    lq = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    box = (24, 72, 16, 48)  # HR rows 24..72, columns 16..48: LR 6..18, 4..12 (on the 2-pixel grid)
    with torch.no_grad():
        whole = flow.condition(lq).features
        tile = flow.tile_inputs(lq, flow.tile_context(lq, (96, 80)), box, (96, 80))
        recomputed = flow.condition(tile.lq).features
    assert tile.lq.shape[-2:] == (12, 8)
    for name, feature in whole.items():
        per_lr = feature.shape[-2] // 24 or 0.5  # feature pixels per LR pixel (fea_up0: half)
        cut = feature[..., int(6 * per_lr) : int(18 * per_lr), int(4 * per_lr) : int(12 * per_lr)]
        assert tile.cond.features[name].shape == cut.shape, name
        assert (tile.cond.features[name] - cut).abs().max() <= 1e-5, name
        assert (recomputed[name] - cut).abs().max() > 1e-3, name


def test_slice_latents_follows_each_level_stride():
    z = [torch.arange(8 * 8.0).reshape(1, 1, 8, 8), torch.arange(4.0).reshape(1, 1, 2, 2)]
    part = slice_latents(z, (8, 16, 0, 8), [2, 8])
    assert part[0].shape[-2:] == (4, 4) and part[0][0, 0, 0, 0] == 32
    assert part[1].shape[-2:] == (1, 1) and part[1][0, 0, 0, 0] == 2


def test_tile_options_errors_are_one_line():
    assert TileOptions.from_option(None) is None
    assert TileOptions.from_option({'size': 64, 'overlap': 4}) == TileOptions(64, 4)
    assert TileOptions.from_option(32).size == 32
    for bad, words in (({'overlap': 4}, 'size missing'), ({'size': 8, 'pad': 1}, 'pad unknown'), ({'size': 0}, 'size')):
        with pytest.raises(ValueError, match=words):
            TileOptions.from_option(bad)


def test_a_flow_without_tiling_support_gets_a_clear_message():
    class Plain:
        scale = 4

    with pytest.raises(ValueError, match='Plain does not support tiled prediction'):
        predict_tiled(Plain(), torch.rand(1, 3, 8, 8), TEMPERATURE_METHODS, None, TileOptions(4))


# ---------------------------------------------------------------- the models' test path


def _prior_model(tmp_path, flow: dict, val: dict) -> FlowPriorModel:
    opt = {
        'name': 'tiles',
        'model_type': 'FlowPriorModel',
        'scale': 4,
        'network_flow': dict(flow),
        'network_g': copy.deepcopy(TINY_PRIOR),
        'path': {},
        'val': val,
    }
    model = FlowPriorModel(finalize_options(opt, tmp_path, is_train=False))
    generator = torch.Generator().manual_seed(0)
    randomize_parameters_(model.net_flow, generator)
    randomize_parameters_(model.net_g, generator, strength=0.3)
    return model


def _predict(model, lq, methods, tile):
    model.opt['val']['tile'] = tile
    with torch.no_grad():
        return model.predict(lq, methods, torch.Generator().manual_seed(5))


@pytest.mark.parametrize('flow', [TINY_SRFLOW, TINY_LINF], ids=['SRFlow', 'LINF'])
def test_val_tile_gives_the_whole_image_prior(tmp_path, flow):
    model = _prior_model(tmp_path, flow, {'temperatures': [0.7], 'prior_temperatures': [0.3]})
    lq = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    methods = model.evaluation_methods()
    assert methods == ['prior', 'prior+0.3', 'tau0.7']
    whole = _predict(model, lq, methods, None)
    tiled = _predict(model, lq, methods, {'size': 8, 'overlap': 8})
    assert _max_diff(whole, tiled) <= PRIOR_TOLERANCE
    assert _max_diff({'a': whole['prior']}, {'a': whole['prior+0.3']}) > 0.01  # the noise is there


def test_prior_samples_share_one_mean_and_report_diversity(tmp_path):
    model = _prior_model(tmp_path, TINY_SRFLOW, {'prior_temperatures': [0.3], 'samples': 3})
    lq = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    calls = []
    model.net_g.register_forward_hook(lambda *args: calls.append(1))  # counts the prior's runs
    out = _predict(model, lq, ['prior', 'prior+0.3'], None)
    assert len(out['prior']) == 1 and len(out['prior+0.3']) == 3
    assert len(calls) == 2  # once per method, not per sample
    assert sample_diversity(out['prior+0.3']) > 0.1
    assert sample_diversity(out['prior+0.3'][:1] * 2) == 0


def test_srflow_tile_rrdb_is_checked_and_adds_no_parameters():
    with pytest.raises(ValueError, match="tile_rrdb must be 'crop' or 'whole'"):
        _flow_with(tile_rrdb='band')
    crop, whole = _flow('SRFlow'), _flow('SRFlow-whole-rrdb')
    # An inference choice only: the same checkpoint keys and shapes in both modes.
    assert {k: v.shape for k, v in crop.state_dict().items()} == {k: v.shape for k, v in whole.state_dict().items()}
    lq = torch.rand(1, 3, 8, 8)
    assert crop.tile_context(lq, (32, 32)) is None and whole.tile_context(lq, (32, 32)) is not None


def _flow_with(**options):
    return tiny_module(SRFlowNet, {k: v for k, v in dict(TINY_SRFLOW, **options).items() if k != 'type'})
