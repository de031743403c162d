"""Checks an option file before BasicSR starts, so a typo costs one clear line, not a traceback.

BasicSR creates the experiment folder before it builds datasets and models; a wrong ``type:`` or
a missing path would leave a half-made experiment behind and end in a KeyError deep inside
``build_*``. We check the names against the registries, every network's arguments against its
class (and build it on the meta device, which costs no memory), the flow's scale against the
top-level one, the input files on disk and, for a run, what the machine can do (CUDA, the
distributed backend, torchrun's environment) first.
"""

from __future__ import annotations

import inspect
import os
import zipfile
from typing import Any

import torch
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


def accepted_arguments(cls: type) -> list[str] | None:
    """Keyword arguments ``cls(...)`` accepts; None when it takes ``**kwargs`` (anything goes)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _check_network(problems: list[str], where: str, section: Any, built: dict[str, torch.nn.Module]) -> None:
    """Arguments of ``network_*`` against the registered class; then a build on the meta device,
    whose ValueError / TypeError is the message the real build would raise later."""
    from basicsr.utils.registry import ARCH_REGISTRY

    if not isinstance(section, dict) or not _registered(ARCH_REGISTRY, str(section.get('type'))):
        return  # a missing or unknown type is reported by _check_type
    cls = ARCH_REGISTRY.get(section['type'])
    options = {k: v for k, v in section.items() if k != 'type'}
    accepted = accepted_arguments(cls)
    if accepted is not None:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            problems.append(
                f'{where}.{unknown[0]}: {cls.__name__} has no argument {", ".join(repr(u) for u in unknown)}; '
                f'its arguments: {", ".join(accepted)}'
            )
            return
    if 'generator' in options and isinstance(options['generator'], dict):
        from flowprior_plugin.errors import OptionError
        from flowprior_plugin.generators import generator_default_out_channels

        try:
            generator_default_out_channels(options['generator'], option_name=f'{where}.generator')
        except OptionError as exc:
            problems.append(str(exc))
            return
    if accepted and 'latent_channels' in accepted and 'latent_channels' not in options:
        flow = next(iter(built.values()), None)
        if flow is None or not hasattr(flow, 'latent_channels'):
            return  # FlowPriorModel fills it in from a flow that could not be built here
        options['latent_channels'] = list(flow.latent_channels())
    try:
        with torch.device('meta'):
            built[where] = cls(**options)
    except (TypeError, ValueError) as exc:
        message = str(exc).removeprefix(f'{cls.__name__}: ')
        problems.append(f'{where} ({cls.__name__}): {message}')
    except Exception:  # noqa: BLE001  (some layers cannot be built on the meta device: the real build checks them)
        pass


def _check_scale(problems: list[str], source: str, opt: dict, built: dict[str, torch.nn.Module]) -> None:
    # Datasets pair LR and HR at the top-level scale; a fixed-scale flow decodes at its own.
    scale = opt.get('scale')
    for where, net in built.items():
        if scale is None or getattr(net, 'arbitrary_scale', True) or not hasattr(net, 'scale'):
            continue
        if int(net.scale) != scale:
            key = where.split(': ', 1)[-1]
            problems.append(
                f'{source}: scale is {scale} but {key}.scale is {net.scale} ({type(net).__name__}); the datasets '
                f'pair LR and HR at the top-level scale: set both to the same value'
            )


def torch_file_problem(path: str) -> str | None:
    """Why ``path`` is not a file of ``torch.save`` (None when its header looks right). Reads the
    zip directory or the first bytes only, so a large checkpoint costs nothing here."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith('data.pkl') for name in archive.namelist()):
                return None
        return 'a zip archive that torch.save did not write (no data.pkl)'
    with open(path, 'rb') as handle:
        head = handle.read(2)
    if head == b'PK':
        return 'a damaged zip archive (a truncated download or copy?)'
    if head[:1] == b'\x80':  # the legacy format of torch.save: a pickle
        return None
    return 'neither a torch.save zip archive nor a legacy torch pickle' if head else 'an empty file'


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
    built: dict[str, torch.nn.Module] = {}
    # The flow first: a latent module takes its latent_channels from it.
    network_keys = sorted((k for k in opt if k.startswith('network_')), key=lambda k: k != 'network_flow')
    for key in network_keys:
        value = opt[key]
        _check_type(problems, f'{source}: {key}.type', value, 'arch')
        if isinstance(value, dict):
            _check_type(problems, f'{source}: {key}.generator.type', value.get('generator'), 'latent_generator')
        _check_network(problems, f'{source}: {key}', value, built)
    _check_scale(problems, source, opt, built)
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
        if not check_paths or not value or not (key.startswith('pretrain_network_') or key == 'resume_state'):
            continue
        if not os.path.isfile(value):
            problems.append(f'{source}: path.{key}: no such file: {_where(value)}')
        elif (why := torch_file_problem(value)) is not None:
            problems.append(f'{source}: path.{key}: {value} is not a PyTorch checkpoint: {why}')
    return problems


TORCHRUN_ENV = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def check_machine(opt: dict, launcher: str, source: str = 'options') -> list[str]:
    """What the options ask of this machine: CUDA for ``num_gpu`` > 0 and, with ``--launcher
    pytorch``, a distributed backend it can run and torchrun's environment."""
    from flowprior_plugin.basicsr_patches import resolve_backend
    from flowprior_plugin.errors import OptionError

    problems: list[str] = []
    if not isinstance(opt, dict):
        return problems
    num_gpu = opt.get('num_gpu', 0)
    if isinstance(num_gpu, int) and num_gpu > 0 and not torch.cuda.is_available():
        problems.append(f'{source}: num_gpu is {num_gpu} but this machine has no CUDA GPU; set num_gpu: 0 or auto')
    if launcher == 'pytorch':
        try:
            resolve_backend((opt.get('dist_params') or {}).get('backend'))
        except OptionError as exc:
            problems.append(f'{source}: {exc}')
            return problems  # one line per mistake: the environment matters once the backend does
        missing = [name for name in TORCHRUN_ENV if name not in os.environ]
        if missing:
            problems.append(
                f'--launcher pytorch: {", ".join(missing)} not set (torchrun sets them); run: '
                f'torchrun --nproc_per_node=N -m flowprior_plugin train -opt {source} --launcher pytorch'
            )
    return problems


def apply_overrides(opt: dict, overrides: list[str] | None) -> dict:
    """``opt`` with BasicSR's ``--force_yml key1:key2=value`` overrides applied, as its
    ``parse_options`` applies them (values: ``~``/``none`` -> None, numbers, lists, ...)."""
    from basicsr.utils.options import _postprocess_yml_value

    for entry in overrides or []:
        keys, _, value = entry.partition('=')
        *parents, last = [key.strip() for key in keys.split(':')]
        section = opt
        for key in parents:
            section = section.setdefault(key, {})
        section[last] = _postprocess_yml_value(value.strip())
    return opt


def check_option_file(
    path: str, is_train: bool, launcher: str | None = None, overrides: list[str] | None = None
) -> list[str]:
    """Read a yml option file, apply the ``--force_yml`` ``overrides``, and check it with
    :func:`check_options` and, given the launcher of a run, :func:`check_machine`."""
    try:
        with open(path) as handle:
            opt = apply_overrides(yaml.safe_load(handle), overrides)
    except yaml.YAMLError as exc:
        return [f'{path}: not valid YAML: {exc}']
    problems = check_options(opt, is_train=is_train, source=path)
    if launcher is not None:
        problems += check_machine(opt, launcher, source=path)
    return problems
