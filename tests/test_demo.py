"""The README's main command, scaled down: three basicsr stages and a report with every method."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO_ROOT


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
    for stage in ('step 1/4', 'step 2/4', 'step 3/4', 'step 4/4'):
        assert stage in out
    assert re.search(r'iter \d+/6, time left', out), 'no training progress shown'
    assert 'Report: results/demo/report.md' in out

    demo = tmp_path / 'results' / 'demo'
    report = (demo / 'report.md').read_text()
    rows = [line for line in report.splitlines() if line.startswith('| ') and 'method' not in line]
    methods = [row.split('|')[1].strip() for row in rows]
    expected = ['prior', 'τ = 0', 'τ = 0.3', 'τ = 0.6', 'τ = 0.9']
    assert methods == expected * 2  # held-out photos, then the in-distribution check
    assert 'In-distribution check: 8 of the training patches' in report
    assert 'QUICK mode' in report and 'LPIPS was not computed' in report
    assert (demo / 'psnr_vs_tau.png').stat().st_size > 10_000
    assert sorted(p.name for p in demo.glob('grid_*.png')) == ['grid_chelsea.png', 'grid_grace_hopper.png']

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
