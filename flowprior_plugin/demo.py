"""The offline end-to-end demo: real photos -> flows by likelihood -> learned priors -> report.

    python -m flowprior_plugin.demo            # about eleven minutes on two CPU cores
    python -m flowprior_plugin.demo --quick    # a few iterations per stage (CI)

Two routes on the same photos, each three stages: SRFlow at x4 (likelihood, learned prior, test),
then LINF's 3x3-patch model at arbitrary scale (likelihood and learned prior on random scales in
[1, 4], test at x2-x12). Every stage runs the ordinary ``basicsr train|test`` command on ordinary
option files in ``options/demo/``; nothing here trains or evaluates by itself. The demo only makes
the dataset, runs the six commands in turn with their progress, and writes
``results/demo/report.md`` (tables, plots, image grids) from what the two test runs measured.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from flowprior_plugin.data.demo_photos import DemoDatasetSpec, build_demo_dataset

DATASET_ROOT = Path('datasets/demo_photos')
REPORT_DIR = Path('results/demo')
STAGE1, STAGE2, TEST = 'srflow_demo.yml', 'srflow_prior_demo.yml', 'test_srflow_prior_demo.yml'
STAGE1_NAME, STAGE2_NAME, TEST_NAME = 'demo_srflow', 'demo_srflow_prior', 'demo_test'
LINF1, LINF2, LINF_TEST = 'linf_demo.yml', 'linf_prior_demo.yml', 'test_linf_prior_demo.yml'
LINF1_NAME, LINF2_NAME, LINF_TEST_NAME = 'demo_linf', 'demo_linf_prior', 'demo_linf_test'
VAL_NAME, SEEN_NAME = 'demo_val', 'demo_seen'
STEPS = 7  # the dataset, then three basicsr stages per route
QUICK_TRAIN = ['train:total_iter=6', 'logger:print_freq=2', 'datasets:train:batch_size_per_gpu=4']
_ITER_LINE = re.compile(r'iter:\s*([\d,]+).*?\[eta:\s*([^,]+),.*?\]\s*(.*)$')


def default_options_dir() -> Path:
    """``options/demo`` of the source checkout this package is installed from."""
    return Path(__file__).resolve().parents[1] / 'options' / 'demo'


def say(message: str) -> None:
    print(f'[demo] {message}', flush=True)


def run_stage(label: str, command: list[str], total_iter: int | None) -> float:
    """Run one ``basicsr`` command, printing its progress lines; returns seconds taken."""
    say(f'{label}: {" ".join(command[2:])}')
    start = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    tail: list[str] = []
    for line in process.stdout:
        tail = (tail + [line.rstrip()])[-40:]
        match = _ITER_LINE.search(line)
        if match:
            done = match[1].replace(',', '')
            of = f'/{total_iter}' if total_iter else ''
            say(f'{label}: iter {done}{of}, time left {match[2].strip()}, {match[3].strip()}')
        elif 'Validation' in line or 'error' in line.lower():
            say(f'{label}: {line.strip()}')
    if process.wait() != 0:
        print('\n'.join(tail), file=sys.stderr)
        raise SystemExit(f'[demo] {label} failed (exit {process.returncode}); its output ends above')
    seconds = time.time() - start
    say(f'{label}: done in {seconds:.0f} s')
    return seconds


def _total_iter(opt_file: Path, quick: bool) -> int:
    import yaml

    return 6 if quick else int(yaml.safe_load(opt_file.read_text())['train']['total_iter'])


def _logged_losses(experiment: str, name: str) -> list[float]:
    """Values of one loss from the newest training log of an experiment."""
    logs = sorted(Path('experiments', experiment).glob(f'train_{experiment}_*.log'))
    if not logs:
        return []
    return [float(v) for v in re.findall(rf'{name}: ([-+\d.eE]+)', logs[-1].read_text())]


def _linf_summary(options: Path) -> dict:
    """What the report says about the LINF route's setup, read from its two training option files."""
    import yaml

    flow = yaml.safe_load((options / LINF1).read_text())
    prior = yaml.safe_load((options / LINF2).read_text())
    return {
        'network': flow['network_g'],
        'data': flow['datasets']['train'],
        'generator': prior['network_g']['generator'],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m flowprior_plugin.demo', description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='a few iterations per stage (CI check)')
    parser.add_argument('--options-dir', type=Path, default=None, help='folder of the demo option files')
    args = parser.parse_args(argv)
    options = args.options_dir or default_options_dir()
    if not all((options / name).is_file() for name in (STAGE1, STAGE2, TEST, LINF1, LINF2, LINF_TEST)):
        raise SystemExit(f'[demo] no demo option files in {options}: run from the source tree or use --options-dir')
    started = time.time()

    say(f'step 1/{STEPS}: dataset from photos shipped with scikit-image and matplotlib -> {DATASET_ROOT}/')
    spec = DemoDatasetSpec()
    _, reused = build_demo_dataset(DATASET_ROOT, spec)
    n_train = len(list((DATASET_ROOT / 'train' / 'HR').glob('*.png')))
    say(
        ('reusing the dataset already there' if reused else 'dataset written') + f': {n_train} training patches, '
        f'held out: {", ".join(spec.held_out_photos)}'
    )

    cli = [sys.executable, '-m', 'flowprior_plugin']
    force = ['--force_yml', *QUICK_TRAIN] if args.quick else []
    timings = {}
    iters = {name: _total_iter(options / name, args.quick) for name in (STAGE1, STAGE2, LINF1, LINF2)}
    # (timing key, step label, basicsr command, option file): SRFlow's route first, then LINF's.
    stages = [
        ('stage1', 'SRFlow, likelihood', 'train', STAGE1),
        ('stage2', 'SRFlow learned prior, frozen flow', 'train', STAGE2),
        ('test', 'SRFlow evaluation, x4', 'test', TEST),
        ('linf1', 'LINF, likelihood', 'train', LINF1),
        ('linf2', 'LINF learned prior, frozen flow', 'train', LINF2),
        ('linf_test', 'LINF evaluation, x2-x12', 'test', LINF_TEST),
    ]
    for step, (key, label, command, opt_file) in enumerate(stages, start=2):
        extra = force if command == 'train' else []
        timings[key] = run_stage(
            f'step {step}/{STEPS} ({label})',
            [*cli, command, '-opt', str(options / opt_file), *extra],
            iters.get(opt_file),  # None for the tests: no iterations to count
        )

    from flowprior_plugin.demo_report import write_report

    report = write_report(
        results=Path('results', TEST_NAME),
        dataset_name=VAL_NAME,
        dataset_root=DATASET_ROOT,
        out_dir=REPORT_DIR,
        seen_dataset_name=SEEN_NAME,
        linf_results=Path('results', LINF_TEST_NAME),
        context={
            'quick': args.quick,
            'spec': spec,
            'train_patches': n_train,
            'iterations': {
                'stage1': iters[STAGE1],
                'stage2': iters[STAGE2],
                'linf1': iters[LINF1],
                'linf2': iters[LINF2],
            },
            'timings': timings,
            'nll': _logged_losses(STAGE1_NAME, 'l_nll'),
            'latent': _logged_losses(STAGE2_NAME, 'l_latent'),
            'linf_nll': _logged_losses(LINF1_NAME, 'l_nll'),
            'linf_latent': _logged_losses(LINF2_NAME, 'l_latent'),
            'linf_options': _linf_summary(options),
        },
    )
    say(f'finished in {math.ceil(time.time() - started)} s. Report: {report}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
