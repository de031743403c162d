"""The benchmark CLI runs end to end in its --tiny mode (SRFlow, HCFlow, LINF) and ends with the ratios line."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_benchmark_tiny_mode_prints_ratios_last():
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'flowprior_plugin.benchmark', '--tiny', '--threads', '1', '--repeats', '1'],
        capture_output=True,
        text=True,
        timeout=600,  # three families, each case in a fresh process, on a shared machine
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r'ratios: lp_path/decode=\d+\.\d\d extra_decode/decode=\d+\.\d\d', lines[-1]), lines[-1]
    check = next(line for line in lines if line.startswith('check:'))
    assert check.endswith('OK')
    # HCFlow runs in the same invocation: its check and ratios come before SRFlow's last line.
    assert any(line.startswith('tiny HCFlow 4X') for line in lines)
    hcflow_check = next(line for line in lines if line.startswith('hcflow check:'))
    assert hcflow_check.endswith('OK')
    assert re.fullmatch(r'hcflow ratios: lp_path/decode=\d+\.\d\d extra_decode/decode=\d+\.\d\d', lines[-3]), lines[-3]
    # LINF runs last: its inference and training checks pass and its ratios come just before the last line.
    assert re.fullmatch(r'linf ratios: lp_path/decode=\d+\.\d\d extra_decode/decode=\d+\.\d\d', lines[-2]), lines[-2]
    linf_checks = [line for line in lines if line.startswith('linf check:')]
    assert len(linf_checks) == 2 and all(line.endswith('OK') for line in linf_checks), linf_checks
    assert any(line.startswith('prior training step, now: flow parameters cached') for line in lines)
    assert any(re.match(r'linf training: now/before time=\d+\.\d\d ', line) for line in lines)
    for label in ('(a)', '(b)', '(c)', 'extra decode'):
        assert any(label in line for line in lines), label
    assert any('ru_maxrss' in line for line in lines)  # says what the memory column measures
