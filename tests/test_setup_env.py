"""scripts/setup_env.sh: quiet when pip succeeds, stops with pip's own error when it fails.

The script is sourced (which installs nothing) and its pip wrapper run against the existing
environment with ``--no-index``: nothing is downloaded or reinstalled."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / 'scripts' / 'setup_env.sh'
VENV = Path(sys.executable).parent.parent


def _run_wrapper(*pip_args: str) -> subprocess.CompletedProcess:
    code = f'source {SCRIPT}; VENV={VENV}; pip {" ".join(pip_args)}; echo AFTER'
    return subprocess.run(['bash', '-c', code], capture_output=True, text=True, timeout=120)


def test_pip_failure_stops_the_script_with_pips_error():
    result = _run_wrapper('install', '--no-index', 'no-such-package-flowprior-test')
    assert result.returncode != 0
    assert 'AFTER' not in result.stdout  # nothing after the failed step ran
    assert 'No matching distribution found for no-such-package-flowprior-test' in result.stderr
    assert '[setup] failed (exit 1): pip install --no-index no-such-package-flowprior-test' in result.stderr


def test_pip_success_is_quiet():
    result = _run_wrapper('install', '--no-index', '--no-deps', 'pyyaml')  # already installed
    assert result.returncode == 0, result.stderr
    assert result.stdout == 'AFTER\n' and result.stderr == ''
