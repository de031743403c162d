#!/usr/bin/env bash
# Create the project's virtual environment (default .venv) with everything the demo and the tests
# need, in this order:
#   1. torch + torchvision first (TORCH_SPEC overrides the pinned pair);
#   2. basicsr 1.4.2 without build isolation: its setup.py imports torch, and with isolation pip
#      would download a second torch into a throw-away build environment;
#   3. this package, editable, with its test and dev extras.
# A stamp file marks a finished install, so a second run reuses the environment. Quiet when all is
# well; a failed pip step stops the script with pip's own error and its exit code.
# Sourcing the file (tests do) defines the functions without installing anything.
set -euo pipefail

# pip, quiet: prints nothing on success (but warnings other than pip's "Location" notes); on failure
# pip's whole output goes to stderr and the script stops with pip's exit code.
pip() {
  local log status=0
  log=$(mktemp)
  "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" >"$log" 2>&1 || status=$?
  if [[ $status -ne 0 ]]; then
    cat "$log" >&2
    rm -f "$log"
    echo "[setup] failed (exit $status): pip $*" >&2
    exit "$status"
  fi
  grep -v "^WARNING: Location" "$log" || true  # grep finds nothing when pip was silent
  rm -f "$log"
}

main() {
  VENV=${1:-.venv}
  TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
  local stamp="$VENV/.flowprior-installed"
  if [[ -f "$stamp" && "$stamp" -nt setup.cfg ]]; then
    echo "[setup] reusing the environment in $VENV (delete it to reinstall)"
    return 0
  fi
  local start
  start=$(date +%s)
  [[ -x "$VENV/bin/python" ]] || "${PYTHON:-python3}" -m venv "$VENV"
  echo "[setup] installing $TORCH_SPEC into $VENV"
  pip install setuptools wheel
  # shellcheck disable=SC2086  # TORCH_SPEC is a list of requirements
  pip install $TORCH_SPEC
  echo "[setup] installing basicsr 1.4.2 (no build isolation) and flowprior-plugin"
  pip install --no-build-isolation "basicsr==1.4.2"
  pip install --no-build-isolation -e ".[dev]"
  "$VENV/bin/python" -c "import flowprior_plugin, basicsr, timm, lpips, skimage; from basicsr.train import train_pipeline"
  touch "$stamp"
  echo "[setup] environment ready in $VENV ($(($(date +%s) - start)) s)"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
