"""The result tables of a flow model's test run: written by the models, read by the demo's report.

A test run writes, under ``results/<name>/``, per test set a per-image CSV
(``metrics_<dataset>.csv``) and a summary table (``summary_<dataset>.md`` / ``.json``), and for the
whole run ``summary.md`` / ``summary.json`` with every test set in one table (its name, scale and
``group``). This module is their one writer, their one reader and the one place their names and
numbers are formatted.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np

RUN_TABLE = 'summary'  # summary.md / summary.json: every test set of the run
_TEMPERATURE_METHOD = re.compile(r'tau([-\d.e]+)')


# ---------------------------------------------------------------------------------------------- names and numbers
def method_name(temperature: float) -> str:
    """Name of temperature sampling at ``temperature`` in logs, tables and folders."""
    return f'tau{float(temperature):g}'


def temperature_of(method: str) -> float | None:
    """The temperature of a :func:`method_name` (``'tau0.9'`` -> 0.9); None for any other method."""
    match = _TEMPERATURE_METHOD.fullmatch(method)
    return float(match[1]) if match else None


def format_number(value, digits: int = 4) -> str:
    """A table cell: floats with ``digits`` decimals, NaN and None as ``n/a``, anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 'n/a'
    return f'{value:.{digits}f}' if isinstance(value, float) else str(value)


def format_scale(scale) -> str:
    """A test set's scale as the run table writes it (``4`` -> ``'x4'``; None -> ``''``)."""
    if scale is None:
        return ''
    return f'x{float(scale):g}'


def scale_value(scale: str) -> float:
    """The inverse of :func:`format_scale` (``'x2'`` -> 2.0)."""
    return float(scale.lstrip('x'))


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a markdown table: header, separator, one line per row of cells."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return lines + ['| ' + ' | '.join(cells) + ' |' for cells in rows]


# ---------------------------------------------------------------------------------------------- summaries
def summarize(rows: list[dict], methods: list[str], metric_names: list[str]) -> list[dict]:
    """Mean of each metric per method, and the count of images with non-finite pixels."""
    summary = []
    for method in methods:
        mine = [row for row in rows if row['method'] == method]
        entry = OrderedDict(method=method, images=len(mine))
        for name in metric_names:
            values = [row[name] for row in mine if name in row and not math.isnan(row[name])]
            entry[name] = float(np.mean(values)) if values else math.nan
        entry['nonfinite'] = sum(not row['finite'] for row in mine)
        summary.append(entry)
    return summary


def format_summary(
    summary: list[dict], dataset_name: str, current_iter, skipped: dict[str, str], markdown: bool = False
) -> str:
    """The comparison table of one test set, as log text or markdown."""
    if not summary:
        return f'Validation {dataset_name}: no images'
    columns = [key for key in summary[0] if key != 'method']
    header = ['method', *columns]
    title = f'Validation {dataset_name}' + (f' @ iter {current_iter}' if current_iter is not None else '')
    cells = [[entry['method']] + [format_number(entry[c]) for c in columns] for entry in summary]
    if markdown:
        lines = [f'# {title}', '', *markdown_table(header, cells)]
    else:
        lines = [title, *('  ' + '  '.join(f'{c:>12}' for c in row) for row in [header, *cells])]
    for name, reason in skipped.items():
        lines.append(('' if not markdown else '\n') + f'{name} skipped: {reason}')
    return '\n'.join(lines) + '\n'


def format_run_table(rows: list[dict], name: str, skipped: dict[str, str]) -> str:
    """Markdown table of every test set and method of a run (the keys of the first row are the columns)."""
    columns = list(rows[0].keys()) if rows else []
    cells = [[format_number(row.get(c, math.nan)) for c in columns] for row in rows]
    lines = [f'# {name}: all test sets', '', *markdown_table(columns, cells)]
    for metric, reason in skipped.items():
        lines.append(f'\n{metric} skipped: {reason}')
    return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------------------------- writing
def per_image_csv(root: str | os.PathLike, dataset_name: str) -> Path:
    """Where a test set's per-image metrics are: ``<root>/metrics_<dataset>.csv``."""
    return Path(root) / f'metrics_{dataset_name}.csv'


def write_test_tables(
    root: str | os.PathLike, rows: list[dict], summary: list[dict], dataset_name: str, skipped: dict[str, str]
) -> Path:
    """One test set's per-image CSV and its summary table (markdown and JSON) under ``root``.

    Args:
        root: The run's results folder (created if missing).
        rows: One dict per image and method (``image``, ``method``, ``finite``, metrics).
        summary: :func:`summarize` of ``rows``.
        dataset_name: The test set's name.
        skipped: Metrics not computed, with the reason.

    Returns:
        The CSV's path.
    """
    os.makedirs(root, exist_ok=True)
    csv_path = per_image_csv(root, dataset_name)
    with open(csv_path, 'w', newline='') as handle:
        # Every column any row has, in first-seen order (only methods with noise have 'diversity').
        columns = list(dict.fromkeys(key for row in rows for key in row)) or ['image']
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(root, f'summary_{dataset_name}.md'), 'w') as handle:
        handle.write(format_summary(summary, dataset_name, None, skipped, markdown=True))
    with open(os.path.join(root, f'summary_{dataset_name}.json'), 'w') as handle:
        json.dump({'dataset': dataset_name, 'methods': summary, 'skipped_metrics': skipped}, handle, indent=2)
    return csv_path


class RunTable:
    """``summary.md`` / ``summary.json`` of a test run: every test set in one table, rewritten after
    each set, with its scale (``test_scale``, else ``scale``) and its optional ``group`` (e.g. in- /
    out-of-distribution), so a multi-scale test reads as one comparison.

    Args:
        root: The run's results folder.
        name: The run's name (the table's title).
    """

    def __init__(self, root: str | os.PathLike, name: str) -> None:
        self.root = Path(root)
        self.name = name
        self.rows: list[dict] = []
        self.skipped: dict[str, str] = {}

    def add(self, dataset_opt: dict, summary: list[dict], skipped: dict[str, str]) -> None:
        """Add one test set (its dataset options and :func:`summarize` entries) and rewrite both files."""
        scale = format_scale(dataset_opt.get('test_scale', dataset_opt.get('scale')))
        head = OrderedDict(dataset=dataset_opt['name'], scale=scale, group=str(dataset_opt.get('group', '')))
        self.rows.extend(OrderedDict(**head, **entry) for entry in summary)
        self.skipped.update(skipped)
        with open(self.root / f'{RUN_TABLE}.json', 'w') as handle:
            json.dump({'name': self.name, 'rows': self.rows, 'skipped_metrics': self.skipped}, handle, indent=2)
        with open(self.root / f'{RUN_TABLE}.md', 'w') as handle:
            handle.write(format_run_table(self.rows, self.name, self.skipped))


# ---------------------------------------------------------------------------------------------- reading
def read_per_image(path: str | os.PathLike) -> list[dict]:
    """A per-image CSV: one dict per image and method, metrics as floats (NaN where empty) and
    ``finite`` as a bool."""
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in list(row):
            if key == 'finite':
                row[key] = row[key] == 'True'
            elif key not in ('image', 'method'):
                row[key] = float(row[key]) if row[key] not in ('', None) else math.nan
    return rows


def read_run_table(root: str | os.PathLike) -> tuple[list[dict], dict[str, str]]:
    """The rows of a run's ``summary.json`` (every test set and method, sorted by scale, each scale
    keeping the run's method order) and its skipped metrics with their reasons."""
    data = json.loads((Path(root) / f'{RUN_TABLE}.json').read_text())
    rows = sorted(data['rows'], key=lambda r: scale_value(r['scale']) if r['scale'] else 0.0)
    return rows, data.get('skipped_metrics', {})
