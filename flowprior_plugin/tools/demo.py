"""The offline end-to-end demo: real photos -> flows by likelihood -> learned priors -> report.

    python -m flowprior_plugin.tools.demo            # about ten minutes on two idle CPU cores
    python -m flowprior_plugin.tools.demo --quick    # a few iterations per stage, small photos (CI)

Two routes on the same photos, each three stages: SRFlow at x4 (likelihood, learned prior, test),
then LINF's 3x3-patch model at arbitrary scale (likelihood and learned prior on random scales in
[1, 4], test at x2-x12). Every stage runs the ordinary ``basicsr train|test`` command on ordinary
option files in ``options/demo/``; nothing here trains or evaluates by itself. The photos are split
by photo: training patches, a validation split (where training choices are made) and held-out
photos (the verdict). The demo makes the dataset, runs the six commands in turn with their
progress, and writes ``results/demo/summary.json`` (the held-out numbers, for tools) and
``results/demo/report.md`` (verdict, targets, tables, plots, image grids) from what the two test
runs measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
OBJECTIVE_CHOICE = 'objective_choice.json'
STEPS = 7  # the dataset, then three basicsr stages per route
QUICK_ITERS = 6
# --quick: a few small batches per training stage without the stage's own final validation, and one
# draw per temperature in the tests; the photos are shrunk too (QUICK_EVAL_SIDE), so that the whole
# check runs in under two minutes on two cores. Its numbers only show that every piece runs.
QUICK_TRAIN = [
    f'train:total_iter={QUICK_ITERS}',
    'logger:print_freq=2',
    'datasets:train:batch_size_per_gpu=2',
    'val=~',
]
QUICK_TEST = ['val:samples=1']
QUICK_EVAL_SIDE = 96  # longer side of the validation and held-out photos in --quick (x12 leaves 8 LR pixels)
_ITER_LINE = re.compile(r'iter:\s*([\d,]+).*?\[eta:\s*([^,]+),.*?\]\s*(.*)$')


def default_options_dir() -> Path:
    """``options/demo`` of the source checkout this package is installed from."""
    return Path(__file__).resolve().parents[2] / 'options' / 'demo'


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

    return QUICK_ITERS if quick else int(yaml.safe_load(opt_file.read_text())['train']['total_iter'])


def _samples(opt_file: Path, quick: bool) -> int:
    """Draws per image that temperature sampling is scored on in a test run (``val.samples``)."""
    import yaml

    return 1 if quick else int((yaml.safe_load(opt_file.read_text()).get('val') or {}).get('samples', 1))


def _logged_losses(experiment: str, name: str) -> list[float]:
    """Values of one loss from the newest training log of an experiment."""
    logs = sorted(Path('experiments', experiment).glob(f'train_{experiment}_*.log'))
    if not logs:
        return []
    return [float(v) for v in re.findall(rf'\b{name}: ([-+\d.eE]+)', logs[-1].read_text())]


# The log name of each loss option of FlowPriorModel's train: section.
LOSS_LOG_NAMES = {'latent_opt': 'l_latent', 'pixel_opt': 'l_pix', 'perceptual_opt': 'l_percep'}


def training_losses(opt_file: Path) -> dict[str, dict]:
    """The losses a training option file sets, read from its ``train:`` section.

    Args:
        opt_file: A stage option file.

    Returns:
        Log name (``l_latent``, ``l_pix``, ``l_percep``) -> ``{'option', 'type', 'weight'}``, in the
        file's order; empty for a file that sets none of them (a likelihood stage).
    """
    import yaml

    train = yaml.safe_load(opt_file.read_text()).get('train') or {}
    losses = {}
    for option, value in train.items():
        if option in LOSS_LOG_NAMES and value:
            weight = value.get('loss_weight', value.get('perceptual_weight', 1.0))
            losses[LOSS_LOG_NAMES[option]] = {'option': option, 'type': value.get('type'), 'weight': float(weight)}
    return losses


def _linf_summary(options: Path) -> dict:
    """What the report says about the LINF route's setup, read from its two training option files."""
    import yaml

    flow = yaml.safe_load((options / LINF1).read_text())
    prior = yaml.safe_load((options / LINF2).read_text())
    return {
        'network': flow['network_g'],
        'data': flow['datasets']['train'],
        'prior_data': prior['datasets']['train'],
        'generator': prior['network_g']['generator'],
        'lr_alignment': prior['network_g'].get('lr_alignment', 'release'),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m flowprior_plugin.tools.demo', description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='a few iterations per stage, small photos (CI check)')
    parser.add_argument('--options-dir', type=Path, default=None, help='folder of the demo option files')
    args = parser.parse_args(argv)
    options = args.options_dir or default_options_dir()
    if not all((options / name).is_file() for name in (STAGE1, STAGE2, TEST, LINF1, LINF2, LINF_TEST)):
        raise SystemExit(f'[demo] no demo option files in {options}: run from the source tree or use --options-dir')
    started = time.time()
    timings: dict[str, float] = {}

    say(f'step 1/{STEPS}: dataset from photos shipped with scikit-image and matplotlib -> {DATASET_ROOT}/')
    spec = DemoDatasetSpec()
    if args.quick:
        spec = dataclasses.replace(spec, eval_max_side=QUICK_EVAL_SIDE)
    _, reused = build_demo_dataset(DATASET_ROOT, spec)
    n_train = len(list((DATASET_ROOT / 'train' / 'HR').glob('*.png')))
    timings['dataset'] = time.time() - started
    say(
        ('reusing the dataset already there' if reused else 'dataset written') + f': {n_train} training patches; '
        f'validation split (training choices): {", ".join(spec.validation_photos)}; '
        f'held out (verdict): {", ".join(spec.held_out_photos)}'
    )

    cli = [sys.executable, '-m', 'flowprior_plugin']
    iters = {name: _total_iter(options / name, args.quick) for name in (STAGE1, STAGE2, LINF1, LINF2)}
    # (timing key, step label, basicsr command, option file): SRFlow's route first, then LINF's.
    stages = [
        ('srflow_likelihood', 'SRFlow, likelihood', 'train', STAGE1),
        ('srflow_prior', 'SRFlow learned prior, frozen flow', 'train', STAGE2),
        ('srflow_test', 'SRFlow evaluation, x4, held-out and validation photos', 'test', TEST),
        ('linf_likelihood', 'LINF, likelihood', 'train', LINF1),
        ('linf_prior', 'LINF learned prior, frozen flow', 'train', LINF2),
        ('linf_test', 'LINF evaluation, x2-x12 held out, x3 validation', 'test', LINF_TEST),
    ]
    for step, (key, label, command, opt_file) in enumerate(stages, start=2):
        extra = (QUICK_TRAIN if command == 'train' else QUICK_TEST) if args.quick else []
        timings[key] = run_stage(
            f'step {step}/{STEPS} ({label})',
            [*cli, command, '-opt', str(options / opt_file), *(['--force_yml', *extra] if extra else [])],
            iters.get(opt_file),  # None for the tests: no iterations to count
        )

    from flowprior_plugin.tools.report import write_report
    from flowprior_plugin.tools.report_numbers import heldout_summary

    srflow_results, linf_results = Path('results', TEST_NAME), Path('results', LINF_TEST_NAME)
    report_start = time.time()
    summary = heldout_summary(srflow_results, linf_results, DATASET_ROOT)
    summary['seconds'] = {'total': report_start - started, 'stages': dict(timings)}
    srflow_losses, linf_losses = training_losses(options / STAGE2), training_losses(options / LINF2)
    report = write_report(
        summary=summary,
        srflow_results=srflow_results,
        linf_results=linf_results,
        dataset_root=DATASET_ROOT,
        out_dir=REPORT_DIR,
        context={
            'quick': args.quick,
            'spec': spec,
            'train_patches': n_train,
            'iterations': {
                'srflow_likelihood': iters[STAGE1],
                'srflow_prior': iters[STAGE2],
                'linf_likelihood': iters[LINF1],
                'linf_prior': iters[LINF2],
            },
            'losses': {
                'srflow_likelihood': {'l_nll': _logged_losses(STAGE1_NAME, 'l_nll')},
                'srflow_prior': {name: _logged_losses(STAGE2_NAME, name) for name in srflow_losses},
                'linf_likelihood': {'l_nll': _logged_losses(LINF1_NAME, 'l_nll')},
                'linf_prior': {name: _logged_losses(LINF2_NAME, name) for name in linf_losses},
            },
            'objectives': {'srflow': srflow_losses, 'linf': linf_losses},
            'objective_choice': options / OBJECTIVE_CHOICE,
            'samples': {
                'srflow': _samples(options / TEST, args.quick),
                'linf': _samples(options / LINF_TEST, args.quick),
            },
            'linf_options': _linf_summary(options),
        },
    )
    # The report shows the time up to its own start; summary.json also counts the report itself.
    summary['seconds']['stages']['report'] = time.time() - report_start
    summary['seconds']['total'] = time.time() - started
    summary_path = REPORT_DIR / 'summary.json'
    summary_path.write_text(json.dumps(summary, indent=2))
    say(f'finished in {math.ceil(summary["seconds"]["total"])} s. Report: {report}; numbers: {summary_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
