"""Shared fixtures: the team's reference material and small deterministic helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import flowprior_plugin  # noqa: F401  (registers everything, installs the torchvision stand-in)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _reference_dir() -> Path:
    env = os.environ.get('FLOWPRIOR_REFERENCE')
    return Path(env) if env else REPO_ROOT.parent / 'shared' / 'reference'


@pytest.fixture(scope='session')
def reference_dir() -> Path:
    """``../shared/reference`` beside the checkout (CI lays it there), or $FLOWPRIOR_REFERENCE."""
    path = _reference_dir()
    if not (path / 'golden' / 'golden_weights.py').is_file():
        pytest.fail(f'reference material not found at {path}; set FLOWPRIOR_REFERENCE to its folder')
    return path


@pytest.fixture(scope='session')
def golden_weights(reference_dir):
    """The module ``golden/golden_weights.py`` (builds deterministic weights from a key list)."""
    sys.path.insert(0, str(reference_dir / 'golden'))
    try:
        import golden_weights as module
    finally:
        sys.path.pop(0)
    return module


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
    yield
