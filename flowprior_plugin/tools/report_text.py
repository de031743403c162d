"""The demo report's prose and markdown: the verdict on the paper's three claims, the targets of
issue #11, the per-method tables with their per-image spread, the LINF findings and how the
objectives were chosen. Every statement is chosen by comparing the measured values of the run.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from flowprior_plugin.result_tables import format_number, markdown_table, per_image_csv, read_per_image, temperature_of
from flowprior_plugin.tools.report_numbers import (
    IN_DISTRIBUTION,
    LOWER_IS_BETTER,
    METRIC_LABELS,
    OUT_OF_DISTRIBUTION,
    PERIODICITY_MARGIN,
    ROUTES,
    TAU_COLD,
    TAU_HOT,
    best_temperature_per_image,
    is_number,
    method_label,
    metric_columns,
    per_image_spread,
    summary_value,
    temperature_methods,
)


# ---------------------------------------------------------------------------------------------- verdict
def _best(methods: dict, metric: str) -> str | None:
    """The temperature with the best mean of ``metric`` (None when none has a value)."""
    usable = [m for m in temperature_methods(methods) if is_number(methods[m].get(metric))]
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


def grid_verdict(summary: dict) -> str:
    """The grid-artifact claim at x2-x4: the LINF prior's seam ratio below τ = 0's and τ = 0.8's, its
    periodicity at most the HR photos' + 0.01."""
    hr = summary.get('hr', {}).get('linf_periodicity')
    limit = hr + PERIODICITY_MARGIN if is_number(hr) else None
    seam_parts, period_parts, passed, total = [], [], 0, 0
    for scale in IN_DISTRIBUTION:
        prior, cold, hot = (summary_value(summary, 'linf', scale, m, 'seam') for m in ('prior', TAU_COLD, TAU_HOT))
        if None not in (prior, cold, hot):
            ok = prior < cold and prior < hot
            passed, total = passed + ok, total + 1
            seam_parts.append(f'{scale} {prior:.3f} vs {cold:.3f} and {hot:.3f}')
        period = summary_value(summary, 'linf', scale, 'prior', 'periodicity')
        if period is not None and limit is not None:
            ok = period <= limit
            passed, total = passed + ok, total + 1
            period_parts.append(f'{scale} {period:.4f}')
    seam_text = '; '.join(seam_parts) or 'not measured'
    period_text = ', '.join(period_parts) or 'not measured'
    return (
        f'**Grid artifacts** (LINF, {", ".join(IN_DISTRIBUTION)}): {_conclusion(passed, total)}. Seam ratio of '
        f'the prior vs {method_label(TAU_COLD)} and {method_label(TAU_HOT)} (lower is better): {seam_text}. '
        f"Periodicity of the prior: {period_text}, against a limit of the HR photos' {format_number(hr, 4)} "
        f'+ {PERIODICITY_MARGIN}.'
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
            for method in temperature_methods(methods):
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
        f'{ROUTES[route]} ({", ".join(summary[route])}): '
        + ', '.join(f'{method_label(m)}: {n}' for m, n in totals.items())
        for route, totals in sampled.items()
    ]
    return (
        f'**Exploding inverses** (both routes): {conclusion}. Non-finite images of the prior: {prior} of {images}; '
        f'of temperature sampling: {"; ".join(parts) or "not measured"}.'
    )


def temperature_verdict(summary: dict, per_image: list[dict]) -> str:
    """The fixed-temperature claim (SRFlow x4): the prior's PSNR and LR-PSNR against the best fixed
    temperature, and how the best temperature varies from photo to photo."""
    methods = next(iter(summary.get('srflow', {}).values()), {})
    scale = next(iter(summary.get('srflow', {})), '?')
    parts, passed, total = [], 0, 0
    for metric in ('psnr', 'lr_psnr'):
        best = _best(methods, metric)
        prior = summary_value(summary, 'srflow', scale, 'prior', metric)
        if best is None or prior is None:
            continue
        ok = prior >= methods[best][metric]
        passed, total = passed + ok, total + 1
        parts.append(
            f'{METRIC_LABELS[metric]} {prior:.2f} against {methods[best][metric]:.2f} for the best fixed '
            f'temperature ({method_label(best)})'
        )
    per_photo = best_temperature_per_image(per_image)
    counts: dict[str, list[str]] = {}
    for image, method in sorted(per_photo.items()):
        counts.setdefault(method, []).append(image)
    spread = '; '.join(f'{method_label(m)} on {len(ims)} ({", ".join(ims)})' for m, ims in sorted(counts.items()))
    beats = sum(
        1
        for image, method in per_photo.items()
        for prior in [r for r in per_image if r['image'] == image and r['method'] == 'prior' and is_number(r['psnr'])]
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
        taus = taus if taus is not None else temperature_methods(methods)
        prior = summary_value(summary, route, scale, 'prior', metric)
        others = {t: summary_value(summary, route, scale, t, metric) for t in taus}
        who = 'every fixed τ' if len(taus) != 1 else method_label(taus[0])
        target = f'{ROUTES[route]} {scale}: prior {METRIC_LABELS[metric]} ≥ {who}'
        if prior is None or not others or None in others.values():
            checks.append((target, 'not measured', None))
            return
        measured = f'prior {prior:.2f}; ' + ', '.join(f'{method_label(t)} {v:.2f}' for t, v in others.items())
        checks.append((target, measured, all(prior >= v for v in others.values())))

    for scale in summary.get('srflow', {}):
        at_least_every('srflow', scale, 'psnr')
        at_least_every('srflow', scale, 'lr_psnr')
    hr = summary.get('hr', {}).get('linf_periodicity')
    for scale in IN_DISTRIBUTION:
        at_least_every('linf', scale, 'psnr')
        prior, cold, hot = (summary_value(summary, 'linf', scale, m, 'seam') for m in ('prior', TAU_COLD, TAU_HOT))
        target = f'LINF {scale}: prior seam ratio < {method_label(TAU_COLD)} and {method_label(TAU_HOT)}'
        if None in (prior, cold, hot):
            checks.append((target, 'not measured', None))
        else:
            measured = f'prior {prior:.3f}; {method_label(TAU_COLD)} {cold:.3f}, {method_label(TAU_HOT)} {hot:.3f}'
            checks.append((target, measured, prior < cold and prior < hot))
        period = summary_value(summary, 'linf', scale, 'prior', 'periodicity')
        target = f'LINF {scale}: prior periodicity ≤ HR + {PERIODICITY_MARGIN}'
        if period is None or not is_number(hr):
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
    ]
    results = [
        [target, numbers, 'met' if ok else 'not measured' if ok is None else '**not met**']
        for target, numbers, ok in checks
    ]
    return lines + markdown_table(['target', 'measured', 'result'], results)


def verdict_section(summary: dict, srflow_per_image: list[dict]) -> list[str]:
    return [
        '## Verdict (the six held-out photos)',
        f'- {grid_verdict(summary)}',
        f'- {exploding_verdict(summary)}',
        f'- {temperature_verdict(summary, srflow_per_image)}',
        '',
    ]


# ---------------------------------------------------------------------------------------------- tables
def spread_table(results: Path, rows: list[dict], with_scale: bool) -> list[str]:
    """Per-method means with their per-image spread: each cell 'mean ± std (min–max)' over the photos."""
    metrics = [m for m in metric_columns(rows) if any(is_number(r.get(m)) for r in rows)]
    header = [*(['scale', 'group'] if with_scale else []), 'method', *[METRIC_LABELS.get(m, m) for m in metrics]]
    table = []
    per_image: dict[str, list[dict]] = {}
    for row in rows:
        if row['dataset'] not in per_image:
            per_image[row['dataset']] = read_per_image(per_image_csv(results, row['dataset']))
        cells = [row['scale'], row.get('group') or '-'] if with_scale else []
        cells.append(method_label(row['method']))
        for metric in metrics:
            mean, std, low, high = per_image_spread(per_image[row['dataset']], row['method'], metric)
            digits = 4 if re.search('ssim|periodicity|lpips', metric) else 3 if 'seam' in metric else 2
            cells.append(
                'n/a'
                if math.isnan(mean)
                else f'{mean:.{digits}f} ± {std:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})'
            )
        cells.append(f'{row["nonfinite"]} of {row["images"]}')
        table.append(cells)
    return markdown_table([*header, 'non-finite images'], table)


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
    samples = [m for m in methods if temperature_of(m) is not None]
    if 'prior' not in methods or not samples:
        return ['The LINF table lacks the learned prior or temperature sampling; nothing to compare.']
    lines = []
    groups = list(dict.fromkeys(r.get('group') or 'all scales' for r in rows))
    for metric in ('psnr', 'ssim', 'lr_psnr', 'seam', 'periodicity'):
        parts = []
        for group in groups:
            scales = [s for s in _scales(rows) if (_row(rows, s, 'prior').get('group') or 'all scales') == group]
            usable = [s for s in scales if all(is_number(_row(rows, s, m).get(metric)) for m in ['prior', *samples])]
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
                f'temperature ({method_label(best)}: {means[best]:.3f}); it beats every temperature at {len(wins)} of '
                f'{len(usable)} scales' + (f' ({", ".join(wins)})' if wins else '')
            )
        if parts:
            label = METRIC_LABELS[metric]
            lower = ' (lower is better)' if metric in LOWER_IS_BETTER else ''
            lines.append(f'{label[0].upper()}{label[1:]}{lower}: ' + '; '.join(parts) + '.')
    return lines


# ---------------------------------------------------------------------------------------------- training
def training_trajectory(values: list[float]) -> str:
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
    cells = []
    for name, values in rows.items():
        values = values if isinstance(values, dict) else {}
        cells.append([name, *(format_number(values.get(c), 3) for c in columns)])
    return markdown_table(['', *columns], cells)


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
