"""The demo report's figures: metric plots against temperature and scale, loss curves, and zoomed
image grids of the photos where the learned prior gains most, a median one and least.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from flowprior_plugin.result_tables import per_image_csv, read_per_image, scale_value, temperature_of
from flowprior_plugin.tools.report_numbers import (
    IN_DISTRIBUTION,
    METRIC_LABELS,
    best_temperature_per_image,
    is_number,
    method_label,
    read_rgb,
    temperature_methods,
)

GRID_PHOTOS = 3  # photos shown in each zoomed grid: the prior's largest, median and smallest gain
SRFLOW_ZOOM = 96  # side of the HR crop of the SRFlow grid
SRFLOW_ENLARGE = 2
LINF_ZOOM = 48  # side of the HR crop shown in the LINF grid (a multiple of the 3x3 patch)
LINF_ENLARGE = 4  # nearest-neighbour enlargement of that crop, so single-pixel seams stay visible


def _save(plt, fig, path: Path, dpi: int) -> None:
    """Lay out, write and close a figure (closed figures free their memory in long reports)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def plot_metrics_vs_temperature(methods: dict, path: Path) -> None:
    """SRFlow: PSNR and LR-PSNR (mean ± per-image std) against τ, the learned prior as its own band."""
    plt = _pyplot()
    taus = temperature_methods(methods)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ('psnr', 'lr_psnr')):
        xs = [temperature_of(t) for t in taus]
        ys = [methods[t].get(metric) or math.nan for t in taus]
        err = [methods[t].get(f'{metric}_std') or 0.0 for t in taus]
        ax.errorbar(xs, ys, yerr=err, fmt='o-', capsize=3, label='temperature sampling (± std over photos)')
        prior = methods.get('prior', {})
        if is_number(prior.get(metric)):
            mean, std = prior[metric], prior.get(f'{metric}_std') or 0.0
            ax.axhline(mean, color='tab:red', linestyle='--', label='learned prior')
            ax.axhspan(mean - std, mean + std, color='tab:red', alpha=0.1)
        ax.set_xlabel('temperature τ')
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.set_title(f'SRFlow: {METRIC_LABELS[metric]} on held-out photos')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path, dpi=110)


def plot_linf_scales(linf: dict, hr: dict, path: Path) -> None:
    """LINF: PSNR, seam ratio and periodicity against scale, one line per method, the HR photos'
    seam ratio and periodicity as references."""
    plt = _pyplot()
    scales = sorted(linf, key=scale_value)
    xs = [scale_value(s) for s in scales]
    methods = list(dict.fromkeys(m for s in scales for m in linf[s]))
    taus = [m for m in methods if temperature_of(m) is not None]
    colours = plt.cm.viridis(np.linspace(0.15, 0.85, max(len(taus), 1)))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for ax, metric in zip(axes, ('psnr', 'seam', 'periodicity')):
        for method in methods:
            ys = [linf[s].get(method, {}).get(metric) or math.nan for s in scales]
            if method == 'prior':
                ax.plot(xs, ys, 's--', color='tab:red', linewidth=2, label='learned prior')
            else:
                ax.plot(xs, ys, 'o-', color=colours[taus.index(method)], label=method_label(method))
        reference = hr.get(f'linf_{metric}')
        if is_number(reference):
            ax.axhline(reference, color='black', linewidth=0.8, linestyle=':', label='HR photos')
        ax.axvspan(max(scale_value(s) for s in IN_DISTRIBUTION), max(xs), color='grey', alpha=0.1)
        ax.set_xscale('log')
        ax.set_xticks(xs)
        ax.set_xticklabels(scales)
        ax.minorticks_off()
        ax.set_xlabel('scale (shaded: out of distribution)')
        ax.set_ylabel(METRIC_LABELS[metric] + ('' if metric == 'psnr' else ' (lower is better)'))
        ax.set_title(f'LINF: {METRIC_LABELS[metric]} (held-out photos)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path, dpi=110)


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
    _save(plt, fig, path, dpi=100)


def pick_photos(per_image: list[dict], count: int = GRID_PHOTOS) -> list[tuple[str, float]]:
    """The photos where the prior's PSNR gain over the best temperature on that photo is largest,
    median and smallest: (photo, gain in dB), largest first."""
    best = best_temperature_per_image(per_image)
    gains = []
    for image, method in best.items():
        prior = next((r['psnr'] for r in per_image if r['image'] == image and r['method'] == 'prior'), math.nan)
        tau = next(r['psnr'] for r in per_image if r['image'] == image and r['method'] == method)
        if is_number(prior):
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
    per_image = read_per_image(per_image_csv(results, dataset))
    columns = len(methods) + 1 + (lr_dir is not None)
    fig, axes = plt.subplots(len(photos), columns, figsize=(2.6 * columns, 2.9 * len(photos)), squeeze=False)
    for i, (photo, gain) in enumerate(photos):
        srs = [read_rgb(results / 'visualization' / dataset / m / f'{photo}.png') for m in methods]
        h, w = srs[0].shape[:2]
        hr = read_rgb(hr_dir / f'{photo}.png')[:h, :w]
        panels = []
        if lr_dir is not None:
            lr = read_rgb(lr_dir / f'{photo}.png')
            panels.append(('LR (nearest)', cv2.resize(lr, (w, h), interpolation=cv2.INTER_NEAREST)))
        for method, sr in zip(methods, srs):
            row = next(r for r in per_image if r['image'] == photo and r['method'] == method)
            numbers = [f'{row["psnr"]:.2f} dB'] if is_number(row.get('psnr')) else []
            if is_number(row.get('seam')):
                numbers.append(f'seam {row["seam"]:.2f}')
            if is_number(row.get('periodicity')):
                numbers.append(f'per. {row["periodicity"]:.3f}')
            panels.append((method_label(method).replace(' = ', '=') + '\n' + ', '.join(numbers), sr))
        panels.append((f'HR: {photo}\nprior gain {gain:+.2f} dB', hr))
        for ax, (caption, picture) in zip(axes[i], panels):
            ax.imshow(_zoom(picture, side, enlarge, multiple), interpolation='nearest')
            ax.set_title(caption, fontsize=8)
            ax.axis('off')
    fig.suptitle(title, fontsize=10)
    _save(plt, fig, path, dpi=100)
