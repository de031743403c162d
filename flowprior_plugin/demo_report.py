"""The demo's report: tables, plots and image grids, with statements computed from the numbers.

Two sections: SRFlow at x4 (the held-out photos and a few training patches) and LINF at several
scales (:func:`linf_section`). Nothing in the report is written in advance: every sentence about
the result is chosen by comparing the measured values of this run.
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

METRIC_LABELS = {
    'psnr': 'PSNR (dB)',
    'ssim': 'SSIM',
    'lr_psnr': 'LR-PSNR (dB)',
    'lpips': 'LPIPS',
    'seam': 'seam ratio',
    'periodicity': 'grid periodicity',
}
LOWER_IS_BETTER = {'lpips', 'seam', 'periodicity'}
# The LINF table's columns, in order (LPIPS is left out offline; it is reported as skipped).
LINF_COLUMNS = ('psnr', 'ssim', 'lr_psnr', 'seam', 'periodicity')
# The LINF zoomed crops are shown at this scale (the largest the LINF stages train on) and at the largest
# scale tested (out of distribution, where the flow and the prior meet scales they never saw).
LINF_GRID_SCALE = 'x4'
LINF_ZOOM = 48  # side of the HR crop shown in the grid (a multiple of the 3x3 patch)
LINF_ENLARGE = 4  # nearest-neighbour enlargement of that crop, so single-pixel seams stay visible


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


def _trajectory(values: list[float], unit: str) -> str:
    """How a logged loss moved: the mean of its first tenth of values against that of its last tenth."""
    if len(values) < 2:
        return 'not logged'
    k = max(1, len(values) // 10)  # a tenth smooths the noise of single logged batches
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    unit = f' {unit}' if unit else ''
    return f'{first:.4g} → {last:.4g}{unit} (mean of the first and last {k} logged values)'


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
    linf_results: Path | None = None,
) -> Path:
    """Write ``out_dir/report.md`` with its plot and grids; returns the report's path.

    ``dataset_name`` is the held-out set (table, findings, plot, grids); ``seen_dataset_name``, if
    given, a few training patches evaluated the same way (an in-distribution check);
    ``linf_results``, if given, the results folder of the LINF multi-scale test run, reported in its
    own section (see :func:`linf_section`)."""
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
        f'NLL {_trajectory(nll, "bits/pixel")}.',
        f'- Stage 2, learned prior on the frozen flow, latent L1 objective: {iters["stage2"]} iterations in '
        f'{timings["stage2"]:.0f} s; latent L1 {_trajectory(latent, "")}. The paper trains with a VGG19 perceptual '
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
    if linf_results is not None:
        text += linf_section(linf_results, dataset_root, out_dir, context)
    report = out_dir / 'report.md'
    report.write_text('\n'.join(text))
    return report


# ---------------------------------------------------------------------------------------------- LINF
def _scale_value(scale: str) -> float:
    """'x2' (as the run table writes scales) -> 2.0."""
    return float(scale.lstrip('x'))


def _valid(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _method_label(method: str) -> str:
    return method.replace('tau', 'τ = ')


def load_linf_run(results: Path) -> tuple[list[dict], dict[str, str]]:
    """The rows and skipped metrics of a multi-scale test run.

    Args:
        results: The test run's ``results/<name>`` folder (its ``summary.json`` is read).

    Returns:
        The rows sorted by scale, the methods of each scale in the run's own order (prior first,
        then the temperatures), and the skipped metrics with their reasons.
    """
    data = json.loads((results / 'summary.json').read_text())
    rows = sorted(data['rows'], key=lambda r: _scale_value(r['scale']))  # stable: keeps the method order
    return rows, data.get('skipped_metrics', {})


def _scales(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r['scale'] for r in rows))


def _methods(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r['method'] for r in rows))


def _row(rows: list[dict], scale: str, method: str) -> dict:
    return next(r for r in rows if r['scale'] == scale and r['method'] == method)


def linf_table(rows: list[dict]) -> list[str]:
    """The LINF comparison table as markdown lines.

    Args:
        rows: Rows of :func:`load_linf_run`.

    Returns:
        Header, separator and one line per scale and method: scale, group, method, PSNR, SSIM,
        LR-PSNR, seam ratio, grid periodicity, images with non-finite pixels.
    """
    header = ['scale', 'group', 'method', *[METRIC_LABELS[m] for m in LINF_COLUMNS], 'non-finite images']
    table = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in rows:
        cells = [row['scale'], row.get('group') or '-', _method_label(row['method'])]
        cells += [_fmt(row.get(m, math.nan), 4) for m in LINF_COLUMNS]
        cells.append(str(row['nonfinite']))
        table.append('| ' + ' | '.join(cells) + ' |')
    return table


def _better(a: float, b: float, metric: str) -> bool:
    return a < b if metric in LOWER_IS_BETTER else a > b


def linf_findings(rows: list[dict], skipped: dict[str, str]) -> list[str]:
    """Statements about the LINF test run, each derived from its numbers.

    Per metric and scale group (in- / out-of-distribution): the prior's mean against the temperature
    with the best mean, and at how many scales the prior beats every temperature; then how the
    hottest temperature compares with the coolest, the scales where the prior's seam ratio and PSNR
    are both the lowest, the non-finite counts and the skipped metrics.

    Args:
        rows: Rows of :func:`load_linf_run`.
        skipped: Skipped metric -> reason.

    Returns:
        One sentence per finding.
    """
    methods = _methods(rows)
    samples = [m for m in methods if _tau(m) is not None]
    if 'prior' not in methods or not samples:
        return ['The LINF table lacks the learned prior or temperature sampling; nothing to compare.']
    lines = []
    groups = list(dict.fromkeys(r.get('group') or 'all scales' for r in rows))
    for metric in LINF_COLUMNS:
        label = METRIC_LABELS[metric]
        note = {
            'seam': ' (lower is better; about 1 means no seams on the 3×3 grid)',
            'periodicity': ' (lower is better; about 0 means no pattern repeated in every 3×3 patch)',
        }.get(metric, '')
        parts = []
        for group in groups:
            scales = [s for s in _scales(rows) if (_row(rows, s, 'prior').get('group') or 'all scales') == group]
            # Only scales where the prior and every temperature have a value are compared.
            usable = [
                s for s in scales if all(_valid(_row(rows, s, m).get(metric, math.nan)) for m in ['prior', *samples])
            ]
            if not usable:
                continue

            means = {m: float(np.mean([_row(rows, sc, m)[metric] for sc in usable])) for m in ['prior', *samples]}
            prior_mean = means['prior']
            pick = min if metric in LOWER_IS_BETTER else max
            best = pick(samples, key=lambda m: means[m])
            wins = [
                s
                for s in usable
                if all(_better(_row(rows, s, 'prior')[metric], _row(rows, s, m)[metric], metric) for m in samples)
            ]
            diff = prior_mean - means[best]
            if diff == 0:
                verdict = 'equal to'
            else:
                verdict = f'{"better" if _better(prior_mean, means[best], metric) else "worse"} by {abs(diff):.3f} than'
            parts.append(
                f'{group} ({", ".join(usable)}): the prior averages {prior_mean:.3f}, {verdict} the best '
                f'temperature on average (τ = {_tau(best):g}: {means[best]:.3f}); it beats every temperature at '
                f'{len(wins)} of {len(usable)} scales' + (f' ({", ".join(wins)})' if wins else '')
            )
        if parts:
            lines.append(f'{label[0].upper()}{label[1:]}{note}: ' + '; '.join(parts) + '.')
    hot, cold = max(samples, key=_tau), min(samples, key=_tau)
    if hot != cold:
        for metric, what in (('psnr', 'PSNR'), ('seam', 'the seam ratio')):
            usable = [
                s
                for s in _scales(rows)
                if _valid(_row(rows, s, hot).get(metric, math.nan))
                and _valid(_row(rows, s, cold).get(metric, math.nan))
            ]
            if usable:
                rises = [s for s in usable if _row(rows, s, hot)[metric] > _row(rows, s, cold)[metric]]
                lines.append(
                    f'Temperature sampling: {what} is higher at τ = {_tau(hot):g} than at τ = {_tau(cold):g} at '
                    f'{len(rises)} of {len(usable)} scales'
                    + (f' ({", ".join(rises)})' if rises else '')
                    + f'; mean {np.mean([_row(rows, s, cold)[metric] for s in usable]):.3f} at τ = {_tau(cold):g}, '
                    f'{np.mean([_row(rows, s, hot)[metric] for s in usable]):.3f} at τ = {_tau(hot):g}.'
                )
    # A lower seam ratio is only good news if the image is not worse otherwise: flag the scales where
    # the prior has both the lowest seam ratio and the lowest PSNR of every method.
    both = [
        s
        for s in _scales(rows)
        if all(_valid(_row(rows, s, m).get(k, math.nan)) for m in methods for k in ('seam', 'psnr'))
        and all(_row(rows, s, 'prior')['seam'] < _row(rows, s, m)['seam'] for m in samples)
        and all(_row(rows, s, 'prior')['psnr'] < _row(rows, s, m)['psnr'] for m in samples)
    ]
    if both:
        lines.append(
            f'At {", ".join(both)} the prior has both the lowest seam ratio and the lowest PSNR of all methods: '
            'there its lower seam ratio does not make it the better image (see the zoomed crops).'
        )
    bad = [r for r in rows if r.get('nonfinite')]
    if bad:
        counts = ', '.join(f'{_method_label(r["method"])} at {r["scale"]}: {r["nonfinite"]}' for r in bad)
        lines.append(f'Images with non-finite pixels (exploding inverse): {counts}.')
    else:
        lines.append(
            f'No method produced non-finite pixels at any scale ({len(_scales(rows))} scales × '
            f'{rows[0]["images"]} held-out images).'
        )
    for metric, reason in skipped.items():
        lines.append(f'{metric.upper()} was not computed: {reason}')
    return lines


def plot_linf_scales(rows: list[dict], path: Path) -> None:
    """Plot PSNR, the seam ratio and the grid periodicity against the scale, one line per method, out of
    distribution shaded.

    Args:
        rows: Rows of :func:`load_linf_run`.
        path: The PNG to write.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    scales = _scales(rows)
    xs = [_scale_value(s) for s in scales]
    methods = _methods(rows)
    taus = [m for m in methods if _tau(m) is not None]
    colours = plt.cm.viridis(np.linspace(0.15, 0.85, max(len(taus), 1)))
    in_dist = [_scale_value(r['scale']) for r in rows if r.get('group') == 'in-distribution']
    panels = [m for m in ('psnr', 'seam', 'periodicity') if any(_valid(r.get(m, math.nan)) for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    for ax, metric in zip(np.atleast_1d(axes), panels):
        for method in methods:
            ys = [_row(rows, s, method).get(metric, math.nan) for s in scales]
            if method == 'prior':
                ax.plot(xs, ys, 's--', color='tab:red', linewidth=2, label='learned prior')
            else:
                colour = colours[taus.index(method)]
                ax.plot(xs, ys, 'o-', color=colour, label=f'τ = {_tau(method):g}')
        if in_dist and max(in_dist) < max(xs):
            ax.axvspan(max(in_dist), max(xs), color='grey', alpha=0.12, label='out of distribution')
        if metric == 'seam':
            ax.axhline(1.0, color='black', linewidth=0.8, linestyle=':')
        ax.set_xscale('log')
        ax.set_xticks(xs)
        ax.set_xticklabels(scales)
        ax.minorticks_off()
        ax.set_xlabel('scale')
        hint = {'seam': ' (1 = no seams, lower is better)', 'periodicity': ' (0 = none, lower is better)'}
        ax.set_ylabel(METRIC_LABELS[metric] + hint.get(metric, ''))
        ax.set_title(f'LINF: {METRIC_LABELS[metric]} against scale (held-out photos)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _zoom(image: np.ndarray, top: int, left: int) -> np.ndarray:
    crop = image[top : top + LINF_ZOOM, left : left + LINF_ZOOM]
    return cv2.resize(
        crop, (crop.shape[1] * LINF_ENLARGE, crop.shape[0] * LINF_ENLARGE), interpolation=cv2.INTER_NEAREST
    )


def linf_zoom_grid(results: Path, dataset_root: Path, rows: list[dict], scale: str, path: Path) -> str:
    """Zoomed, nearest-neighbour enlarged centre crops at ``scale`` (e.g. 'x4'): one row per held-out
    photo, columns HR, the prior, τ = 0 (or the coolest temperature) and the hottest temperature.

    The crop starts on the 3x3 patch grid of the SR (which starts at the image's top-left), so its
    seams fall between every third enlarged pixel.

    Args:
        results: The test run's results folder (SR images and per-image CSVs).
        dataset_root: The demo dataset (``val/HR``).
        rows: Rows of :func:`load_linf_run`.
        scale: The scale shown, as the rows write it.
        path: The PNG to write.

    Returns:
        The name of the test set shown.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    dataset = _row(rows, scale, 'prior')['dataset']
    taus = sorted((m for m in _methods(rows) if _tau(m) is not None), key=_tau)
    methods = ['prior', *dict.fromkeys([taus[0], taus[-1]])] if taus else ['prior']
    with open(results / f'metrics_{dataset}.csv') as handle:
        per_image = list(csv.DictReader(handle))
    images = sorted({r['image'] for r in per_image})
    fig, axes = plt.subplots(len(images), 1 + len(methods), figsize=(2.8 * (1 + len(methods)), 3.1 * len(images)))
    axes = np.atleast_2d(axes)
    for i, image in enumerate(images):
        srs = [_read_rgb(results / 'visualization' / dataset / m / f'{image}.png') for m in methods]
        h, w = srs[0].shape[:2]
        hr = _read_rgb(dataset_root / 'val' / 'HR' / f'{image}.png')[:h, :w]  # the test's top-left HR region
        top = max(0, (h - LINF_ZOOM) // 2) // 3 * 3
        left = max(0, (w - LINF_ZOOM) // 2) // 3 * 3
        panels = [('HR', hr)]
        for method, sr in zip(methods, srs):
            row = next(r for r in per_image if r['image'] == image and r['method'] == method)
            numbers = []
            if row.get('psnr'):
                numbers.append(f'{float(row["psnr"]):.2f} dB')
            if row.get('seam'):
                numbers.append(f'seam {float(row["seam"]):.3f}')
            if row.get('periodicity'):
                numbers.append(f'per. {float(row["periodicity"]):.3f}')
            panels.append((_method_label(method).replace(' = ', '=') + '\n' + ', '.join(numbers), sr))
        for ax, (title, picture) in zip(axes[i], panels):
            ax.imshow(_zoom(picture, top, left), interpolation='nearest')
            ax.set_title(f'{image}: {title}' if title == 'HR' else title, fontsize=9)
            ax.axis('off')
    fig.suptitle(
        f'LINF at {scale}: {LINF_ZOOM}×{LINF_ZOOM} HR centre crops enlarged ×{LINF_ENLARGE} (nearest neighbour)',
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return dataset


def hr_grid_scores(results: Path, dataset_root: Path, dataset: str) -> tuple[float, float]:
    """Mean grid-seam ratio and grid periodicity of the held-out HR photos themselves: what a result
    without grid artifacts scores.

    Args:
        results: The test run's results folder.
        dataset_root: The demo dataset (``val/HR``).
        dataset: The test set whose crop is used (the top-left region its SR images cover).

    Returns:
        The mean seam ratio and the mean periodicity over the photos (NaN when the test set has no images).
    """
    from flowprior_plugin.metrics.grid_periodicity_metric import calculate_grid_periodicity
    from flowprior_plugin.metrics.grid_seam_metric import calculate_grid_seam

    ratios, shares = [], []
    for sr_path in sorted((results / 'visualization' / dataset / 'prior').glob('*.png')):
        h, w = _read_rgb(sr_path).shape[:2]
        hr = _read_rgb(dataset_root / 'val' / 'HR' / sr_path.name)[:h, :w].astype(np.float64)
        ratios.append(calculate_grid_seam(hr, patch_size=3))
        shares.append(calculate_grid_periodicity(hr, patch_size=3))
    if not ratios:
        return math.nan, math.nan
    return float(np.mean(ratios)), float(np.mean(shares))


def linf_section(results: Path, dataset_root: Path, out_dir: Path, context: dict) -> list[str]:
    """The report's "LINF (arbitrary scale)" section: setup, multi-scale table, findings, plot, grids.

    Writes ``linf_scales.png`` and ``linf_grid_<scale>.png`` (x4 and the largest scale) into ``out_dir``.

    Args:
        results: The LINF test run's results folder.
        dataset_root: The demo dataset.
        out_dir: The report's folder.
        context: :func:`write_report`'s, with the LINF keys: ``iterations`` and ``timings`` of
            ``linf1`` / ``linf2`` (and ``timings['linf_test']``), ``linf_nll`` / ``linf_latent``
            (logged losses) and ``linf_options`` (the ``network``, ``data`` and ``generator``
            sections of the option files).

    Returns:
        The section's markdown lines.
    """
    rows, skipped = load_linf_run(results)
    plot = out_dir / 'linf_scales.png'
    plot_linf_scales(rows, plot)
    scales = _scales(rows)
    grid_scales = list(dict.fromkeys(s for s in (LINF_GRID_SCALE, scales[-1]) if s in scales))
    grids = {s: out_dir / f'linf_grid_{s}.png' for s in grid_scales}
    shown = {s: linf_zoom_grid(results, dataset_root, rows, s, path) for s, path in grids.items()}
    hr_seam, hr_periodicity = hr_grid_scores(results, dataset_root, shown[grid_scales[0]])

    timings, iters = context['timings'], context['iterations']
    setup = context['linf_options']
    net, data, generator = setup['network'], setup['data'], setup['generator']
    encoder = net.get('encoder_opt') or {}
    flow_text = (
        f'LINF {net["patch_size"]}×{net["patch_size"]}-patch flow, {net["encoder"]} encoder '
        f'({encoder.get("num_blocks", "released")} blocks × {encoder.get("nf", "released")} features), hidden width '
        f'{net["hidden_dim"]}, {net["flow_layers"]} flow layers'
    )
    data_text = (
        f'a random scale per sample in [{float(data["scale_min"]):g}, {float(data["scale_max"]):g}], '
        f'{data["lq_size"]}×{data["lq_size"]} LR crops ({str(data.get("lr_resize", "pil")).upper()} bicubic) with '
        f'{data["gt_size"]}×{data["gt_size"]} HR windows'
    )
    linf_nll, linf_latent = context.get('linf_nll') or [], context.get('linf_latent') or []
    # Without dequantisation noise the NLL is a density of continuous values, not discrete bits: say
    # so, or a negative number would read as a bug.
    nll_note = (
        ''
        if net.get('dequantization') == 'uniform'
        else ', the density of the 8-bit residual taken as continuous values (no dequantisation noise, as '
        "LINF's release trains), so it can go below zero"
    )
    groups = {}
    for scale in scales:
        groups.setdefault(_row(rows, scale, 'prior').get('group') or 'ungrouped', []).append(scale)
    return [
        '## LINF (arbitrary scale)',
        "The same comparison on LINF's 3×3-patch flow, which samples every patch independently (the source of "
        'the "grid artifacts" the learned prior is meant to remove), at several scales in one `basicsr test` run. '
        'The training patches are the same as above; the scale is drawn per sample.',
        '',
        f'- Stage 1, {flow_text}, by likelihood on {data_text}: {iters["linf1"]} iterations in '
        f'{timings["linf1"]:.0f} s; NLL {_trajectory(linf_nll, "bits/pixel")}{nll_note}.',
        f'- Stage 2, learned prior on the frozen LINF (LR encoder with stride 3, UNet depth '
        f'{generator["depth"]} width {generator["width"]}), latent L1 objective (no VGG19 weights '
        f'offline, as above): {iters["linf2"]} iterations in {timings["linf2"]:.0f} s; latent L1 '
        f'{_trajectory(linf_latent, "")}.',
        f'- Evaluation on the held-out photos at {", ".join(scales)}: '
        + '; '.join(f'{group} {", ".join(members)}' for group, members in groups.items())
        + f' (LR by MATLAB bicubic up to x4, PIL bicubic above, as LINF evaluates): {timings["linf_test"]:.0f} s.',
        '',
        '### Results per scale (mean over the held-out photos)',
        *linf_table(rows),
        '',
        'Seam ratio: mean squared pixel step across the 3×3 patch grid over that inside patches (about 1 = no '
        f'seams; higher = visible grid artifacts). For reference, the HR photos themselves score {_fmt(hr_seam, 3)} '
        f'(cropped as at {grid_scales[0]}). The ratio weighs steps across the grid against steps inside patches: '
        'a pattern that repeats in every patch (a blob per patch) raises the steps inside patches as much as or '
        'more than those across, so it can leave the ratio near 1 or below. Grid periodicity measures exactly that '
        'case: the share of the fine detail that is the same in every 3×3 patch (0 for a photo, 1 for a pure '
        f'lattice); the HR photos score {_fmt(hr_periodicity, 4)}.',
        '',
        '### What this run showed (LINF)',
        *[f'- {line}' for line in linf_findings(rows, skipped)],
        '',
        '### Plot',
        f'![PSNR, seam ratio and grid periodicity against scale]({plot.name})',
        '',
        '### Zoomed crops',
        f'Centre crops of {LINF_ZOOM}×{LINF_ZOOM} HR pixels at {" and ".join(grid_scales)}, enlarged '
        f'×{LINF_ENLARGE} without smoothing: a 3×3 patch is {3 * LINF_ENLARGE}×{3 * LINF_ENLARGE} screen pixels, so '
        'grid artifacts show as a lattice at that period. Captions: PSNR, seam ratio and grid periodicity '
        '(per.) of the whole image.',
        '',
        *[f'![LINF zoomed crops at {s}]({path.name})' for s, path in grids.items()],
        '',
        f'Per-image numbers: `{results / f"metrics_{shown[grid_scales[0]]}.csv"}` (one file per scale); SR images: '
        f'`{results / "visualization"}`; all scales: `{results / "summary.md"}`.',
        '',
    ]
