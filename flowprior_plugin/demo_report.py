"""The demo's report: table, plot and image grids, with statements computed from the numbers.

Nothing in the report is written in advance: every sentence about the result is chosen by
comparing the measured values of this run.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import re
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

METRIC_LABELS = {'psnr': 'PSNR (dB)', 'ssim': 'SSIM', 'lr_psnr': 'LR-PSNR (dB)', 'lpips': 'LPIPS'}
LOWER_IS_BETTER = {'lpips'}


def _tau(method: str) -> float | None:
    match = re.fullmatch(r'tau([-\d.e]+)', method)
    return float(match[1]) if match else None


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 'n/a'
    return f'{value:.{digits}f}' if isinstance(value, float) else str(value)


def plot_metrics_vs_temperature(summary: list[dict], path: Path) -> None:
    """PSNR and LR-PSNR against tau, the learned prior drawn as its own line."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    samples = sorted((_tau(e['method']), e) for e in summary if _tau(e['method']) is not None)
    prior = next((e for e in summary if e['method'] == 'prior'), None)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ('psnr', 'lr_psnr')):
        taus = [t for t, _ in samples]
        ax.plot(taus, [e.get(metric, math.nan) for _, e in samples], 'o-', label='temperature sampling')
        if prior is not None:
            ax.axhline(prior.get(metric, math.nan), color='tab:red', linestyle='--', label='learned prior')
        ax.set_xlabel('temperature τ')
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.set_title(f'{METRIC_LABELS[metric]} on held-out photos')
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_grid(name: str, lr: np.ndarray, hr: np.ndarray, panels: list[tuple[str, np.ndarray]], path: Path) -> None:
    """One row: LR (nearest-upscaled), each method's SR, HR; RGB uint8 images."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    up = cv2.resize(lr, (hr.shape[1], hr.shape[0]), interpolation=cv2.INTER_NEAREST)
    items = [('LR (nearest x4)', up), *panels, ('HR', hr)]
    fig, axes = plt.subplots(1, len(items), figsize=(2.6 * len(items), 3))
    for ax, (title, image) in zip(np.atleast_1d(axes), items):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
        ax.axis('off')
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f'demo report: image not found: {path}')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def findings(summary: list[dict], skipped: dict[str, str], images: str = 'held-out images') -> list[str]:
    """Statements about this run, each derived from its numbers."""
    lines = []
    prior = next((e for e in summary if e['method'] == 'prior'), None)
    samples = sorted((_tau(e['method']), e) for e in summary if _tau(e['method']) is not None)
    if prior is None or not samples:
        return ['The table lacks the learned prior or temperature sampling; nothing to compare.']
    for metric in ('psnr', 'ssim', 'lr_psnr', 'lpips'):
        if metric not in prior or math.isnan(prior[metric]):
            continue
        lower = metric in LOWER_IS_BETTER
        best_tau, best = min(samples, key=lambda s: s[1][metric] if lower else -s[1][metric])
        worst_tau, worst = max(samples, key=lambda s: s[1][metric] if lower else -s[1][metric])
        diff = prior[metric] - best[metric]
        better = diff < 0 if lower else diff > 0
        label = METRIC_LABELS[metric]
        if better:
            verdict = f'better than every temperature tried (best τ = {best_tau:g}: {_fmt(best[metric], 3)})'
        elif diff == 0:
            verdict = f'equal to the best temperature τ = {best_tau:g}'
        else:
            verdict = (
                f'worse than the best temperature τ = {best_tau:g} ({_fmt(best[metric], 3)}, a gap of '
                f'{abs(diff):.3f}) but {"better" if (prior[metric] < worst[metric]) == lower else "not better"} '
                f'than the worst, τ = {worst_tau:g} ({_fmt(worst[metric], 3)})'
            )
        lines.append(f'{label}: the learned prior scores {_fmt(prior[metric], 3)}, {verdict}.')
    psnrs = [(t, e['psnr']) for t, e in samples if 'psnr' in e and not math.isnan(e['psnr'])]
    if len(psnrs) > 1:
        trend = 'falls' if psnrs[-1][1] < psnrs[0][1] else 'rises'
        lines.append(
            f'Temperature sampling: PSNR {trend} from {psnrs[0][1]:.2f} dB at τ = {psnrs[0][0]:g} to '
            f'{psnrs[-1][1]:.2f} dB at τ = {psnrs[-1][0]:g}.'
        )
    bad = {e['method']: e['nonfinite'] for e in summary if e.get('nonfinite')}
    if bad:
        counts = ', '.join(f'{m}: {n}' for m, n in bad.items())
        lines.append(f'Images with non-finite pixels (exploding inverse): {counts}.')
    else:
        lines.append(f'No method produced non-finite pixels on the {summary[0]["images"]} {images}.')
    for metric, reason in skipped.items():
        lines.append(f'{metric.upper()} was not computed: {reason}')
    return lines


def _load(results: Path, dataset_name: str) -> tuple[list[dict], dict[str, str]]:
    data = json.loads((results / f'summary_{dataset_name}.json').read_text())
    return data['methods'], data.get('skipped_metrics', {})


def markdown_table(summary: list[dict]) -> list[str]:
    """The comparison table: one row per method, one column per metric, then non-finite counts."""
    metrics = [k for k in summary[0] if k not in ('method', 'images', 'nonfinite')]
    header = ['method', *[METRIC_LABELS.get(m, m) for m in metrics], 'non-finite images']
    table = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for entry in summary:
        cells = [entry['method'].replace('tau', 'τ = '), *[_fmt(entry[m], 4) for m in metrics], str(entry['nonfinite'])]
        table.append('| ' + ' | '.join(cells) + ' |')
    return table


def write_report(
    results: Path,
    dataset_name: str,
    dataset_root: Path,
    out_dir: Path,
    context: dict,
    seen_dataset_name: str | None = None,
) -> Path:
    """Write ``out_dir/report.md`` with its plot and grids; returns the report's path.

    ``dataset_name`` is the held-out set (table, findings, plot, grids); ``seen_dataset_name``, if
    given, a few training patches evaluated the same way (an in-distribution check)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, skipped = _load(results, dataset_name)

    plot_metrics_vs_temperature(summary, out_dir / 'psnr_vs_tau.png')
    with open(results / f'metrics_{dataset_name}.csv') as handle:
        rows = list(csv.DictReader(handle))
    methods = [e['method'] for e in summary]
    order = sorted([m for m in methods if m != 'prior'], key=lambda m: _tau(m) or 0) + ['prior']
    grids = []
    for image in sorted({row['image'] for row in rows}):
        panels = []
        for method in order:
            row = next(r for r in rows if r['image'] == image and r['method'] == method)
            caption = method.replace('tau', 'τ=') + (f'\n{float(row["psnr"]):.2f} dB' if row.get('psnr') else '')
            panels.append((caption, _read_rgb(results / 'visualization' / dataset_name / method / f'{image}.png')))
        lr = _read_rgb(dataset_root / 'val' / 'LR' / f'{image}.png')
        hr = _read_rgb(dataset_root / 'val' / 'HR' / f'{image}.png')
        grid = out_dir / f'grid_{image}.png'
        image_grid(image, lr, hr, panels, grid)
        grids.append(grid)

    spec, timings, iters = context['spec'], context['timings'], context['iterations']
    nll, latent = context.get('nll') or [], context.get('latent') or []
    seen_section = []
    if seen_dataset_name is not None:
        seen, _ = _load(results, seen_dataset_name)
        seen_section = [
            f'## In-distribution check: {seen[0]["images"]} of the training patches',
            'The same comparison on patches the prior was trained on: if the prior wins here but not on the '
            'held-out photos, it learned something that does not generalise from this small dataset.',
            '',
            *markdown_table(seen),
            '',
            *[f'- {line}' for line in findings(seen, {}, images='training patches')],
            '',
        ]

    def trajectory(values: list[float], unit: str) -> str:
        if len(values) < 2:
            return 'not logged'
        k = max(1, len(values) // 10)  # mean of the first and last tenth of the logged values
        first, last = sum(values[:k]) / k, sum(values[-k:]) / k
        return f'{first:.4g} → {last:.4g} {unit} (mean of the first and last {k} logged values)'

    text = [
        '# flowprior-plugin demo: the learned prior against temperature sampling',
        '',
        f'Run on {datetime.now():%Y-%m-%d %H:%M}, {platform.machine()} CPU, '
        f'{"QUICK mode (a few iterations per stage: numbers are meaningless)" if context["quick"] else "full demo"}.',
        '',
        '## Data',
        f'- Training: {context["train_patches"]} HR patches of {spec.patch}×{spec.patch} cut from '
        f'{", ".join(spec.train_photos)} (scikit-image), LR by MATLAB-style bicubic ×{spec.scale}.',
        f'- Held out for evaluation only: {", ".join(spec.held_out_photos)} (centre crops of up to '
        f'{spec.val_crop}×{spec.val_crop} HR).',
        '',
        '## Training (ordinary `basicsr train` runs on `options/demo/`)',
        f'- Stage 1, SRFlow (small) by likelihood: {iters["stage1"]} iterations in {timings["stage1"]:.0f} s; '
        f'NLL {trajectory(nll, "bits/pixel")}.',
        f'- Stage 2, learned prior on the frozen flow, latent L1 objective: {iters["stage2"]} iterations in '
        f'{timings["stage2"]:.0f} s; latent L1 {trajectory(latent, "")}. The paper trains with a VGG19 perceptual '
        'loss; its ImageNet weights cannot be downloaded offline, so the demo trains the latent-L1 variant '
        '(the paper reports it regresses toward the mean: sharper detail is not expected from it).',
        f'- Evaluation (`basicsr test`): {timings["test"]:.0f} s.',
        '',
        '## Results on the held-out photos',
        *markdown_table(summary),
        '',
        '## What this run showed',
        *[f'- {line}' for line in findings(summary, skipped)],
        '',
        *seen_section,
        '## Plot',
        '![PSNR and LR-PSNR against temperature](psnr_vs_tau.png)',
        '',
        '## Images',
        *[f'![{g.stem}]({g.name})' for g in grids],
        '',
        f'Per-image numbers: `{results / f"metrics_{dataset_name}.csv"}`; SR images: `{results / "visualization"}`.',
        '',
    ]
    report = out_dir / 'report.md'
    report.write_text('\n'.join(text))
    return report
