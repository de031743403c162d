"""The demo's numbers and report: ``summary.json`` of the held-out photos, and a report that opens
with a verdict on the paper's three claims, checks the targets of issue #11, and shows per-method
means with their per-image spread, the validation split, how the objectives were chosen, timings,
plots and zoomed image grids.

Nothing in the report is written in advance: every statement about the result is chosen by
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

from flowprior_plugin.models.flow_base import method_name

METRIC_LABELS = {
    'psnr': 'PSNR (dB)',
    'ssim': 'SSIM',
    'lr_psnr': 'LR-PSNR (dB)',
    'lpips': 'LPIPS',
    'seam': 'seam ratio',
    'periodicity': 'grid periodicity',
    'diversity': 'diversity (8-bit levels)',
}
LOWER_IS_BETTER = {'lpips', 'seam', 'periodicity'}
HELDOUT_PREFIX = 'demo_heldout'  # demo_heldout (SRFlow) and demo_heldout_x2 .. _x12 (LINF)
VALIDATION_GROUP = 'validation'
REQUIRED = ('psnr', 'ssim', 'lr_psnr')  # in every method entry of summary.json, even when not computed (null)
LINF_REQUIRED = (*REQUIRED, 'seam', 'periodicity')
_META = ('dataset', 'scale', 'group', 'method', 'images', 'nonfinite')
# Issue #11's targets name these scales and reference temperatures.
IN_DISTRIBUTION = ('x2', 'x3', 'x4')
OUT_OF_DISTRIBUTION = ('x6', 'x8', 'x12')
TAU_COLD, TAU_HOT = method_name(0.0), method_name(0.8)
ROUTES = {'srflow': 'SRFlow', 'linf': 'LINF'}
PERIODICITY_MARGIN = 0.01  # the prior's periodicity may exceed the HR photos' by this much
GRID_PHOTOS = 3  # photos shown in each zoomed grid: the prior's largest, median and smallest gain
SRFLOW_ZOOM = 96  # side of the HR crop of the SRFlow grid
SRFLOW_ENLARGE = 2
LINF_GRID_SCALE = 'x4'
LINF_ZOOM = 48  # side of the HR crop shown in the LINF grid (a multiple of the 3x3 patch)
LINF_ENLARGE = 4  # nearest-neighbour enlargement of that crop, so single-pixel seams stay visible


# ---------------------------------------------------------------------------------------------- reading
def _tau(method: str) -> float | None:
    match = re.fullmatch(r'tau([-\d.e]+)', method)
    return float(match[1]) if match else None


def _valid(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 'n/a'
    return f'{value:.{digits}f}' if isinstance(value, float) else str(value)


def _label(method: str) -> str:
    return method.replace('tau', 'τ = ')


def _scale_value(scale: str) -> float:
    """'x2' (as the run table writes scales) -> 2.0."""
    return float(scale.lstrip('x'))


def read_per_image(path: Path) -> list[dict]:
    """A test set's ``metrics_<dataset>.csv``: one dict per image and method, metrics as floats
    (NaN where empty) and ``finite`` as a bool."""
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in list(row):
            if key == 'finite':
                row[key] = row[key] == 'True'
            elif key not in ('image', 'method'):
                row[key] = float(row[key]) if row[key] not in ('', None) else math.nan
    return rows


def load_run(results: Path) -> tuple[list[dict], dict[str, str]]:
    """The rows of a test run's ``summary.json`` (every test set and method, sorted by scale, each
    scale keeping the run's method order) and its skipped metrics with their reasons."""
    data = json.loads((results / 'summary.json').read_text())
    rows = sorted(data['rows'], key=lambda r: _scale_value(r['scale']) if r['scale'] else 0.0)
    return rows, data.get('skipped_metrics', {})


def _metrics(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r if k not in _META))


def _heldout(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r['dataset'].startswith(HELDOUT_PREFIX)]


def _spread(per_image: list[dict], method: str, metric: str) -> tuple[float, float, float, float]:
    """Mean, standard deviation (over the photos, ddof 0), min and max of one metric of one method."""
    values = [r[metric] for r in per_image if r['method'] == method and _valid(r.get(metric))]
    if not values:
        return math.nan, math.nan, math.nan, math.nan
    return float(np.mean(values)), float(np.std(values)), float(min(values)), float(max(values))


def _entries(results: Path, rows: list[dict], required: tuple[str, ...]) -> dict[str, dict]:
    """summary.json's ``{scale: {method: entry}}`` for the held-out rows of one run."""
    out: dict[str, dict] = {}
    per_image: dict[str, list[dict]] = {}
    for row in _heldout(rows):
        if row['dataset'] not in per_image:
            per_image[row['dataset']] = read_per_image(results / f'metrics_{row["dataset"]}.csv')
        entry = {}
        for metric in _metrics([row]):
            mean = row.get(metric)
            if _valid(mean):
                entry[metric] = float(mean)
                entry[f'{metric}_std'] = _spread(per_image[row['dataset']], row['method'], metric)[1]
            elif metric in required:  # not computed: present, but null
                entry[metric] = entry[f'{metric}_std'] = None
        for metric in required:
            entry.setdefault(metric, None)
            entry.setdefault(f'{metric}_std', None)
        entry['nonfinite'] = int(row['nonfinite'])
        entry['images'] = int(row['images'])
        out.setdefault(row['scale'], {})[row['method']] = entry
    return out


def hr_grid_scores(hr_dir: Path) -> tuple[float, float]:
    """Mean grid-seam ratio and grid periodicity (3x3 patches) of the HR photos in ``hr_dir``: what
    a result without grid artifacts scores. NaN when the folder has no PNG."""
    from flowprior_plugin.metrics.grid_periodicity_metric import calculate_grid_periodicity
    from flowprior_plugin.metrics.grid_seam_metric import calculate_grid_seam

    seams, shares = [], []
    for path in sorted(hr_dir.glob('*.png')):
        hr = _read_rgb(path).astype(np.float64)
        seams.append(calculate_grid_seam(hr, patch_size=3))
        shares.append(calculate_grid_periodicity(hr, patch_size=3))
    if not seams:
        return math.nan, math.nan
    return float(np.mean(seams)), float(np.mean(shares))


def heldout_summary(srflow_results: Path, linf_results: Path, dataset_root: Path) -> dict:
    """The held-out numbers of both test runs, in ``results/demo/summary.json``'s shape (without
    ``seconds``, which the demo adds).

    Args:
        srflow_results: The SRFlow test run's ``results/<name>`` folder.
        linf_results: The LINF multi-scale test run's folder.
        dataset_root: The demo dataset (its ``test/HR`` photos give the ``hr`` scores).

    Returns:
        ``{'srflow': {'x4': {method: entry}}, 'linf': {'x2': {...}, ...}, 'hr': {'linf_seam',
        'linf_periodicity'}}``. An entry holds each metric's mean over the held-out photos and its
        per-image standard deviation (``<metric>_std``; ``psnr``, ``ssim``, ``lr_psnr`` and, for LINF,
        ``seam`` and ``periodicity`` always, null if not computed; others such as ``lpips`` only when
        computed), ``nonfinite`` (images with non-finite pixels) and ``images``.
    """
    srflow_rows, _ = load_run(srflow_results)
    linf_rows, _ = load_run(linf_results)
    seam, periodicity = hr_grid_scores(dataset_root / 'test' / 'HR')
    return {
        'srflow': _entries(srflow_results, srflow_rows, REQUIRED),
        'linf': _entries(linf_results, linf_rows, LINF_REQUIRED),
        'hr': {'linf_seam': seam, 'linf_periodicity': periodicity},
    }


# ---------------------------------------------------------------------------------------------- verdict
def _temperatures(methods: dict) -> list[str]:
    return sorted((m for m in methods if _tau(m) is not None), key=_tau)


def _best(methods: dict, metric: str) -> str | None:
    """The temperature with the best mean of ``metric`` (None when none has a value)."""
    usable = [m for m in _temperatures(methods) if _valid(methods[m].get(metric))]
    if not usable:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(usable, key=lambda m: methods[m][metric])


def _conclusion(passed: int, total: int) -> str:
    if total == 0:
        return 'not measured in this run'
    if passed == total:
        return 'supported by this run'
    if passed == 0:
        return 'not supported by this run'
    return f'partly supported ({passed} of {total} checks)'


def _value(summary: dict, route: str, scale: str, method: str, metric: str):
    value = summary.get(route, {}).get(scale, {}).get(method, {}).get(metric)
    return value if _valid(value) else None


def grid_verdict(summary: dict) -> str:
    """The grid-artifact claim at x2-x4: the LINF prior's seam ratio below τ = 0's and τ = 0.8's, its
    periodicity at most the HR photos' + 0.01."""
    hr = summary.get('hr', {}).get('linf_periodicity')
    limit = hr + PERIODICITY_MARGIN if _valid(hr) else None
    seam_parts, period_parts, passed, total = [], [], 0, 0
    for scale in IN_DISTRIBUTION:
        prior, cold, hot = (_value(summary, 'linf', scale, m, 'seam') for m in ('prior', TAU_COLD, TAU_HOT))
        if None not in (prior, cold, hot):
            ok = prior < cold and prior < hot
            passed, total = passed + ok, total + 1
            seam_parts.append(f'{scale} {prior:.3f} vs {cold:.3f} and {hot:.3f}')
        period = _value(summary, 'linf', scale, 'prior', 'periodicity')
        if period is not None and limit is not None:
            ok = period <= limit
            passed, total = passed + ok, total + 1
            period_parts.append(f'{scale} {period:.4f}')
    seam_text = '; '.join(seam_parts) or 'not measured'
    period_text = ', '.join(period_parts) or 'not measured'
    return (
        f'**Grid artifacts** (LINF, {", ".join(IN_DISTRIBUTION)}): {_conclusion(passed, total)}. Seam ratio of '
        f'the prior vs {_label(TAU_COLD)} and {_label(TAU_HOT)} (lower is better): {seam_text}. Periodicity of the '
        f"prior: {period_text}, against a limit of the HR photos' {_fmt(hr, 4)} + {PERIODICITY_MARGIN}."
    )


def _nonfinite_counts(summary: dict) -> tuple[int, int, dict[str, dict[str, int]]]:
    """Non-finite images of the prior, images it was scored on, and per route the non-finite images
    of every temperature summed over the scales."""
    prior = images = 0
    sampled: dict[str, dict[str, int]] = {}
    for route in ROUTES:
        for methods in summary.get(route, {}).values():
            if 'prior' in methods:
                prior += methods['prior']['nonfinite']
                images += methods['prior']['images']
            for method in _temperatures(methods):
                totals = sampled.setdefault(route, {})
                totals[method] = totals.get(method, 0) + methods[method]['nonfinite']
    return prior, images, sampled


def exploding_verdict(summary: dict) -> str:
    """The exploding-inverse claim: images with non-finite pixels, prior against every temperature."""
    prior, images, sampled = _nonfinite_counts(summary)
    if prior > 0:
        conclusion = f'not supported by this run: the prior itself produced {prior}'
    elif any(n for totals in sampled.values() for n in totals.values()):
        conclusion = 'supported by this run: only temperature sampling produced non-finite images'
    else:
        conclusion = 'no method produced a non-finite image here, so this run shows neither the failure nor its fix'
    parts = [
        f'{ROUTES[route]} ({", ".join(summary[route])}): ' + ', '.join(f'{_label(m)}: {n}' for m, n in totals.items())
        for route, totals in sampled.items()
    ]
    return (
        f'**Exploding inverses** (both routes): {conclusion}. Non-finite images of the prior: {prior} of {images}; '
        f'of temperature sampling: {"; ".join(parts) or "not measured"}.'
    )


def best_temperature_per_image(per_image: list[dict], metric: str = 'psnr') -> dict[str, str]:
    """Image -> the temperature with the best ``metric`` on that image."""
    best: dict[str, tuple[float, str]] = {}
    pick_lower = metric in LOWER_IS_BETTER
    for row in per_image:
        if _tau(row['method']) is None or not _valid(row.get(metric)):
            continue
        score = -row[metric] if pick_lower else row[metric]
        if row['image'] not in best or score > best[row['image']][0]:
            best[row['image']] = (score, row['method'])
    return {image: method for image, (_, method) in best.items()}


def temperature_verdict(summary: dict, per_image: list[dict]) -> str:
    """The fixed-temperature claim (SRFlow x4): the prior's PSNR and LR-PSNR against the best fixed
    temperature, and how the best temperature varies from photo to photo."""
    methods = next(iter(summary.get('srflow', {}).values()), {})
    scale = next(iter(summary.get('srflow', {})), '?')
    parts, passed, total = [], 0, 0
    for metric in ('psnr', 'lr_psnr'):
        best = _best(methods, metric)
        prior = _value(summary, 'srflow', scale, 'prior', metric)
        if best is None or prior is None:
            continue
        ok = prior >= methods[best][metric]
        passed, total = passed + ok, total + 1
        parts.append(
            f'{METRIC_LABELS[metric]} {prior:.2f} against {methods[best][metric]:.2f} for the best fixed '
            f'temperature ({_label(best)})'
        )
    per_photo = best_temperature_per_image(per_image)
    counts: dict[str, list[str]] = {}
    for image, method in sorted(per_photo.items()):
        counts.setdefault(method, []).append(image)
    spread = '; '.join(f'{_label(m)} on {len(ims)} ({", ".join(ims)})' for m, ims in sorted(counts.items()))
    beats = sum(
        1
        for image, method in per_photo.items()
        for prior in [r for r in per_image if r['image'] == image and r['method'] == 'prior' and _valid(r['psnr'])]
        for tau in [r for r in per_image if r['image'] == image and r['method'] == method]
        if prior['psnr'] >= tau['psnr']
    )
    return (
        f'**Fixed temperature** (SRFlow {scale}): {_conclusion(passed, total)}. The prior scores '
        f'{"; ".join(parts) or "not measured"}. The best temperature by PSNR differs per photo: '
        f"{spread or 'not measured'}; the prior matches or beats each photo's own best temperature on {beats} of "
        f'{len(per_photo)} photos.'
    )


def check_targets(summary: dict) -> list[tuple[str, str, bool | None]]:
    """Issue #11's targets on the held-out photos: (target, measured numbers, met; None = not measured)."""
    checks: list[tuple[str, str, bool | None]] = []

    def at_least_every(route: str, scale: str, metric: str, taus: list[str] | None = None) -> None:
        methods = summary.get(route, {}).get(scale, {})
        taus = taus if taus is not None else _temperatures(methods)
        prior = _value(summary, route, scale, 'prior', metric)
        others = {t: _value(summary, route, scale, t, metric) for t in taus}
        who = 'every fixed τ' if len(taus) != 1 else _label(taus[0])
        target = f'{ROUTES[route]} {scale}: prior {METRIC_LABELS[metric]} ≥ {who}'
        if prior is None or not others or None in others.values():
            checks.append((target, 'not measured', None))
            return
        measured = f'prior {prior:.2f}; ' + ', '.join(f'{_label(t)} {v:.2f}' for t, v in others.items())
        checks.append((target, measured, all(prior >= v for v in others.values())))

    for scale in summary.get('srflow', {}):
        at_least_every('srflow', scale, 'psnr')
        at_least_every('srflow', scale, 'lr_psnr')
    hr = summary.get('hr', {}).get('linf_periodicity')
    for scale in IN_DISTRIBUTION:
        at_least_every('linf', scale, 'psnr')
        prior, cold, hot = (_value(summary, 'linf', scale, m, 'seam') for m in ('prior', TAU_COLD, TAU_HOT))
        target = f'LINF {scale}: prior seam ratio < {_label(TAU_COLD)} and {_label(TAU_HOT)}'
        if None in (prior, cold, hot):
            checks.append((target, 'not measured', None))
        else:
            measured = f'prior {prior:.3f}; {_label(TAU_COLD)} {cold:.3f}, {_label(TAU_HOT)} {hot:.3f}'
            checks.append((target, measured, prior < cold and prior < hot))
        period = _value(summary, 'linf', scale, 'prior', 'periodicity')
        target = f'LINF {scale}: prior periodicity ≤ HR + {PERIODICITY_MARGIN}'
        if period is None or not _valid(hr):
            checks.append((target, 'not measured', None))
        else:
            measured = f'prior {period:.4f}; HR {hr:.4f} + {PERIODICITY_MARGIN} = {hr + PERIODICITY_MARGIN:.4f}'
            checks.append((target, measured, period <= hr + PERIODICITY_MARGIN))
    for scale in OUT_OF_DISTRIBUTION:
        at_least_every('linf', scale, 'psnr', [TAU_HOT])
    prior, images, _ = _nonfinite_counts(summary)
    target = 'The prior never produces a non-finite image (both routes, every scale)'
    checks.append((target, f'{prior} of {images} images non-finite', prior == 0 if images else None))
    return checks


def targets_section(summary: dict) -> list[str]:
    checks = check_targets(summary)
    met = sum(ok is True for _, _, ok in checks)
    measured = sum(ok is not None for _, _, ok in checks)
    lines = [
        '## Targets of issue #11 (held-out photos)',
        f'{met} of {len(checks)} targets met'
        + (f' ({len(checks) - measured} not measured).' if measured < len(checks) else '.'),
        '',
        '| target | measured | result |',
        '|---|---|---|',
    ]
    for target, numbers, ok in checks:
        lines.append(f'| {target} | {numbers} | {"met" if ok else "not measured" if ok is None else "**not met**"} |')
    return lines


# ---------------------------------------------------------------------------------------------- tables
def spread_table(results: Path, rows: list[dict], with_scale: bool) -> list[str]:
    """Per-method means with their per-image spread: each cell 'mean ± std (min–max)' over the photos."""
    metrics = [m for m in _metrics(rows) if any(_valid(r.get(m)) for r in rows)]
    header = [*(['scale', 'group'] if with_scale else []), 'method', *[METRIC_LABELS.get(m, m) for m in metrics]]
    table = ['| ' + ' | '.join([*header, 'non-finite images']) + ' |', '|' + '---|' * (len(header) + 1)]
    per_image: dict[str, list[dict]] = {}
    for row in rows:
        if row['dataset'] not in per_image:
            per_image[row['dataset']] = read_per_image(results / f'metrics_{row["dataset"]}.csv')
        cells = [row['scale'], row.get('group') or '-'] if with_scale else []
        cells.append(_label(row['method']))
        for metric in metrics:
            mean, std, low, high = _spread(per_image[row['dataset']], row['method'], metric)
            digits = 4 if re.search('ssim|periodicity|lpips', metric) else 3 if 'seam' in metric else 2
            cells.append(
                'n/a'
                if math.isnan(mean)
                else f'{mean:.{digits}f} ± {std:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})'
            )
        cells.append(f'{row["nonfinite"]} of {row["images"]}')
        table.append('| ' + ' | '.join(cells) + ' |')
    return table


def _better(a: float, b: float, metric: str) -> bool:
    return a < b if metric in LOWER_IS_BETTER else a > b


def _scales(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r['scale'] for r in rows))


def _methods(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r['method'] for r in rows))


def _row(rows: list[dict], scale: str, method: str) -> dict:
    return next(r for r in rows if r['scale'] == scale and r['method'] == method)


def linf_findings(rows: list[dict]) -> list[str]:
    """Per metric and scale group of the LINF run: the prior's mean against the temperature with the
    best mean, and at how many scales the prior beats every temperature."""
    methods = _methods(rows)
    samples = [m for m in methods if _tau(m) is not None]
    if 'prior' not in methods or not samples:
        return ['The LINF table lacks the learned prior or temperature sampling; nothing to compare.']
    lines = []
    groups = list(dict.fromkeys(r.get('group') or 'all scales' for r in rows))
    for metric in ('psnr', 'ssim', 'lr_psnr', 'seam', 'periodicity'):
        parts = []
        for group in groups:
            scales = [s for s in _scales(rows) if (_row(rows, s, 'prior').get('group') or 'all scales') == group]
            usable = [s for s in scales if all(_valid(_row(rows, s, m).get(metric)) for m in ['prior', *samples])]
            if not usable:
                continue
            means = {m: float(np.mean([_row(rows, s, m)[metric] for s in usable])) for m in ['prior', *samples]}
            best = (min if metric in LOWER_IS_BETTER else max)(samples, key=lambda m: means[m])
            wins = [
                s
                for s in usable
                if all(_better(_row(rows, s, 'prior')[metric], _row(rows, s, m)[metric], metric) for m in samples)
            ]
            diff = means['prior'] - means[best]
            verdict = (
                'equal to'
                if diff == 0
                else (
                    f'{"better" if _better(means["prior"], means[best], metric) else "worse"} by {abs(diff):.3f} than'
                )
            )
            parts.append(
                f'{group} ({", ".join(usable)}): the prior averages {means["prior"]:.3f}, {verdict} the best '
                f'temperature ({_label(best)}: {means[best]:.3f}); it beats every temperature at {len(wins)} of '
                f'{len(usable)} scales' + (f' ({", ".join(wins)})' if wins else '')
            )
        if parts:
            label = METRIC_LABELS[metric]
            lower = ' (lower is better)' if metric in LOWER_IS_BETTER else ''
            lines.append(f'{label[0].upper()}{label[1:]}{lower}: ' + '; '.join(parts) + '.')
    return lines


# ---------------------------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def plot_metrics_vs_temperature(methods: dict, path: Path) -> None:
    """SRFlow: PSNR and LR-PSNR (mean ± per-image std) against τ, the learned prior as its own band."""
    plt = _pyplot()
    taus = _temperatures(methods)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ('psnr', 'lr_psnr')):
        xs = [_tau(t) for t in taus]
        ys = [methods[t].get(metric) or math.nan for t in taus]
        err = [methods[t].get(f'{metric}_std') or 0.0 for t in taus]
        ax.errorbar(xs, ys, yerr=err, fmt='o-', capsize=3, label='temperature sampling (± std over photos)')
        prior = methods.get('prior', {})
        if _valid(prior.get(metric)):
            mean, std = prior[metric], prior.get(f'{metric}_std') or 0.0
            ax.axhline(mean, color='tab:red', linestyle='--', label='learned prior')
            ax.axhspan(mean - std, mean + std, color='tab:red', alpha=0.1)
        ax.set_xlabel('temperature τ')
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.set_title(f'SRFlow: {METRIC_LABELS[metric]} on held-out photos')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_linf_scales(linf: dict, hr: dict, path: Path) -> None:
    """LINF: PSNR, seam ratio and periodicity against scale, one line per method, the HR photos'
    seam ratio and periodicity as references."""
    plt = _pyplot()
    scales = sorted(linf, key=_scale_value)
    xs = [_scale_value(s) for s in scales]
    methods = list(dict.fromkeys(m for s in scales for m in linf[s]))
    taus = [m for m in methods if _tau(m) is not None]
    colours = plt.cm.viridis(np.linspace(0.15, 0.85, max(len(taus), 1)))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for ax, metric in zip(axes, ('psnr', 'seam', 'periodicity')):
        for method in methods:
            ys = [linf[s].get(method, {}).get(metric) or math.nan for s in scales]
            if method == 'prior':
                ax.plot(xs, ys, 's--', color='tab:red', linewidth=2, label='learned prior')
            else:
                ax.plot(xs, ys, 'o-', color=colours[taus.index(method)], label=_label(method))
        reference = hr.get(f'linf_{metric}')
        if _valid(reference):
            ax.axhline(reference, color='black', linewidth=0.8, linestyle=':', label='HR photos')
        ax.axvspan(max(_scale_value(s) for s in IN_DISTRIBUTION), max(xs), color='grey', alpha=0.1)
        ax.set_xscale('log')
        ax.set_xticks(xs)
        ax.set_xticklabels(scales)
        ax.minorticks_off()
        ax.set_xlabel('scale (shaded: out of distribution)')
        ax.set_ylabel(METRIC_LABELS[metric] + ('' if metric == 'psnr' else ' (lower is better)'))
        ax.set_title(f'LINF: {METRIC_LABELS[metric]} (held-out photos)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(losses: dict[str, dict[str, list[float]]], path: Path) -> None:
    """One panel per training stage, one line per logged loss."""
    plt = _pyplot()
    stages = [(stage, named) for stage, named in losses.items() if any(named.values())]
    if not stages:
        return
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.4))
    for ax, (stage, named) in zip(np.atleast_1d(axes), stages):
        for name, values in named.items():
            if values:
                ax.plot(range(1, len(values) + 1), values, label=name)
        ax.set_title(stage.replace('_', ', '), fontsize=10)
        ax.set_xlabel('logged step')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f'demo report: image not found: {path}')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def pick_photos(per_image: list[dict], count: int = GRID_PHOTOS) -> list[tuple[str, float]]:
    """The photos where the prior's PSNR gain over the best temperature on that photo is largest,
    median and smallest: (photo, gain in dB), largest first."""
    best = best_temperature_per_image(per_image)
    gains = []
    for image, method in best.items():
        prior = next((r['psnr'] for r in per_image if r['image'] == image and r['method'] == 'prior'), math.nan)
        tau = next(r['psnr'] for r in per_image if r['image'] == image and r['method'] == method)
        if _valid(prior):
            gains.append((image, prior - tau))
    gains.sort(key=lambda g: -g[1])
    if len(gains) <= count:
        return gains
    picks = np.linspace(0, len(gains) - 1, count).round().astype(int)
    return [gains[i] for i in dict.fromkeys(picks.tolist())]


def _zoom(image: np.ndarray, side: int, enlarge: int, multiple: int = 1) -> np.ndarray:
    """A centre crop of ``side`` pixels (its corner on a multiple of ``multiple``), enlarged by nearest neighbour."""
    h, w = image.shape[:2]
    top = max(0, (h - side) // 2) // multiple * multiple
    left = max(0, (w - side) // 2) // multiple * multiple
    crop = image[top : top + side, left : left + side]
    return cv2.resize(crop, (crop.shape[1] * enlarge, crop.shape[0] * enlarge), interpolation=cv2.INTER_NEAREST)


def zoom_grid(
    results: Path,
    dataset: str,
    hr_dir: Path,
    photos: list[tuple[str, float]],
    methods: list[str],
    title: str,
    path: Path,
    zoom: tuple[int, int, int] = (SRFLOW_ZOOM, SRFLOW_ENLARGE, 1),
    lr_dir: Path | None = None,
) -> None:
    """Rows of zoomed centre crops: optionally the LR (nearest), then each method's SR, then the HR.

    Args:
        results: The test run's folder (``visualization/<dataset>/<method>/<photo>.png``, per-image CSV).
        dataset: The test set shown.
        hr_dir: Folder of the HR photos (cropped to the SR's size: the region the test covers).
        photos: (photo, prior's gain in dB) per row, from :func:`pick_photos`.
        methods: Columns, in order.
        title: The figure's title.
        path: The PNG to write.
        zoom: HR crop side, enlargement, and the multiple the crop's corner sits on (3 for LINF's patch grid).
        lr_dir: Folder of the LR photos, for an LR column; None: no LR column.
    """
    plt = _pyplot()
    side, enlarge, multiple = zoom
    per_image = read_per_image(results / f'metrics_{dataset}.csv')
    columns = len(methods) + 1 + (lr_dir is not None)
    fig, axes = plt.subplots(len(photos), columns, figsize=(2.6 * columns, 2.9 * len(photos)), squeeze=False)
    for i, (photo, gain) in enumerate(photos):
        srs = [_read_rgb(results / 'visualization' / dataset / m / f'{photo}.png') for m in methods]
        h, w = srs[0].shape[:2]
        hr = _read_rgb(hr_dir / f'{photo}.png')[:h, :w]
        panels = []
        if lr_dir is not None:
            lr = _read_rgb(lr_dir / f'{photo}.png')
            panels.append(('LR (nearest)', cv2.resize(lr, (w, h), interpolation=cv2.INTER_NEAREST)))
        for method, sr in zip(methods, srs):
            row = next(r for r in per_image if r['image'] == photo and r['method'] == method)
            numbers = [f'{row["psnr"]:.2f} dB'] if _valid(row.get('psnr')) else []
            if _valid(row.get('seam')):
                numbers.append(f'seam {row["seam"]:.2f}')
            if _valid(row.get('periodicity')):
                numbers.append(f'per. {row["periodicity"]:.3f}')
            panels.append((_label(method).replace(' = ', '=') + '\n' + ', '.join(numbers), sr))
        panels.append((f'HR: {photo}\nprior gain {gain:+.2f} dB', hr))
        for ax, (caption, picture) in zip(axes[i], panels):
            ax.imshow(_zoom(picture, side, enlarge, multiple), interpolation='nearest')
            ax.set_title(caption, fontsize=8)
            ax.axis('off')
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- text
def _trajectory(values: list[float]) -> str:
    """How a logged loss moved: the mean of its first tenth of values against that of its last tenth."""
    if len(values) < 2:
        return 'not logged'
    k = max(1, len(values) // 10)  # a tenth smooths the noise of single logged batches
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    return f'{first:.4g} → {last:.4g} (mean of the first and last {k} logged values)'


def objective_text(losses: dict[str, dict]) -> str:
    """A stage-2 objective as its option file sets it, e.g. 'l_pix = L1Loss × 1 + l_latent = ...'."""
    active = [f'{name} = {loss["type"]} × {loss["weight"]:g}' for name, loss in losses.items() if loss['weight']]
    logged = [f'{name} ({loss["type"]}, weight 0: logged only)' for name, loss in losses.items() if not loss['weight']]
    return ' + '.join(active) + (f'; {", ".join(logged)}' if logged else '') if losses else 'no loss option set'


def _dict_table(rows: dict[str, dict]) -> list[str]:
    """A table of {row name: {column: value}}, columns in first-seen order."""
    columns = list(dict.fromkeys(k for values in rows.values() if isinstance(values, dict) for k in values))
    table = ['| | ' + ' | '.join(columns) + ' |', '|' + '---|' * (len(columns) + 1)]
    for name, values in rows.items():
        values = values if isinstance(values, dict) else {}
        table.append(f'| {name} | ' + ' | '.join(_fmt(values.get(c), 3) for c in columns) + ' |')
    return table


def objective_choice_section(path: Path) -> list[str]:
    """The "How the objectives were chosen" section from ``options/demo/objective_choice.json``."""
    lines = ['## How the objectives were chosen (validation split, not the held-out photos)']
    if not path.is_file():
        return [*lines, f'`{path}` is missing: this report cannot say how the stage-2 objectives were chosen.', '']
    try:
        choice = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return [*lines, f'`{path}` is not valid JSON ({exc}): the choice cannot be shown.', '']
    lines.append(
        f'Measured {choice.get("measured", "(date not given)")} on the {choice.get("split", "(split not given)")}.'
    )
    for route, title in ROUTES.items():
        entry = choice.get(route)
        if not isinstance(entry, dict):
            lines += ['', f'{title}: not in the file.']
            continue
        lines += [
            '',
            f'### {title}: chosen **{entry.get("chosen", "?")}**',
            f'Why: {entry.get("why", "(not given)")}',
            '',
        ]
        if isinstance(entry.get('candidates'), dict):
            # The prior of each candidate, then temperature sampling on the same photos for reference.
            temperatures = entry.get('temperatures') if isinstance(entry.get('temperatures'), dict) else {}
            lines += _dict_table({**entry['candidates'], **temperatures})
        checks = (('iterations_check', 'Training length'), ('alignment', 'LR alignment of the training windows'))
        for key, title in checks:
            check = entry.get(key)
            if isinstance(check, dict):
                # {'why': text, setting: {scale or split: metrics} or metrics} -> one row per setting and scale
                rows = {}
                for setting, values in check.items():
                    if isinstance(values, dict) and all(isinstance(v, dict) for v in values.values()):
                        rows.update({f'{setting}, {where}': v for where, v in values.items()})
                    elif isinstance(values, dict):
                        rows[setting] = values
                why = f' ({check["why"]})' if isinstance(check.get('why'), str) else ''
                lines += ['', f'{title}{why}:', '', *_dict_table(rows)]
    return [*lines, '']


def verdict_section(summary: dict, srflow_per_image: list[dict]) -> list[str]:
    return [
        '## Verdict (the six held-out photos)',
        f'- {grid_verdict(summary)}',
        f'- {exploding_verdict(summary)}',
        f'- {temperature_verdict(summary, srflow_per_image)}',
        '',
    ]


def write_report(
    summary: dict,
    srflow_results: Path,
    linf_results: Path,
    dataset_root: Path,
    out_dir: Path,
    context: dict,
) -> Path:
    """Write ``out_dir/report.md`` with its plots and grids; returns the report's path.

    Args:
        summary: :func:`heldout_summary`'s dict with ``seconds`` (the demo's time so far).
        srflow_results: The SRFlow test run's folder (held-out ``demo_heldout`` and validation sets).
        linf_results: The LINF test run's folder (held-out ``demo_heldout_x*`` and validation sets).
        dataset_root: The demo dataset (``test/`` held out, ``val/`` validation split).
        out_dir: Where the report and its figures go.
        context: From the demo: ``quick``, ``spec`` (DemoDatasetSpec), ``train_patches``,
            ``iterations`` and ``losses`` per training stage (logged values per loss name),
            ``objectives`` (per route, :func:`flowprior_plugin.demo.training_losses` of the prior's
            option file), ``objective_choice`` (path of the JSON), ``samples`` (draws per image of
            each route's test) and ``linf_options``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    srflow_rows, srflow_skipped = load_run(srflow_results)
    linf_rows, linf_skipped = load_run(linf_results)
    srflow_held, linf_held = _heldout(srflow_rows), _heldout(linf_rows)
    srflow_val = [r for r in srflow_rows if r not in srflow_held]
    linf_val = [r for r in linf_rows if r not in linf_held]
    srflow_dataset = srflow_held[0]['dataset']
    srflow_per_image = read_per_image(srflow_results / f'metrics_{srflow_dataset}.csv')
    test_hr, test_lr = dataset_root / 'test' / 'HR', dataset_root / 'test' / 'LR'

    srflow_methods = next(iter(summary['srflow'].values()))
    plot_metrics_vs_temperature(srflow_methods, out_dir / 'psnr_vs_tau.png')
    plot_linf_scales(summary['linf'], summary['hr'], out_dir / 'linf_scales.png')
    plot_losses(context['losses'], out_dir / 'losses.png')
    order = [*_temperatures(srflow_methods), 'prior']
    zoom_grid(
        srflow_results, srflow_dataset, test_hr, pick_photos(srflow_per_image), order,
        f'SRFlow x4: {SRFLOW_ZOOM}×{SRFLOW_ZOOM} HR centre crops enlarged ×{SRFLOW_ENLARGE} (nearest neighbour)',
        out_dir / 'srflow_grid.png', lr_dir=test_lr,
    )  # fmt: skip
    linf_scales = list(summary['linf'])
    grid_scales = list(dict.fromkeys(s for s in (LINF_GRID_SCALE, linf_scales[-1]) if s in linf_scales))
    linf_dataset = {r['scale']: r['dataset'] for r in linf_held}
    linf_photos = pick_photos(read_per_image(linf_results / f'metrics_{linf_dataset[grid_scales[0]]}.csv'))
    linf_taus = _temperatures(summary['linf'][grid_scales[0]])
    linf_columns = ['prior', *dict.fromkeys([linf_taus[0], linf_taus[-1]])] if linf_taus else ['prior']
    for scale in grid_scales:
        zoom_grid(
            linf_results, linf_dataset[scale], test_hr, linf_photos, linf_columns,
            f'LINF {scale}: {LINF_ZOOM}×{LINF_ZOOM} HR centre crops on the 3×3 patch grid, enlarged ×{LINF_ENLARGE}',
            out_dir / f'linf_grid_{scale}.png', zoom=(LINF_ZOOM, LINF_ENLARGE, 3),
        )  # fmt: skip

    spec, iters, losses = context['spec'], context['iterations'], context['losses']
    seconds = summary['seconds']
    objectives = context['objectives']
    linf_opt = context['linf_options']
    prior_data = linf_opt['prior_data']
    skipped = {**srflow_skipped, **linf_skipped}
    hr = summary['hr']
    text = [
        '# flowprior-plugin demo: the learned prior against temperature sampling',
        '',
        f'Run on {datetime.now():%Y-%m-%d %H:%M}, {platform.machine()} CPU, '
        + (
            'QUICK mode (a few iterations per stage, small photos: the numbers mean nothing)'
            if context['quick']
            else 'full demo'
        )
        + f'; {seconds["total"]:.0f} s of demo wall time before this report.',
        '',
        *verdict_section(summary, srflow_per_image),
        *targets_section(summary),
        '',
        '## Data (split by photo)',
        f'- Training: {context["train_patches"]} HR patches of {spec.patch}×{spec.patch} '
        f'(stride {spec.stride}) cut from '
        f'{", ".join(spec.train_photos)}; LR by MATLAB-style bicubic ×{spec.scale}.',
        f'- Validation split, where training choices are made: {", ".join(spec.validation_photos)} (whole photos).',
        f'- Held out, for the verdict only: {", ".join(spec.held_out_photos)} (whole photos, longer side '
        f'{spec.eval_max_side}). Every number above and in the next two sections is on these photos.',
        '',
        *objective_choice_section(Path(context['objective_choice'])),
        '## Training (ordinary `basicsr train` runs on `options/demo/`)',
        f'- SRFlow, stage 1 by likelihood: {iters["srflow_likelihood"]} iterations in '
        f'{seconds["stages"]["srflow_likelihood"]:.0f} s; l_nll {_trajectory(losses["srflow_likelihood"]["l_nll"])}.',
        f'- SRFlow, stage 2, learned prior on the frozen flow: {objective_text(objectives["srflow"])}; '
        f'{iters["srflow_prior"]} iterations in {seconds["stages"]["srflow_prior"]:.0f} s; '
        + '; '.join(f'{n} {_trajectory(v)}' for n, v in losses['srflow_prior'].items())
        + '.',
        f'- LINF, stage 1 by likelihood: {iters["linf_likelihood"]} iterations in '
        f'{seconds["stages"]["linf_likelihood"]:.0f} s; l_nll {_trajectory(losses["linf_likelihood"]["l_nll"])}.',
        f'- LINF, stage 2, learned prior on the frozen flow (UNet depth {linf_opt["generator"]["depth"]}, '
        f'{prior_data["lq_size"]}×{prior_data["lq_size"]} LR crops, {prior_data["gt_size"]}×{prior_data["gt_size"]} '
        f'HR windows, LR alignment `{linf_opt["lr_alignment"]}`): {objective_text(objectives["linf"])}; '
        f'{iters["linf_prior"]} iterations in {seconds["stages"]["linf_prior"]:.0f} s; '
        + '; '.join(f'{n} {_trajectory(v)}' for n, v in losses['linf_prior'].items())
        + '.',
        '- The paper trains the prior with a VGG19 perceptual loss; its ImageNet weights cannot be downloaded '
        'offline, so the demo trains the objectives above.',
        '',
        '![Logged training losses per stage](losses.png)',
        '',
        f'## SRFlow x4 on the held-out photos ({srflow_held[0]["images"]} photos)',
        'Each cell: mean ± standard deviation over the photos (min–max). Temperature sampling is scored per photo '
        f'as the mean over {context["samples"]["srflow"]} draw(s) (`val.samples`); LINF below over '
        f'{context["samples"]["linf"]}.',
        '',
        *spread_table(srflow_results, srflow_held, with_scale=False),
        '',
        '![PSNR and LR-PSNR against temperature](psnr_vs_tau.png)',
        '',
        'Zoomed crops of the photos where the prior gains most, a median one and where it gains least against '
        "that photo's best temperature:",
        '',
        '![SRFlow zoomed crops](srflow_grid.png)',
        '',
        f'## LINF at {", ".join(linf_scales)} on the held-out photos',
        '',
        *spread_table(linf_results, linf_held, with_scale=True),
        '',
        f'The HR photos themselves score a seam ratio of {_fmt(hr["linf_seam"], 3)} (about 1 = no seams on the 3×3 '
        f'patch grid) and a grid periodicity of {_fmt(hr["linf_periodicity"], 4)} (the share of detail repeated in '
        'every 3×3 patch; 0 for a photo, 1 for a pure lattice).',
        '',
        *[f'- {line}' for line in linf_findings(linf_held)],
        '',
        '![PSNR, seam ratio and grid periodicity against scale](linf_scales.png)',
        '',
        *[f'![LINF zoomed crops at {s}](linf_grid_{s}.png)' for s in grid_scales],
        '',
        *[f'{metric.upper()} was not computed: {reason}' for metric, reason in skipped.items()],
        '',
        '## Validation split (where training choices were made; not the verdict)',
        f'Photos {", ".join(spec.validation_photos)}.',
        '',
        '### SRFlow x4',
        *(spread_table(srflow_results, srflow_val, with_scale=False) if srflow_val else ['Not in this run.']),
        '',
        '### LINF',
        *(spread_table(linf_results, linf_val, with_scale=True) if linf_val else ['Not in this run.']),
        '',
        '## Time',
        f'Demo wall time before this report: {seconds["total"]:.0f} s ({seconds["total"] / 60:.1f} min), from the '
        "start of the demo's main function (after Python has imported torch and BasicSR); "
        '`results/demo/summary.json` adds the report itself.',
        '',
        '| step | seconds |',
        '|---|---|',
        *[f'| {stage.replace("_", " ")} | {value:.0f} |' for stage, value in seconds['stages'].items()],
        f'| total | {seconds["total"]:.0f} |',
        '',
        f'Numbers for tools: `{out_dir / "summary.json"}`. Per-image numbers: `{srflow_results}/metrics_*.csv`, '
        f'`{linf_results}/metrics_*.csv`; SR images under their `visualization/` folders.',
        '',
    ]
    report = out_dir / 'report.md'
    report.write_text('\n'.join(text))
    return report
