"""The demo's report, ``results/demo/report.md``: a verdict on the paper's three claims, the targets
of issue #11, per-method means with their per-image spread, the validation split, how the
objectives were chosen, timings, plots and zoomed image grids.

Nothing in the report is written in advance: every statement about the result is chosen by
comparing the measured values of this run.
"""

from __future__ import annotations

import platform
from datetime import datetime
from pathlib import Path

from flowprior_plugin.result_tables import format_number, markdown_table, per_image_csv, read_per_image, read_run_table
from flowprior_plugin.tools.report_figures import (
    LINF_ENLARGE,
    LINF_ZOOM,
    SRFLOW_ENLARGE,
    SRFLOW_ZOOM,
    pick_photos,
    plot_linf_scales,
    plot_losses,
    plot_metrics_vs_temperature,
    zoom_grid,
)
from flowprior_plugin.tools.report_numbers import heldout_rows, temperature_methods
from flowprior_plugin.tools.report_text import (
    linf_findings,
    objective_choice_section,
    objective_text,
    spread_table,
    targets_section,
    training_trajectory,
    verdict_section,
)

LINF_GRID_SCALE = 'x4'


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
            ``objectives`` (per route, :func:`flowprior_plugin.tools.demo.training_losses` of the prior's
            option file), ``objective_choice`` (path of the JSON), ``samples`` (draws per image of
            each route's test) and ``linf_options``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    srflow_rows, srflow_skipped = read_run_table(srflow_results)
    linf_rows, linf_skipped = read_run_table(linf_results)
    srflow_held, linf_held = heldout_rows(srflow_rows), heldout_rows(linf_rows)
    srflow_val = [r for r in srflow_rows if r not in srflow_held]
    linf_val = [r for r in linf_rows if r not in linf_held]
    srflow_dataset = srflow_held[0]['dataset']
    srflow_per_image = read_per_image(per_image_csv(srflow_results, srflow_dataset))
    test_hr, test_lr = dataset_root / 'test' / 'HR', dataset_root / 'test' / 'LR'

    srflow_methods = next(iter(summary['srflow'].values()))
    plot_metrics_vs_temperature(srflow_methods, out_dir / 'psnr_vs_tau.png')
    plot_linf_scales(summary['linf'], summary['hr'], out_dir / 'linf_scales.png')
    plot_losses(context['losses'], out_dir / 'losses.png')
    order = [*temperature_methods(srflow_methods), 'prior']
    zoom_grid(
        srflow_results, srflow_dataset, test_hr, pick_photos(srflow_per_image), order,
        f'SRFlow x4: {SRFLOW_ZOOM}×{SRFLOW_ZOOM} HR centre crops enlarged ×{SRFLOW_ENLARGE} (nearest neighbour)',
        out_dir / 'srflow_grid.png', lr_dir=test_lr,
    )  # fmt: skip
    linf_scales = list(summary['linf'])
    grid_scales = list(dict.fromkeys(s for s in (LINF_GRID_SCALE, linf_scales[-1]) if s in linf_scales))
    linf_dataset = {r['scale']: r['dataset'] for r in linf_held}
    linf_photos = pick_photos(read_per_image(per_image_csv(linf_results, linf_dataset[grid_scales[0]])))
    linf_taus = temperature_methods(summary['linf'][grid_scales[0]])
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
        f'{seconds["stages"]["srflow_likelihood"]:.0f} s; '
        f'l_nll {training_trajectory(losses["srflow_likelihood"]["l_nll"])}.',
        f'- SRFlow, stage 2, learned prior on the frozen flow: {objective_text(objectives["srflow"])}; '
        f'{iters["srflow_prior"]} iterations in {seconds["stages"]["srflow_prior"]:.0f} s; '
        + '; '.join(f'{n} {training_trajectory(v)}' for n, v in losses['srflow_prior'].items())
        + '.',
        f'- LINF, stage 1 by likelihood: {iters["linf_likelihood"]} iterations in '
        f'{seconds["stages"]["linf_likelihood"]:.0f} s; '
        f'l_nll {training_trajectory(losses["linf_likelihood"]["l_nll"])}.',
        f'- LINF, stage 2, learned prior on the frozen flow (UNet depth {linf_opt["generator"]["depth"]}, '
        f'{prior_data["lq_size"]}×{prior_data["lq_size"]} LR crops, {prior_data["gt_size"]}×{prior_data["gt_size"]} '
        f'HR windows, LR alignment `{linf_opt["lr_alignment"]}`): {objective_text(objectives["linf"])}; '
        f'{iters["linf_prior"]} iterations in {seconds["stages"]["linf_prior"]:.0f} s; '
        + '; '.join(f'{n} {training_trajectory(v)}' for n, v in losses['linf_prior'].items())
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
        f'The HR photos themselves score a seam ratio of {format_number(hr["linf_seam"], 3)} (about 1 = no seams '
        f'on the 3×3 patch grid) and a grid periodicity of {format_number(hr["linf_periodicity"], 4)} (the share of '
        'detail repeated in every 3×3 patch; 0 for a photo, 1 for a pure lattice).',
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
        *markdown_table(
            ['step', 'seconds'],
            [
                *([stage.replace('_', ' '), f'{value:.0f}'] for stage, value in seconds['stages'].items()),
                ['total', f'{seconds["total"]:.0f}'],
            ],
        ),
        '',
        f'Numbers for tools: `{out_dir / "summary.json"}`. Per-image numbers: `{srflow_results}/metrics_*.csv`, '
        f'`{linf_results}/metrics_*.csv`; SR images under their `visualization/` folders.',
        '',
    ]
    report = out_dir / 'report.md'
    report.write_text('\n'.join(text))
    return report
