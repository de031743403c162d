"""What the demo's report measures: the held-out numbers of the two test runs (``summary.json``),
the names of methods and metrics, and the comparisons the verdict, the tables and the figures share.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from flowprior_plugin.result_tables import (
    method_name,
    per_image_csv,
    read_per_image,
    read_run_table,
    temperature_of,
)

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
REQUIRED = ('psnr', 'ssim', 'lr_psnr')  # in every method entry of summary.json, even when not computed (null)
LINF_REQUIRED = (*REQUIRED, 'seam', 'periodicity')
_META = ('dataset', 'scale', 'group', 'method', 'images', 'nonfinite')
# Issue #11's targets name these scales and reference temperatures.
IN_DISTRIBUTION = ('x2', 'x3', 'x4')
OUT_OF_DISTRIBUTION = ('x6', 'x8', 'x12')
TAU_COLD, TAU_HOT = method_name(0.0), method_name(0.8)
ROUTES = {'srflow': 'SRFlow', 'linf': 'LINF'}
PERIODICITY_MARGIN = 0.01  # the prior's periodicity may exceed the HR photos' by this much


def is_number(value) -> bool:
    """Whether ``value`` is a finite number (not a bool, None or NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def method_label(method: str) -> str:
    """How the report names a method (``'tau0.9'`` -> ``'τ = 0.9'``)."""
    return method.replace('tau', 'τ = ')


def metric_columns(rows: list[dict]) -> list[str]:
    """The metric columns of run-table rows, in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r if k not in _META))


def heldout_rows(rows: list[dict]) -> list[dict]:
    """The run-table rows of the held-out test sets."""
    return [r for r in rows if r['dataset'].startswith(HELDOUT_PREFIX)]


def per_image_spread(per_image: list[dict], method: str, metric: str) -> tuple[float, float, float, float]:
    """Mean, standard deviation (over the photos, ddof 0), min and max of one metric of one method."""
    values = [r[metric] for r in per_image if r['method'] == method and is_number(r.get(metric))]
    if not values:
        return math.nan, math.nan, math.nan, math.nan
    return float(np.mean(values)), float(np.std(values)), float(min(values)), float(max(values))


def _entries(results: Path, rows: list[dict], required: tuple[str, ...]) -> dict[str, dict]:
    """summary.json's ``{scale: {method: entry}}`` for the held-out rows of one run."""
    out: dict[str, dict] = {}
    per_image: dict[str, list[dict]] = {}
    for row in heldout_rows(rows):
        if row['dataset'] not in per_image:
            per_image[row['dataset']] = read_per_image(per_image_csv(results, row['dataset']))
        entry = {}
        for metric in metric_columns([row]):
            mean = row.get(metric)
            if is_number(mean):
                entry[metric] = float(mean)
                entry[f'{metric}_std'] = per_image_spread(per_image[row['dataset']], row['method'], metric)[1]
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
        hr = read_rgb(path).astype(np.float64)
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
    srflow_rows, _ = read_run_table(srflow_results)
    linf_rows, _ = read_run_table(linf_results)
    seam, periodicity = hr_grid_scores(dataset_root / 'test' / 'HR')
    return {
        'srflow': _entries(srflow_results, srflow_rows, REQUIRED),
        'linf': _entries(linf_results, linf_rows, LINF_REQUIRED),
        'hr': {'linf_seam': seam, 'linf_periodicity': periodicity},
    }


def temperature_methods(methods: dict) -> list[str]:
    """The temperature-sampling methods among ``methods``, coldest first."""
    return sorted((m for m in methods if temperature_of(m) is not None), key=temperature_of)


def summary_value(summary: dict, route: str, scale: str, method: str, metric: str) -> float | None:
    """One number of :func:`heldout_summary`'s dict; None when missing or not finite."""
    value = summary.get(route, {}).get(scale, {}).get(method, {}).get(metric)
    return value if is_number(value) else None


def best_temperature_per_image(per_image: list[dict], metric: str = 'psnr') -> dict[str, str]:
    """Image -> the temperature with the best ``metric`` on that image."""
    best: dict[str, tuple[float, str]] = {}
    pick_lower = metric in LOWER_IS_BETTER
    for row in per_image:
        if temperature_of(row['method']) is None or not is_number(row.get(metric)):
            continue
        score = -row[metric] if pick_lower else row[metric]
        if row['image'] not in best or score > best[row['image']][0]:
            best[row['image']] = (score, row['method'])
    return {image: method for image, (_, method) in best.items()}


def read_rgb(path: Path) -> np.ndarray:
    """An image file as an RGB uint8 array."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f'demo report: image not found: {path}')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
