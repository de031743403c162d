"""The benchmark CLI runs end to end in its --tiny mode (SRFlow, HCFlow, LINF) and ends with the ratios line;
its --memory mode (whole against tiled) at tiny sizes ends with the memory line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from flowprior_plugin.tools import benchmark, memory_benchmark


def test_benchmark_tiny_mode_prints_ratios_last():
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'flowprior_plugin.tools.benchmark', '--tiny', '--threads', '1', '--repeats', '1'],
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


# ---------------------------------------------------------------- benchmark --memory (tiny sizes)


def test_memory_benchmark_ends_with_the_memory_line(capsys):
    code = benchmark.main(['--memory', '--tiny', '--threads', '1', '--sizes', '8', '16', '32', '--tile', '8'])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    pattern = (
        r'memory: tiled_peak_32/tiled_peak_8=(\d+\.\d\d) whole_peak_16/whole_peak_8=\d+\.\d\d '
        r'tiled_time_per_pixel_32/whole_time_per_pixel_16=\d+\.\d\d seam_max_abs=(\d\.\d{4})'
    )
    match = re.fullmatch(pattern, lines[-1])
    assert match, lines[-1]
    assert float(match[2]) <= 1 / 255  # tiled equals whole within the seam target at the default overlap
    rows = [line.split() for line in lines if re.match(r'\s*\d+\s+(whole|tiled)\s', line)]
    assert [(int(r[0]), r[1]) for r in rows] == [(s, m) for s in (8, 16, 32) for m in ('whole', 'tiled')]


def test_memory_benchmark_skips_whole_images_the_machine_cannot_hold(capsys, monkeypatch):
    # A machine whose usable share is below the first whole case's peak: every larger whole image
    # (predicted from that case) is skipped, with a line saying so.
    real = memory_benchmark.run_in_fresh_process
    machine = {}

    def run(*args, target):
        result = real(*args, target=target)
        machine.setdefault('kib', int(result['peak_kib'] * 0.9 / memory_benchmark.MEMORY_SHARE))
        return result

    monkeypatch.setattr(memory_benchmark, 'run_in_fresh_process', run)
    monkeypatch.setattr(memory_benchmark, '_machine_kib', lambda: machine.get('kib', 2**40))
    code = benchmark.main(['--memory', '--tiny', '--threads', '1', '--sizes', '8', '24', '32', '--tile', '8'])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    assert sum('whole  skipped: a whole image would need about' in line for line in lines) == 2, lines
    assert lines[-1] == 'memory: not measured (whole 24 skipped)'
