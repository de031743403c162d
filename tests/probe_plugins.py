"""Test plugins: a module on PYTHONPATH declared under ``basicsr.plugins``, which the ``basicsr``
command loads like any installed plugin (in every torchrun rank too)."""

from __future__ import annotations

from pathlib import Path


def install_test_plugin(root: Path, module: str, code: str) -> Path:
    """Write ``module`` (``code``) and its entry point under ``root``. Returns the PYTHONPATH entry."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f'{module}.py').write_text(code)
    info = root / f'{module}-0.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {module}\nVersion: 0\n')
    (info / 'entry_points.txt').write_text(f'[basicsr.plugins]\n{module} = {module}\n')
    return root
