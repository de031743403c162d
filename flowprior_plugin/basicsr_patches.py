"""Fixes to BasicSR 1.4.2's entry points, applied when the plugin is imported.

BasicSR 1.4.2 is the last release and will not change, so a few of its functions are replaced in
memory (never on disk): CPU-only resume and multi-process training, resume at an epoch boundary,
re-registration of the same definition, and a one-line error for an unreadable checkpoint. Each
replacement below says what it fixes.
"""

from __future__ import annotations

import os
import os.path as osp
import pickle
from typing import Any

import torch
import torch.distributed as dist

from flowprior_plugin.errors import CheckpointReadError, OptionError

# The dist_params of the option file being run; the basicsr command sets them (use_dist_params),
# since BasicSR's parse_options calls init_dist(launcher) without them.
_dist_params: dict[str, Any] = {}
DIST_BACKENDS = ('gloo', 'nccl', 'mpi', 'ucc')


def _resume_map_location(opt: dict):
    if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available():
        device_id = torch.cuda.current_device()
        return lambda storage, loc: storage.cuda(device_id)
    return 'cpu'


def load_resume_state(opt: dict):
    """Drop-in replacement for ``basicsr.train.load_resume_state`` that works without CUDA.

    BasicSR's calls ``torch.cuda.current_device()``, so ``--auto_resume`` and ``path.resume_state``
    fail without CUDA; this maps the state to the CPU when the options ask for ``num_gpu: 0`` or CUDA
    is absent, and to the current CUDA device otherwise. BasicSR's ``check_resume`` also points every
    ``pretrain_network_*`` at ``models/net_*_<iter>.pth``; a frozen network the model never saves
    (the flow under the learned prior) has no such file and keeps its original path.
    """
    from basicsr.utils import check_resume, scandir

    resume_state_path = None
    if opt['auto_resume']:
        state_path = osp.join('experiments', opt['name'], 'training_states')
        if osp.isdir(state_path):
            states = list(scandir(state_path, suffix='state', recursive=False, full_path=False))
            if states:
                newest = max(float(v.split('.state')[0]) for v in states)
                resume_state_path = osp.join(state_path, f'{newest:.0f}.state')
                opt['path']['resume_state'] = resume_state_path
    elif opt['path'].get('resume_state'):
        resume_state_path = opt['path']['resume_state']

    if resume_state_path is None:
        return None
    if not osp.isfile(resume_state_path):
        raise OptionError(f'path.resume_state: no such file: {resume_state_path}')
    # Resume states hold optimizer and scheduler states (a Counter of milestones): not weights-only.
    resume_state = torch.load(resume_state_path, map_location=_resume_map_location(opt), weights_only=False)
    _pending_resume['state'] = resume_state
    original = dict(opt['path'])
    check_resume(opt, resume_state['iter'])
    for key, path in list(opt['path'].items()):
        if key.startswith('pretrain_network_') and path != original.get(key) and not osp.isfile(path):
            opt['path'][key] = original.get(key)  # a network this model never saves (frozen)
    return resume_state


_pending_resume: dict[str, dict] = {}


def _wrap_create_train_val_dataloader(original):
    # BasicSR resumes at the saved epoch, so a state saved on the last iteration of an epoch would
    # replay that whole epoch; knowing the iterations per epoch, the next one starts instead, and a
    # run resumed at an epoch boundary sees the data the uninterrupted run sees. Not restored
    # (BasicSR saves neither): the random state (the run is reseeded with manual_seed) and the
    # batches already seen of an unfinished epoch.
    def create_train_val_dataloader(opt, logger):
        result = original(opt, logger)
        state = _pending_resume.pop('state', None)
        train_loader = result[0]
        if state is not None and train_loader is not None and len(train_loader) > 0:
            per_epoch = len(train_loader)  # batches of this rank per epoch (the loader drops the last partial one)
            if state['iter'] % per_epoch == 0 and state['epoch'] < state['iter'] // per_epoch:
                state['epoch'] += 1  # the saved epoch was finished: continue with the next one
        return result

    create_train_val_dataloader._flowprior_wrapped = True
    return create_train_val_dataloader


def _backend_available(name: str) -> bool:
    check = getattr(dist, f'is_{name}_available', None)
    if name == 'nccl' and not torch.cuda.is_available():
        return False
    return bool(check and check())


def available_backends() -> list[str]:
    """The torch.distributed backends this machine can run (nccl only with CUDA)."""
    return [name for name in DIST_BACKENDS if _backend_available(name)]


def resolve_backend(requested: str | None) -> str:
    """The backend of ``--launcher pytorch``: ``requested`` (``dist_params.backend``) if this machine
    can run it, else an :class:`OptionError`; None: nccl with CUDA, gloo without."""
    if requested is None:
        return 'nccl' if torch.cuda.is_available() else 'gloo'
    name = str(requested).lower()
    if name == 'nccl' and not torch.cuda.is_available():
        raise OptionError(
            'dist_params.backend: nccl needs CUDA GPUs and this machine has none; set dist_params.backend: gloo '
            f'to train on CPUs (or remove it: nccl with CUDA, gloo without); available here: '
            f'{", ".join(available_backends())}'
        )
    if not _backend_available(name):
        raise OptionError(
            f"dist_params.backend: '{requested}' cannot run on this machine; available here: "
            f'{", ".join(available_backends())}'
        )
    return name


def use_dist_params(params: dict | None) -> None:
    """Remember the option file's ``dist_params`` for :func:`init_dist` (BasicSR does not pass them)."""
    _dist_params.clear()
    _dist_params.update(params or {})


def init_dist(launcher: str, backend: str | None = None, **kwargs) -> None:
    """Drop-in replacement for ``basicsr.utils.dist_util.init_dist`` that also runs on CPUs.

    BasicSR's ignores ``dist_params``, always asks for nccl and calls
    ``torch.cuda.set_device(rank % device_count())`` (a ZeroDivisionError without CUDA). This takes
    ``dist_params.backend`` (set by the ``basicsr`` command; default nccl with CUDA, gloo without) and
    sets a CUDA device only for nccl, from ``LOCAL_RANK`` so that several nodes work.
    """
    from basicsr.utils import dist_util

    if launcher != 'pytorch':  # slurm: BasicSR's own (it receives dist_params from BasicSR)
        dist_util.init_dist(launcher, backend or 'nccl', **kwargs)
        return
    if torch.multiprocessing.get_start_method(allow_none=True) is None:
        torch.multiprocessing.set_start_method('spawn')
    backend = resolve_backend(backend if backend is not None else _dist_params.get('backend'))
    if backend == 'nccl':
        local_rank = int(os.environ.get('LOCAL_RANK', os.environ.get('RANK', 0)))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    # torchrun gives the rendezvous (MASTER_ADDR/PORT, RANK, WORLD_SIZE): dist_params.port is not used.
    dist.init_process_group(backend=backend)


def model_to_device(self, net: torch.nn.Module) -> torch.nn.Module:
    """``BaseModel.model_to_device`` with CPU DDP (no ``device_ids``) under gloo.

    BasicSR's gives DDP ``device_ids=[torch.cuda.current_device()]`` even on the CPU.
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    net = net.to(self.device)
    if self.opt['dist']:
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        find_unused = self.opt.get('find_unused_parameters', False)
        return DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=find_unused)
    if self.opt['num_gpu'] > 1:
        return DataParallel(net)
    return net


def _wrap_load_network(original):
    # torch.load fails on a corrupt or non-torch file with an UnpicklingError whose advice
    # (weights_only=False) is wrong there; the replacement names the file instead.
    def load_network(self, net, load_path, strict=True, param_key='params'):
        try:
            return original(self, net, load_path, strict, param_key)
        except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
            if not _is_read_error(exc):
                raise
            raise CheckpointReadError(checkpoint_read_message(load_path, exc)) from None

    load_network._flowprior_wrapped = True
    return load_network


def _is_read_error(exc: BaseException) -> bool:
    # RuntimeErrors also come from load_state_dict (a real mismatch, with its own message): only the
    # reader's own failures are a corrupt file.
    if isinstance(exc, (pickle.UnpicklingError, EOFError)):
        return True
    text = str(exc)
    return any(mark in text for mark in ('PytorchStreamReader', 'zip archive', 'invalid load key', 'magic number'))


def checkpoint_read_message(path: str, exc: BaseException | None = None) -> str:
    """One line for a checkpoint that ``torch.load`` cannot read."""
    reason = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else 'unreadable'
    if 'weights only' in reason.lower() or 'weights_only' in reason.lower():
        # torch's advice (weights_only=False) would run arbitrary code from the file: not ours to give.
        reason = 'corrupt, or it holds pickled Python objects besides tensors'
    return f'{path}: not a readable PyTorch checkpoint ({reason[:160]}); check the path or write it again'


def _wrap_do_register(original):
    # Registry refuses a second registration of a name, so re-running a module's registration
    # (importlib.reload, a plugin imported again under its entry point) raised. The same definition
    # (same module and qualified name) is accepted again, the newest wins; a different object under
    # a taken name is still refused.
    def _do_register(self, name, obj, suffix=None):
        key = f'{name}_{suffix}' if isinstance(suffix, str) else name
        old = self._obj_map.get(key)
        if old is not None and (old.__module__, old.__qualname__) == (obj.__module__, obj.__qualname__):
            self._obj_map[key] = obj  # the same definition, executed again
            return
        original(self, name, obj, suffix)

    _do_register._flowprior_wrapped = True
    return _do_register


def apply_basicsr_patches() -> None:
    """Install the replacements above into BasicSR's modules (idempotent)."""
    import basicsr.train
    import basicsr.utils.options
    from basicsr.models.base_model import BaseModel
    from basicsr.utils.registry import Registry

    basicsr.train.load_resume_state = load_resume_state
    if not getattr(basicsr.train.create_train_val_dataloader, '_flowprior_wrapped', False):
        basicsr.train.create_train_val_dataloader = _wrap_create_train_val_dataloader(
            basicsr.train.create_train_val_dataloader
        )
    basicsr.utils.options.init_dist = init_dist  # what parse_options calls
    BaseModel.model_to_device = model_to_device
    if not getattr(Registry._do_register, '_flowprior_wrapped', False):
        Registry._do_register = _wrap_do_register(Registry._do_register)
    if not getattr(BaseModel.load_network, '_flowprior_wrapped', False):
        BaseModel.load_network = _wrap_load_network(BaseModel.load_network)
