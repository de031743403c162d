"""The releases' evaluation protocols: golden numbers of the releases' own code, and ``basicsr test``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.data import build_dataloader, build_dataset
from basicsr.metrics import calculate_metric
from basicsr.metrics.psnr_ssim import calculate_psnr
from basicsr.models import build_model
from conftest import TINY_LINF, finalize_options, load_golden, paired_dataset, run_cli, write_paired_images

from flowprior_plugin.errors import InputShapeError, OptionError
from flowprior_plugin.metrics import PROTOCOLS, evaluate_as_released, matlab_imresize

GOLDEN = 'metrics_protocols_seed0.pt'
TOLERANCE = 1e-4  # the bound, in dB for PSNRs and in SSIM units


@pytest.fixture(scope='module')
def cases(reference_dir) -> list[dict]:
    return [
        {key: value.numpy() if isinstance(value, torch.Tensor) else value for key, value in case.items()}
        for case in load_golden(reference_dir, GOLDEN)['cases']
    ]


@pytest.mark.parametrize('protocol', sorted(PROTOCOLS))
def test_every_golden_case_is_reproduced(cases, protocol):
    assert len(cases) == 5
    for case in cases:
        got = evaluate_as_released(case['sr_f'], case['hr_u8'], case['lr_u8'], case['scale'], protocol)
        expected = case[protocol]
        assert set(got) == set(expected), (case['photo'], protocol)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=TOLERANCE), (case['photo'], case['scale'], protocol, key)


def test_matlab_imresize_makes_the_releases_lr_exactly(cases):
    # The golden LR files come from the MIT port on the uint8 HR: every pixel must agree, at x2, x3,
    # x4 and x8 (this is what the SRFlow-LP LR-PSNR downscale rests on).
    for case in cases:
        down = matlab_imresize(case['hr_u8'], 1 / case['scale'])
        assert down.dtype == np.uint8 and down.shape == case['lr_u8'].shape
        assert np.array_equal(down, case['lr_u8']), (case['photo'], case['scale'])


def test_uint8_resize_rounds_after_each_axis_unlike_one_final_rounding(cases):
    # The port rounds to uint8 between the two axes; rounding once at the end differs on some pixels.
    hr = cases[0]['hr_u8']
    once = np.clip(np.round(matlab_imresize(hr.astype(np.float64), 0.25)), 0, 255).astype(np.uint8)
    assert not np.array_equal(once, matlab_imresize(hr, 0.25))


def test_matlab_imresize_keeps_a_constant_image_and_upscales_by_the_given_factor():
    flat = np.full((9, 7, 3), 0.3)
    assert np.allclose(matlab_imresize(flat, 2.0), 0.3) and matlab_imresize(flat, 2.0).shape == (18, 14, 3)
    assert np.allclose(matlab_imresize(flat, 1 / 3), 0.3) and matlab_imresize(flat, 1 / 3).shape == (3, 3, 3)


def _photo(seed: int = 0, shape=(48, 40, 3)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (shape[0] // 8, shape[1] // 8, 3)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(0, 254).astype(np.uint8)


def test_srflow_lp_truncates_the_sr_where_rounding_would_not():
    hr = _photo()
    lr = matlab_imresize(hr, 0.25)
    # 0.9 of a level above each HR value: truncation gives back the HR (infinite PSNR), rounding would not.
    sr = ((hr.astype(np.float32) + 0.9) / 255).astype(np.float32)
    assert evaluate_as_released(sr, hr, lr, 4, 'srflow_lp')['psnr'] == math.inf
    # The LINF-LP protocol never quantises: 0.9 of a level everywhere (4-pixel shave aside).
    expected = 10 * math.log10(255**2 / 0.9**2)
    assert evaluate_as_released(sr, hr, lr, 4, 'linf_lp_div2k')['psnr'] == pytest.approx(expected, abs=1e-4)


def test_linf_lp_clamps_the_sr_before_measuring():
    hr = _photo()
    hr[:] = 255
    lr = matlab_imresize(hr, 0.5)
    sr = np.full(hr.shape, 1.7, dtype=np.float32)
    scores = evaluate_as_released(sr, hr, lr, 2, 'linf_lp_div2k')
    assert scores['psnr'] == math.inf and scores['lr_psnr'] == math.inf and scores['ssim'] == pytest.approx(1.0)


def test_benchmark_protocol_scores_the_y_channel_only():
    # A change of colour that keeps Y (65.738 R + 129.057 G + 25.064 B) is invisible to the benchmark
    # protocol and not to the DIV2K one.
    hr = 60 + _photo(1) // 2  # mid-range: the shifted SR below stays inside [0, 1] (no clamping)
    lr = matlab_imresize(hr, 0.5)
    sr = hr / 255.0
    sr[..., 0] += 0.01 * 129.057 / 65.738
    sr[..., 1] -= 0.01
    bench = evaluate_as_released(sr, hr, lr, 2, 'linf_lp_benchmark')
    div2k = evaluate_as_released(sr, hr, lr, 2, 'linf_lp_div2k')
    assert set(bench) == {'psnr', 'lr_psnr'}
    assert bench['psnr'] > 100
    expected = 10 * math.log10(3 / ((0.01 * 129.057 / 65.738) ** 2 + 0.01**2))  # mean over R, G, B
    assert div2k['psnr'] == pytest.approx(expected, abs=1e-6)


def test_shave_that_leaves_nothing_gives_nan_with_a_warning():
    hr = _photo(shape=(32, 32, 3))
    lr = matlab_imresize(hr, 1 / 8)  # 4x4: an 8-pixel shave leaves nothing
    with pytest.warns(UserWarning, match='8-pixel shave leaves nothing of a 4x4 image'):
        scores = evaluate_as_released(hr / 255.0, hr, lr, 8, 'linf_lp_div2k')
    assert math.isnan(scores['lr_psnr']) and scores['psnr'] == math.inf


@pytest.mark.parametrize(
    ('change', 'error', 'message'),
    [
        ({'protocol': 'srflow'}, OptionError, "protocol: expected one of .* got 'srflow'"),
        ({'sr': 'uint8'}, InputShapeError, 'sr: expected the float SR'),
        ({'hr': 'float'}, InputShapeError, 'hr: expected uint8'),
        ({'sr': 'crop'}, InputShapeError, r'sr and hr: expected the same shape, got \(44, 40, 3\) and \(48, 40, 3\)'),
        ({'sr': 'nan'}, InputShapeError, 'sr: 1 non-finite values'),
        ({'scale': 2.5}, ValueError, 'scale: the releases evaluate integer scales'),
        ({'scale': 2}, InputShapeError, r'LR-PSNR: the SR \(48, 40, 3\) downscaled by 1/2 is \(24, 20, 3\)'),
    ],
)
def test_bad_inputs_fail_with_one_line_naming_the_problem(change, error, message):
    hr = _photo()
    args = {'sr': hr / 255.0, 'hr': hr, 'lr': matlab_imresize(hr, 0.25), 'scale': 4, 'protocol': 'srflow_lp'}
    edits = {
        'uint8': lambda a: a.astype(np.uint8),
        'float': lambda a: a.astype(np.float32),
        'crop': lambda a: a[:44],
        'nan': lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a),
    }
    for key, value in change.items():
        args[key] = edits[value](args[key]) if value in edits else value
    with pytest.raises(error, match=message):
        evaluate_as_released(**args)


def test_registered_metric_takes_basicsr_bgr_images_and_infers_the_scale(cases):
    case = cases[3]  # x3
    data = {
        'img': case['sr_u8'][..., ::-1],
        'img2': case['hr_u8'][..., ::-1],
        'lq': case['lr_u8'][..., ::-1],
        'sr_float_rgb': case['sr_f'],
    }
    for protocol, quantities in PROTOCOLS.items():
        for quantity in quantities:
            opt = {'type': 'calculate_release_protocol', 'protocol': protocol, 'quantity': quantity}
            got = calculate_metric(data, opt)
            assert got == pytest.approx(case[protocol][quantity], abs=TOLERANCE), (protocol, quantity)
    opt = {'type': 'calculate_release_protocol', 'protocol': 'linf_lp_benchmark', 'quantity': 'psnr'}
    with pytest.raises(OptionError, match='needs the float SR'):
        calculate_metric({k: v for k, v in data.items() if k != 'sr_float_rgb'}, opt)
    with pytest.raises(OptionError, match=r"protocol 'linf_lp_benchmark' reports \['psnr', 'lr_psnr'\], got 'ssim'"):
        calculate_metric(data, {**opt, 'quantity': 'ssim'})


# ---------------------------------------------------------------- through `basicsr test`
RELEASE_METRICS = {
    f'{quantity}_{protocol}': {'type': 'calculate_release_protocol', 'protocol': protocol, 'quantity': quantity}
    for protocol, quantities in PROTOCOLS.items()
    for quantity in quantities
}


@pytest.fixture(scope='module')
def cli_run(tmp_path_factory):
    """A fresh tiny LINF (its SR overshoots [0, 1] a little) tested at tau 0 by ``basicsr test``
    with BasicSR's PSNR and every release-protocol metric; 48x64 HR (12x16 LR) so that the x4
    shave leaves pixels."""
    root = tmp_path_factory.mktemp('release_protocol')
    data = write_paired_images(root / 'data', count=2, hr_size=(48, 64), scale=4)
    torch.manual_seed(3)
    torch.save({'params': build_network(dict(TINY_LINF)).state_dict()}, root / 'flow.pth')
    dataset = paired_dataset(data)
    opt = {
        'name': 'protocols',
        'model_type': 'FlowLikelihoodModel',
        'scale': 4,
        'num_gpu': 0,
        'datasets': {'test_1': dataset},
        'network_g': dict(TINY_LINF),
        'path': {'pretrain_network_g': str(root / 'flow.pth')},
        'val': {
            'save_img': True,
            'temperatures': [0.0],
            'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0}, **RELEASE_METRICS},
        },
    }
    (root / 'test.yml').write_text(yaml.safe_dump(opt))
    result = run_cli(['test', '-opt', 'test.yml'], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(root / 'results' / 'protocols' / 'metrics_tiny.csv') as handle:
        rows = {row['image']: row for row in csv.DictReader(handle)}
    return {'root': root, 'opt': opt, 'data': data, 'rows': rows}


def _rgb(path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1])


def test_basicsr_test_writes_the_release_numbers_of_the_float_sr(cli_run):
    """The CSV equals ``evaluate_as_released`` on the model's float SR (recomputed here from the same
    checkpoint), and differs from the same protocols applied to the rounded image BasicSR saves."""
    rows = cli_run['rows']
    assert sorted(rows) == ['img000', 'img001']
    opt = finalize_options(cli_run['opt'], cli_run['root'] / 'inprocess', is_train=False)
    model = build_model(opt)
    loader = build_dataloader(build_dataset(opt['datasets']['test_1']), opt['datasets']['test_1'], num_gpu=0)
    gaps = []
    for batch in loader:
        name = Path(batch['lq_path'][0]).stem
        model.feed_data(batch)
        model.test()
        sr = model.output[0].permute(1, 2, 0).numpy()
        hr, lr = _rgb(cli_run['data'] / 'hr' / f'{name}.png'), _rgb(cli_run['data'] / 'lr' / f'{name}.png')
        saved = _rgb(cli_run['root'] / 'results' / 'protocols' / 'visualization' / 'tiny' / 'tau0' / f'{name}.png')
        row = rows[name]
        # BasicSR's own PSNR still scores the rounded image it saves.
        assert float(row['psnr']) == pytest.approx(calculate_psnr(saved, hr, crop_border=0), abs=1e-9)
        for protocol in PROTOCOLS:
            want = evaluate_as_released(sr, hr, lr, 4, protocol)
            rounded = evaluate_as_released(saved / 255.0, hr, lr, 4, protocol)
            for quantity, value in want.items():
                got = float(row[f'{quantity}_{protocol}'])
                assert got == pytest.approx(value, abs=1e-6), (name, protocol, quantity)
                gaps.append((abs(rounded[quantity] - value), protocol, quantity))
    # The float SR matters: for every protocol some quantity moves by far more than the tolerance above.
    for protocol in PROTOCOLS:
        assert max(gap for gap, p, _ in gaps if p == protocol) > 1e-3, protocol


def test_basicsr_test_summary_lists_both_protocols_beside_basicsr(cli_run):
    table = (cli_run['root'] / 'results' / 'protocols' / 'summary_tiny.md').read_text()
    header = next(line for line in table.splitlines() if line.startswith('| method'))
    for name in ['psnr', *RELEASE_METRICS]:
        assert f' {name} ' in header, name
