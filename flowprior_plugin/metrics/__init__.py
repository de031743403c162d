"""Imports every `*_metric.py` module of this folder so their classes register (BasicSR's scheme)."""

import importlib
from pathlib import Path

from flowprior_plugin.metrics.release_protocol_metric import PROTOCOLS, evaluate_as_released, matlab_imresize

__all__ = ['PROTOCOLS', 'evaluate_as_released', 'matlab_imresize']

_modules = [
    importlib.import_module(f'{__name__}.{path.stem}') for path in sorted(Path(__file__).parent.glob('*_metric.py'))
]
