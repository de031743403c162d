"""Checks an option file before BasicSR starts, so a typo costs one clear line, not a traceback.

BasicSR creates the experiment folder before it builds datasets and models; a wrong ``type:`` or
a missing path would leave a half-made experiment behind and end in a KeyError deep inside
``build_*``. We check the names against the registries and the input paths on disk first.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

# Optimizer and scheduler entries of ``train`` name torch / BasicSR classes, not losses.
_NON_LOSS_TRAIN_KEYS = ('optim_', 'scheduler')


def registry_by_name(name: str):
    """The BasicSR (or our) registry whose ``_name`` is ``name``; None if unknown."""
    from basicsr.utils.registry import (
        ARCH_REGISTRY,
        DATASET_REGISTRY,
        LOSS_REGISTRY,
        METRIC_REGISTRY,
        MODEL_REGISTRY,
    )

    registries = [ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY]
    try:
        from flowprior_plugin.generators import GENERATOR_REGISTRY

        registries.append(GENERATOR_REGISTRY)
    except ImportError:  # generators are optional for this check
        pass
    for registry in registries:
        if registry._name == name:
            return registry
    return None


def _registered(registry, name: str) -> bool:
    # BasicSR's Registry.get also accepts the name with a '_basicsr' suffix.
    return name in registry or f'{name}_basicsr' in registry


def _where(path: str) -> str:
    # BasicSR resolves relative paths against the current directory: say which one that was.
    return path if os.path.isabs(path) else f'{path} (relative to {os.getcwd()})'


def _check_type(problems: list[str], where: str, entry: Any, registry_name: str) -> None:
    if not isinstance(entry, dict) or 'type' not in entry:
        return
    registry = registry_by_name(registry_name)
    name = entry['type']
    if registry is not None and not _registered(registry, str(name)):
        known = ', '.join(sorted(registry.keys()))
        problems.append(f"{where}: unknown {registry_name} type '{name}'. Registered {registry_name} types: {known}")


def check_options(opt: dict, is_train: bool, source: str = 'options', check_paths: bool = True) -> list[str]:
    """Return one message per problem found in a parsed option dict (empty when fine).

    Args:
        opt: The option dict as read from the yml.
        is_train: Whether this is for training (only then is ``train`` read).
        source: The file name used in messages. Default: 'options'.
        check_paths: Whether dataset folders and pretrained files must exist. Default: True.
    """
    problems: list[str] = []
    if not isinstance(opt, dict):
        return [f'{source}: expected a mapping of options, got {type(opt).__name__}']
    model_type = opt.get('model_type')
    if model_type is None:
        problems.append(f'{source}: model_type is missing')
    else:
        _check_type(problems, f'{source}: model_type', {'type': model_type}, 'model')
    for key, value in opt.items():
        if key.startswith('network_'):
            _check_type(problems, f'{source}: {key}.type', value, 'arch')
            if isinstance(value, dict):
                _check_type(problems, f'{source}: {key}.generator.type', value.get('generator'), 'latent_generator')
    for phase, dataset in (opt.get('datasets') or {}).items():
        if not isinstance(dataset, dict):
            continue
        _check_type(problems, f'{source}: datasets.{phase}.type', dataset, 'dataset')
        if check_paths and dataset.get('io_backend', {}).get('type', 'disk') == 'disk':
            for root_key in ('dataroot_gt', 'dataroot_lq'):
                root = dataset.get(root_key)
                if root and not os.path.exists(root):
                    problems.append(f'{source}: datasets.{phase}.{root_key}: no such folder: {_where(root)}')
    if is_train:
        for key, value in (opt.get('train') or {}).items():
            if key.endswith('_opt') and not key.startswith(_NON_LOSS_TRAIN_KEYS):
                _check_type(problems, f'{source}: train.{key}.type', value, 'loss')
    for name, metric in ((opt.get('val') or {}).get('metrics') or {}).items():
        _check_type(problems, f'{source}: val.metrics.{name}.type', metric, 'metric')
    for key, value in (opt.get('path') or {}).items():
        if check_paths and key.startswith('pretrain_network_') and value and not os.path.isfile(value):
            problems.append(f'{source}: path.{key}: no such file: {_where(value)}')
    return problems


def check_option_file(path: str, is_train: bool) -> list[str]:
    """Read a yml option file and check it with :func:`check_options`."""
    try:
        with open(path) as handle:
            opt = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        return [f'{path}: not valid YAML: {exc}']
    return check_options(opt, is_train=is_train, source=path)
