"""The importable core never imports the tooling (flowprior_plugin.tools: the demo, its report, the
benchmarks) nor the plotting library only the report needs."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import flowprior_plugin

PACKAGE = Path(flowprior_plugin.__file__).resolve().parent
TOOLS = 'flowprior_plugin.tools'
NOT_IN_CORE = (TOOLS, 'matplotlib')


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _core_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob('*.py') if not _module_name(p).startswith(TOOLS))


def _imported_names(path: Path) -> set[str]:
    """Every module an ``import`` statement of ``path`` names (relative imports resolved), at any depth."""
    package = _module_name(path).rsplit('.', 1)[0] if path.name != '__init__.py' else _module_name(path)
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
                base = f'{anchor}.{base}' if base else anchor
            names.add(base)
            names.update(f'{base}.{alias.name}' for alias in node.names)
    return names


def test_core_source_never_names_the_tooling():
    modules = _core_modules()
    assert len(modules) > 20 and any(p.name == 'base_flow_model.py' for p in modules)
    offenders = {
        _module_name(path): sorted(n for n in _imported_names(path) if n == TOOLS or n.startswith(TOOLS + '.'))
        for path in modules
    }
    assert not {module: names for module, names in offenders.items() if names}


def test_importing_every_core_module_loads_no_tooling_and_no_matplotlib():
    # A fresh interpreter: this test process may already hold the tooling (other tests import it).
    names = [_module_name(p) for p in _core_modules() if p.name != '__main__.py']  # __main__ runs the CLI
    code = (
        'import importlib, json, sys\n'
        f'for name in {names!r}:\n'
        '    importlib.import_module(name)\n'
        f'print(json.dumps(sorted(m for m in sys.modules if m.startswith({NOT_IN_CORE!r}))))\n'
    )
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f'the core imported {loaded} (forbidden: {", ".join(NOT_IN_CORE)})'
