"""The README's main command, scaled down: two routes of three basicsr stages and a report with every method."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import yaml
from conftest import REPO_ROOT

LINF_HEADING = '## LINF (arbitrary scale)'


def _table_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row of ``text`` except headers and separators."""
    rows = [line for line in text.splitlines() if line.startswith('| ') and 'method' not in line]
    return [[cell.strip() for cell in row.strip('|').split('|')] for row in rows]


def _linf_expected_rows() -> list[tuple[str, str, str]]:
    """(scale, group, method) of every LINF table row, from the test option file itself."""
    opt = yaml.safe_load((REPO_ROOT / 'options' / 'demo' / 'test_linf_prior_demo.yml').read_text())
    methods = ['prior', *[f'τ = {float(t):g}' for t in opt['val']['temperatures']]]
    sets = sorted(opt['datasets'].values(), key=lambda d: float(d['test_scale']))
    return [(f'x{float(d["test_scale"]):g}', d['group'], m) for d in sets for m in methods]


def test_quick_demo_writes_report_plot_and_grids(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'flowprior_plugin.demo',
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
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in range(1, 8):
        assert f'step {step}/7' in out
    assert 'step 5/7 (LINF, likelihood)' in out and 'step 7/7 (LINF evaluation' in out
    assert re.search(r'iter \d+/6, time left', out), 'no training progress shown'
    assert re.search(r'step 5/7 \(LINF, likelihood\): iter \d+/6, time left', out), 'no LINF training progress'
    assert 'Report: results/demo/report.md' in out

    demo = tmp_path / 'results' / 'demo'
    report = (demo / 'report.md').read_text()
    assert report.count(LINF_HEADING) == 1
    srflow, linf = report.split(LINF_HEADING)

    methods = [row[0] for row in _table_rows(srflow)]
    expected = ['prior', 'τ = 0', 'τ = 0.3', 'τ = 0.6', 'τ = 0.9']
    assert methods == expected * 2  # held-out photos, then the in-distribution check
    assert 'In-distribution check: 8 of the training patches' in srflow
    assert 'QUICK mode' in report and 'LPIPS was not computed' in srflow
    assert (demo / 'psnr_vs_tau.png').stat().st_size > 10_000
    assert sorted(p.name for p in demo.glob('grid_*.png')) == ['grid_chelsea.png', 'grid_grace_hopper.png']

    # LINF: one row per scale and method, in-distribution and out-of-distribution, every metric finite
    rows = _table_rows(linf)
    assert [tuple(row[:3]) for row in rows] == _linf_expected_rows()
    assert {row[1] for row in rows} == {'in-distribution', 'out-of-distribution'}
    for row in rows:
        psnr, ssim, lr_psnr, seam, periodicity = (float(cell) for cell in row[3:8])
        assert all(math.isfinite(v) for v in (psnr, ssim, lr_psnr, seam)), row
        assert 0 <= periodicity <= 1, row
        assert 0 <= int(row[8]) <= 2  # images with non-finite pixels, out of the two held-out photos
    assert 'What this run showed (LINF)' in linf and 'LPIPS was not computed' in linf
    assert re.search(r'NLL [-\d.e+]+ → [-\d.e+]+ bits/pixel', linf)
    largest = _linf_expected_rows()[-1][0]  # the zoomed crops: x4 (in distribution) and the largest scale
    for image in ('linf_scales.png', 'linf_grid_x4.png', f'linf_grid_{largest}.png'):
        assert (demo / image).stat().st_size > 10_000
        assert f']({image})' in linf

    # a second run reuses the dataset and says so
    again = subprocess.run(
        [
            sys.executable,
            '-c',
            'from flowprior_plugin.data.demo_photos import build_demo_dataset as b; '
            "print(b('datasets/demo_photos')[1])",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert again.stdout.strip() == 'True'
