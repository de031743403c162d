"""The offline end-to-end demo: real photos -> SRFlow by likelihood -> learned prior -> report.

    python -m flowprior_plugin.demo            # about ten minutes on two CPU cores
    python -m flowprior_plugin.demo --quick    # a few iterations per stage (CI)

Every stage runs the ordinary ``basicsr train|test`` command on ordinary option files in
``options/demo/``; nothing here trains or evaluates by itself. The demo only makes the dataset,
runs the three commands in turn with their progress, and writes ``results/demo/report.md`` (table,
plot, image grids) from what the test run measured.
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
VAL_NAME, SEEN_NAME = 'demo_val', 'demo_seen'
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m flowprior_plugin.demo', description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='a few iterations per stage (CI check)')
    parser.add_argument('--options-dir', type=Path, default=None, help='folder of the demo option files')
    args = parser.parse_args(argv)
    options = args.options_dir or default_options_dir()
    if not (options / STAGE1).is_file():
        raise SystemExit(f'[demo] no demo option files in {options}: run from the source tree or use --options-dir')
    started = time.time()

    say(f'step 1/4: dataset from photos shipped with scikit-image and matplotlib -> {DATASET_ROOT}/')
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
    iters = {STAGE1: _total_iter(options / STAGE1, args.quick), STAGE2: _total_iter(options / STAGE2, args.quick)}
    timings['stage1'] = run_stage(
        'step 2/4 (SRFlow, likelihood)', [*cli, 'train', '-opt', str(options / STAGE1), *force], iters[STAGE1]
    )
    timings['stage2'] = run_stage(
        'step 3/4 (learned prior, frozen flow)', [*cli, 'train', '-opt', str(options / STAGE2), *force], iters[STAGE2]
    )
    timings['test'] = run_stage('step 4/4 (evaluation)', [*cli, 'test', '-opt', str(options / TEST)], None)

    from flowprior_plugin.demo_report import write_report

    report = write_report(
        results=Path('results', TEST_NAME),
        dataset_name=VAL_NAME,
        dataset_root=DATASET_ROOT,
        out_dir=REPORT_DIR,
        seen_dataset_name=SEEN_NAME,
        context={
            'quick': args.quick,
            'spec': spec,
            'train_patches': n_train,
            'iterations': {'stage1': iters[STAGE1], 'stage2': iters[STAGE2]},
            'timings': timings,
            'nll': _logged_losses(STAGE1_NAME, 'l_nll'),
            'latent': _logged_losses(STAGE2_NAME, 'l_latent'),
        },
    )
    say(f'finished in {math.ceil(time.time() - started)} s. Report: {report}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
