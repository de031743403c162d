"""The README's main command, scaled down (--quick), and the report's verdict and targets on hand-made numbers."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import re
import subprocess
import sys
import time

import yaml
from conftest import REPO_ROOT

from flowprior_plugin.tools.demo import training_losses
from flowprior_plugin.tools.report_numbers import heldout_summary
from flowprior_plugin.tools.report_text import (
    check_targets,
    exploding_verdict,
    grid_verdict,
    objective_choice_section,
    temperature_verdict,
)

HELD_OUT = 6


# ---------------------------------------------------------------------------------------------- hand-made numbers
def _entry(psnr, lr_psnr=40.0, seam=None, periodicity=None, nonfinite=0):
    entry = {'psnr': psnr, 'ssim': 0.8, 'lr_psnr': lr_psnr, 'nonfinite': nonfinite, 'images': HELD_OUT}
    if seam is not None:
        entry.update(seam=seam, periodicity=periodicity)
    return entry


def _winning_summary() -> dict:
    """A run where the prior meets every target of issue #11."""
    linf = {}
    for scale in ('x2', 'x3', 'x4', 'x6', 'x8', 'x12'):
        linf[scale] = {
            'prior': _entry(27.0, seam=1.4, periodicity=0.008),
            'tau0': _entry(26.5, seam=2.4, periodicity=0.008),
            'tau0.5': _entry(26.0, seam=2.0, periodicity=0.006),
            'tau0.8': _entry(25.0, seam=1.9, periodicity=0.005),
        }
    srflow = {'x4': {'prior': _entry(27.0, 41.5), 'tau0': _entry(26.7, 36.4), 'tau0.9': _entry(24.0, 30.0)}}
    return {'srflow': srflow, 'linf': linf, 'hr': {'linf_seam': 1.1, 'linf_periodicity': 0.0002}}


def test_targets_follow_the_numbers():
    summary = _winning_summary()
    checks = check_targets(summary)
    assert len(checks) == 2 + 3 * 3 + 3 + 1  # SRFlow PSNR/LR-PSNR, 3 per in-distribution scale, 1 per OOD, non-finite
    assert all(ok is True for _, _, ok in checks), checks

    worse = copy.deepcopy(summary)
    worse['srflow']['x4']['prior']['lr_psnr'] = 36.0  # below τ = 0's 36.4
    worse['linf']['x3']['prior']['seam'] = 2.0  # not below τ = 0.8's 1.9
    worse['linf']['x4']['prior']['periodicity'] = 0.0103  # above 0.0002 + 0.01
    worse['linf']['x12']['prior']['psnr'] = 24.9  # below τ = 0.8's 25.0 (τ = 0 is not a target out of distribution)
    worse['linf']['x8']['prior']['psnr'] = 25.5  # below τ = 0 but above τ = 0.8: still met
    worse['linf']['x6']['prior']['nonfinite'] = 1
    failed = {target for target, _, ok in check_targets(worse) if ok is False}
    assert failed == {
        'SRFlow x4: prior LR-PSNR (dB) ≥ every fixed τ',
        'LINF x3: prior seam ratio < τ = 0 and τ = 0.8',
        'LINF x4: prior periodicity ≤ HR + 0.01',
        'LINF x12: prior PSNR (dB) ≥ τ = 0.8',
        'The prior never produces a non-finite image (both routes, every scale)',
    }
    numbers = dict((t, m) for t, m, _ in check_targets(worse))
    assert numbers['The prior never produces a non-finite image (both routes, every scale)'] == (
        f'1 of {7 * HELD_OUT} images non-finite'
    )

    del worse['linf']['x2']
    missing = {target for target, _, ok in check_targets(worse) if ok is None}
    assert 'LINF x2: prior PSNR (dB) ≥ every fixed τ' in missing


def test_verdict_lines_follow_the_numbers():
    summary = _winning_summary()
    assert 'supported by this run' in grid_verdict(summary) and 'not supported' not in grid_verdict(summary)
    assert 'x3 1.400 vs 2.400 and 1.900' in grid_verdict(summary)
    for scale in ('x2', 'x3', 'x4'):
        summary['linf'][scale]['prior'].update(seam=3.0, periodicity=0.5)
    assert 'not supported by this run' in grid_verdict(summary)
    summary['linf']['x2']['prior'].update(seam=1.0, periodicity=0.001)
    assert 'partly supported (2 of 6 checks)' in grid_verdict(summary)

    summary = _winning_summary()
    assert 'shows neither the failure nor its fix' in exploding_verdict(summary)
    summary['srflow']['x4']['tau0.9']['nonfinite'] = 2
    assert 'supported by this run: only temperature sampling' in exploding_verdict(summary)
    assert 'SRFlow (x4): τ = 0: 0, τ = 0.9: 2' in exploding_verdict(summary)
    summary['linf']['x12']['prior']['nonfinite'] = 1
    assert 'not supported by this run: the prior itself produced 1' in exploding_verdict(summary)


def test_fixed_temperature_verdict_reads_the_best_temperature_per_photo():
    summary = _winning_summary()
    # a: τ = 0 best, the prior better; b: τ = 0.9 best, the prior worse
    per_image = [
        {'image': 'a', 'method': 'prior', 'psnr': 30.0},
        {'image': 'a', 'method': 'tau0', 'psnr': 29.0},
        {'image': 'a', 'method': 'tau0.9', 'psnr': 25.0},
        {'image': 'b', 'method': 'prior', 'psnr': 20.0},
        {'image': 'b', 'method': 'tau0', 'psnr': 21.0},
        {'image': 'b', 'method': 'tau0.9', 'psnr': 22.0},
    ]
    line = temperature_verdict(summary, per_image)
    assert line.startswith('**Fixed temperature** (SRFlow x4): supported by this run.')
    assert 'PSNR (dB) 27.00 against 26.70 for the best fixed temperature (τ = 0)' in line
    assert 'τ = 0 on 1 (a); τ = 0.9 on 1 (b)' in line
    assert "each photo's own best temperature on 1 of 2 photos" in line
    summary['srflow']['x4']['prior']['lr_psnr'] = 30.0
    assert 'partly supported (1 of 2 checks)' in temperature_verdict(summary, per_image)


def _write_run(folder, dataset: str, scale: str, group: str, per_image: dict[str, dict[str, list[float]]]) -> None:
    """A test run as BaseFlowModel writes it: metrics_<dataset>.csv and the run table summary.json."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = ['psnr', 'ssim', 'lr_psnr', 'lpips']
    with open(folder / f'metrics_{dataset}.csv', 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['image', 'method', 'finite', *metrics])
        for method, values in per_image.items():
            for i, psnr in enumerate(values['psnr']):
                writer.writerow([f'img{i}', method, True, psnr, 0.5, 40.0, float('nan')])
    rows = [
        {
            'dataset': dataset,
            'scale': scale,
            'group': group,
            'method': method,
            'images': len(values['psnr']),
            'psnr': sum(values['psnr']) / len(values['psnr']),
            'ssim': 0.5,
            'lr_psnr': 40.0,
            'lpips': float('nan'),  # skipped offline
            'nonfinite': 0,
        }
        for method, values in per_image.items()
    ]
    path = folder / 'summary.json'
    old = json.loads(path.read_text())['rows'] if path.exists() else []
    path.write_text(json.dumps({'name': folder.name, 'rows': old + rows, 'skipped_metrics': {}}))


def test_heldout_summary_takes_only_held_out_sets_with_per_image_spread(tmp_path):
    srflow, linf = tmp_path / 'srflow', tmp_path / 'linf'
    _write_run(srflow, 'demo_heldout', 'x4', '', {'prior': {'psnr': [20.0, 22.0]}, 'tau0': {'psnr': [19.0, 19.0]}})
    _write_run(srflow, 'demo_val', 'x4', '', {'prior': {'psnr': [50.0]}, 'tau0': {'psnr': [50.0]}})
    _write_run(linf, 'demo_heldout_x2', 'x2', 'in-distribution', {'prior': {'psnr': [30.0, 34.0]}})
    _write_run(linf, 'demo_val_x3', 'x3', 'validation', {'prior': {'psnr': [50.0]}})
    summary = heldout_summary(srflow, linf, tmp_path / 'dataset')
    assert set(summary) == {'srflow', 'linf', 'hr'}
    assert summary['srflow']['x4']['prior']['psnr'] == 21.0 and summary['srflow']['x4']['prior']['psnr_std'] == 1.0
    assert summary['srflow']['x4']['tau0']['psnr_std'] == 0.0
    assert list(summary['linf']) == ['x2'] and summary['linf']['x2']['prior']['psnr_std'] == 2.0
    entry = summary['linf']['x2']['prior']
    assert 'lpips' not in entry  # not computed: left out
    assert entry['seam'] is None and entry['periodicity'] is None  # required for LINF: present, null
    assert entry['images'] == 2 and entry['nonfinite'] == 0
    assert math.isnan(summary['hr']['linf_seam'])  # no HR photos in this folder


def test_objective_choice_section_renders_the_file_or_says_it_is_missing(tmp_path):
    missing = '\n'.join(objective_choice_section(tmp_path / 'objective_choice.json'))
    assert 'objective_choice.json` is missing' in missing
    choice = {
        'measured': '2026-12-02',
        'split': 'validation photos rocket, brick',
        'srflow': {
            'chosen': 'pixel',
            'why': 'higher LR-PSNR',
            'candidates': {'latent': {'psnr': 25.1, 'lr_psnr': 38.0}, 'pixel': {'psnr': 25.6, 'lr_psnr': 41.2}},
        },
        'linf': {
            'chosen': 'latent',
            'why': 'lower periodicity',
            'candidates': {'latent': {'psnr': 26.0}},
            'alignment': {'window': {'psnr': 26.4}, 'release': {'psnr': 24.5}},
        },
    }
    path = tmp_path / 'objective_choice.json'
    path.write_text(json.dumps(choice))
    text = '\n'.join(objective_choice_section(path))
    assert 'Measured 2026-12-02 on the validation photos rocket, brick.' in text
    assert '### SRFlow: chosen **pixel**' in text and 'Why: higher LR-PSNR' in text
    assert '| pixel | 25.600 | 41.200 |' in text and '| release | 24.500 |' in text
    # a setting measured per scale becomes one row per scale
    choice['linf']['alignment'] = {'why': 'held out', 'window': {'x2': {'psnr': 32.1}, 'x4': {'psnr': 27.8}}}
    path.write_text(json.dumps(choice))
    text = '\n'.join(objective_choice_section(path))
    assert 'LR alignment of the training windows (held out):' in text
    assert '| window, x2 | 32.100 |' in text and '| window, x4 | 27.800 |' in text


def test_training_losses_come_from_the_train_section(tmp_path):
    opt = tmp_path / 'prior.yml'
    opt.write_text(
        yaml.safe_dump(
            {
                'train': {
                    'total_iter': 10,
                    'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
                    'latent_opt': {'type': 'LatentL1Loss', 'loss_weight': 0.1},
                }
            }
        )
    )
    assert training_losses(opt) == {
        'l_pix': {'option': 'pixel_opt', 'type': 'L1Loss', 'weight': 1.0},
        'l_latent': {'option': 'latent_opt', 'type': 'LatentL1Loss', 'weight': 0.1},
    }


# ---------------------------------------------------------------------------------------------- the quick demo
def _table(report: str, heading: str) -> list[list[str]]:
    """The cells of the rows of the first markdown table after ``heading`` (no header, no separator)."""
    lines = report.split(heading + '\n')[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('|'))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith('|'):
            break
        rows.append([cell.strip() for cell in line.strip('|').split('|')])
    return rows


def _linf_scales() -> list[str]:
    opt = yaml.safe_load((REPO_ROOT / 'options' / 'demo' / 'test_linf_prior_demo.yml').read_text())
    held = [d for d in opt['datasets'].values() if d['name'].startswith('demo_heldout')]
    return [f'x{float(d["test_scale"]):g}' for d in sorted(held, key=lambda d: float(d['test_scale']))]


def _methods(option_file: str) -> set[str]:
    opt = yaml.safe_load((REPO_ROOT / 'options' / 'demo' / option_file).read_text())
    return {'prior', *[f'tau{float(t):g}' for t in opt['val']['temperatures']]}


def test_quick_demo_writes_summary_report_plots_and_grids(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    started = time.time()
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'flowprior_plugin.tools.demo',
            '--quick',
            '--options-dir',
            str(REPO_ROOT / 'options' / 'demo'),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.time() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f'quick demo: {seconds:.0f} s')  # the CI budget is 2 minutes on two idle cores
    check_quick_demo(tmp_path, result.stdout, seconds)


def check_quick_demo(folder, out: str, seconds: float) -> None:
    """What a quick demo run in ``folder`` printed (``out``) and wrote."""
    for step in range(1, 8):
        assert f'step {step}/7' in out
    assert 'held out (verdict): chelsea, grace_hopper, coffee, camera, coins, moon' in out
    assert re.search(r'step 2/7 \(SRFlow, likelihood\): iter \d+/6, time left', out), 'no training progress'
    assert re.search(r'step 5/7 \(LINF, likelihood\): iter \d+/6, time left', out), 'no LINF training progress'
    assert 'Report: results/demo/report.md' in out

    demo = folder / 'results' / 'demo'
    summary = json.loads((demo / 'summary.json').read_text())
    assert list(summary) == ['srflow', 'linf', 'hr', 'seconds']
    assert list(summary['srflow']) == ['x4'] and set(summary['srflow']['x4']) == _methods('test_srflow_prior_demo.yml')
    assert list(summary['linf']) == _linf_scales() == ['x2', 'x3', 'x4', 'x6', 'x8', 'x12']
    linf_methods = _methods('test_linf_prior_demo.yml')
    for route, required in (('srflow', ('psnr', 'ssim', 'lr_psnr')), ('linf', ('psnr', 'ssim', 'lr_psnr', 'seam'))):
        for scale, methods in summary[route].items():
            assert route == 'srflow' or set(methods) == linf_methods
            for method, entry in methods.items():
                fields = (*required, 'periodicity') if route == 'linf' else required
                for metric in fields:
                    assert math.isfinite(entry[metric]) and math.isfinite(entry[f'{metric}_std']), (
                        route,
                        scale,
                        method,
                    )
                assert entry['images'] == HELD_OUT and 0 <= entry['nonfinite'] <= HELD_OUT
                assert 'lpips' not in entry  # offline: not computed, so left out
                if route == 'linf':
                    assert 0 <= entry['periodicity'] <= 1
    assert all(math.isfinite(summary['hr'][k]) for k in ('linf_seam', 'linf_periodicity'))
    stages = summary['seconds']['stages']
    assert list(stages) == [
        'dataset',
        'srflow_likelihood',
        'srflow_prior',
        'srflow_test',
        'linf_likelihood',
        'linf_prior',
        'linf_test',
        'report',
    ]
    assert all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= summary['seconds']['total'] <= seconds

    report = (demo / 'report.md').read_text()
    assert 'QUICK mode' in report
    verdict = report.split('## Verdict (the six held-out photos)\n')[1].split('\n\n')[0].splitlines()
    assert [line.split('**')[1] for line in verdict] == ['Grid artifacts', 'Exploding inverses', 'Fixed temperature']
    targets = report.split('## Targets of issue #11 (held-out photos)\n')[1].split('\n\n')
    assert re.fullmatch(r'\d+ of 15 targets met\.', targets[0])
    assert targets[1].count('\n') == 15 + 1  # header, separator, one row per target
    assert all(re.search(r'\| (met|\*\*not met\*\*) \|$', row) for row in targets[1].splitlines()[2:])
    assert '## How the objectives were chosen' in report
    assert '## Validation split (where training choices were made; not the verdict)' in report
    srflow_table = _table(report, '## SRFlow x4 on the held-out photos (6 photos)')
    assert [row[0] for row in srflow_table] == ['prior', 'τ = 0', 'τ = 0.3', 'τ = 0.6', 'τ = 0.9']
    linf_table = _table(report, '## LINF at x2, x3, x4, x6, x8, x12 on the held-out photos')
    assert [row[:2] for row in linf_table[::4]] == [
        [s, g] for s, g in zip(_linf_scales(), ['in-distribution'] * 3 + ['out-of-distribution'] * 3)
    ]
    # mean ± std (min–max) per metric (PSNR, SSIM, LR-PSNR first; LINF then seam and periodicity; other
    # metric columns may be n/a where a protocol leaves them undefined), then the non-finite count
    spread = re.compile(r'-?[\d.]+ ± [\d.]+ \(-?[\d.]+–-?[\d.]+\)')
    for cells, known, row in [(r[1:-1], 3, r) for r in srflow_table] + [(r[3:-1], 5, r) for r in linf_table]:
        assert all(spread.fullmatch(cell) for cell in cells[:known]), row
        assert all(spread.fullmatch(cell) or cell == 'n/a' for cell in cells[known:]), row
        assert re.fullmatch(r'\d of 6', row[-1]), row
    assert 'LPIPS was not computed' in report
    assert '| linf test |' in report and '| dataset |' in report
    for image in ('psnr_vs_tau.png', 'linf_scales.png', 'losses.png', 'srflow_grid.png', 'linf_grid_x4.png'):
        assert (demo / image).stat().st_size > 10_000, image
        assert f']({image})' in report
    assert (demo / 'linf_grid_x12.png').stat().st_size > 10_000
