"""Test-run tables of the flow models: every column of every row reaches the CSV."""

from __future__ import annotations

import csv
import math
from collections import OrderedDict
from types import SimpleNamespace

from flowprior_plugin.models.flow_base import FlowBaseModel, summarize


def test_csv_has_the_columns_only_some_methods_have(tmp_path):
    # The prior is deterministic (no diversity); temperature sampling with val.samples > 1 has one.
    rows = [
        OrderedDict(image='a', method='prior', finite=True, psnr=30.0),
        OrderedDict(image='a', method='tau0.8', finite=True, psnr=27.0, diversity=5.5),
    ]
    model = SimpleNamespace(opt={'path': {'results_root': str(tmp_path)}})
    summary = summarize(rows, ['prior', 'tau0.8'], ['psnr', 'diversity'])
    FlowBaseModel._write_test_tables(model, rows, summary, 'set', {})
    with open(tmp_path / 'metrics_set.csv') as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == ['image', 'method', 'finite', 'psnr', 'diversity']
    assert read[0]['diversity'] == '' and float(read[1]['diversity']) == 5.5
    assert math.isnan(summary[0]['diversity']) and summary[1]['diversity'] == 5.5
