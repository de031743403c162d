#!/usr/bin/env bash
# Create the project's virtual environment (default .venv) with everything the demo and the tests
# need, as ../shared/reference/ENVIRONMENT.md records it working on these machines:
#   1. torch + torchvision first (TORCH_SPEC overrides the pinned pair);
#   2. basicsr 1.4.2 without build isolation: its setup.py imports torch, and with isolation pip
#      would download a second torch into a throw-away build environment;
#   3. this package, editable, with its test and dev extras.
# A stamp file marks a finished install, so a second run reuses the environment.
set -euo pipefail
VENV=${1:-.venv}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
STAMP="$VENV/.flowprior-installed"
if [[ -f "$STAMP" && "$STAMP" -nt setup.cfg ]]; then
  echo "[setup] reusing the environment in $VENV (delete it to reinstall)"
  exit 0
fi
start=$(date +%s)
PYTHON=${PYTHON:-python3}
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
echo "[setup] installing $TORCH_SPEC into $VENV"
pip install setuptools wheel
pip install $TORCH_SPEC
echo "[setup] installing basicsr 1.4.2 (no build isolation) and flowprior-plugin"
pip install --no-build-isolation "basicsr==1.4.2"
pip install --no-build-isolation -e ".[dev]"
"$VENV/bin/python" -c "import flowprior_plugin, basicsr, timm, lpips, skimage; from basicsr.train import train_pipeline"
touch "$STAMP"
echo "[setup] environment ready in $VENV ($(( $(date +%s) - start )) s)"
