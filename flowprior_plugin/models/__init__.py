"""Imports every `*_model.py` module of this folder so their classes register (BasicSR's scheme)."""

import importlib
from pathlib import Path

_modules = [
    importlib.import_module(f'{__name__}.{path.stem}') for path in sorted(Path(__file__).parent.glob('*_model.py'))
]
