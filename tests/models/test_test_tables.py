"""Test-run tables of the flow models (flowprior_plugin.result_tables): every column of every row
reaches the CSV, and the run table reads back as it was written."""

from __future__ import annotations

import csv
import math
from collections import OrderedDict

from flowprior_plugin.result_tables import (
    RunTable,
    format_number,
    format_scale,
    read_per_image,
    read_run_table,
    scale_value,
    summarize,
    write_test_tables,
)


def test_csv_has_the_columns_only_some_methods_have(tmp_path):
    # The prior is deterministic (no diversity); temperature sampling with val.samples > 1 has one.
    rows = [
        OrderedDict(image='a', method='prior', finite=True, psnr=30.0),
        OrderedDict(image='a', method='tau0.8', finite=True, psnr=27.0, diversity=5.5),
    ]
    summary = summarize(rows, ['prior', 'tau0.8'], ['psnr', 'diversity'])
    write_test_tables(tmp_path, rows, summary, 'set', {})
    with open(tmp_path / 'metrics_set.csv') as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == ['image', 'method', 'finite', 'psnr', 'diversity']
    assert read[0]['diversity'] == '' and float(read[1]['diversity']) == 5.5
    assert math.isnan(summary[0]['diversity']) and summary[1]['diversity'] == 5.5
    # What the demo's report reads back: floats (NaN where a method has no value) and a bool.
    back = read_per_image(tmp_path / 'metrics_set.csv')
    assert back[0]['finite'] is True and back[1]['psnr'] == 27.0 and math.isnan(back[0]['diversity'])


def test_run_table_keeps_every_test_set_and_sorts_by_scale_on_reading(tmp_path):
    rows = [OrderedDict(image='a', method='prior', finite=False, psnr=30.0)]
    summary = summarize(rows, ['prior'], ['psnr'])
    table = RunTable(tmp_path, 'run')
    table.add({'name': 'big', 'test_scale': 12, 'group': 'out'}, summary, {'lpips': 'offline'})
    table.add({'name': 'small', 'scale': 2}, summary, {})
    markdown = (tmp_path / 'summary.md').read_text()
    assert markdown.startswith('# run: all test sets\n\n| dataset | scale | group | method | images | psnr |')
    assert '| small | x2 |  | prior | 1 | 30.0000 | 1 |' in markdown and '\nlpips skipped: offline' in markdown
    read, skipped = read_run_table(tmp_path)
    assert [r['dataset'] for r in read] == ['small', 'big'] and skipped == {'lpips': 'offline'}


def test_number_and_scale_formats():
    assert format_number(1.23456) == '1.2346' and format_number(1.23456, 2) == '1.23'
    assert format_number(math.nan) == format_number(None) == 'n/a'
    assert format_number(3) == '3' and format_number('x2') == 'x2'
    assert format_scale(4) == 'x4' and format_scale(2.5) == 'x2.5' and format_scale(None) == ''
    assert scale_value(format_scale(12)) == 12.0
