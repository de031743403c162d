"""Fixes to BasicSR 1.4.2's training entry point, applied when the plugin is imported.

BasicSR 1.4.2 is the last release and will not change, so we replace one function of
``basicsr.train`` in memory (never on disk):

- ``load_resume_state`` calls ``torch.cuda.current_device()``, so ``--auto_resume`` and
  ``path.resume_state`` fail on a machine without CUDA. Ours maps the state to the CPU when the
  options ask for ``num_gpu: 0`` or CUDA is absent, and to the current CUDA device otherwise.
- BasicSR's ``check_resume`` points every ``pretrain_network_*`` path at
  ``models/net_*_<iter>.pth``. A frozen network that a model never saves (the flow under the
  learned prior) has no such file; ours keeps that network's original path instead of sending
  BasicSR to a file that does not exist.
"""

from __future__ import annotations

import os.path as osp

import torch


def _resume_map_location(opt: dict):
    if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available():
        device_id = torch.cuda.current_device()
        return lambda storage, loc: storage.cuda(device_id)
    return 'cpu'


def load_resume_state(opt: dict):
    """Drop-in replacement for ``basicsr.train.load_resume_state`` that works without CUDA."""
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
        from flowprior_plugin.errors import OptionError

        raise OptionError(f'path.resume_state: no such file: {resume_state_path}')
    # Resume states hold optimizer and scheduler states (a Counter of milestones): not weights-only.
    resume_state = torch.load(resume_state_path, map_location=_resume_map_location(opt), weights_only=False)
    original = dict(opt['path'])
    check_resume(opt, resume_state['iter'])
    for key, path in list(opt['path'].items()):
        if key.startswith('pretrain_network_') and path != original.get(key) and not osp.isfile(path):
            opt['path'][key] = original.get(key)  # a network this model never saves (frozen)
    return resume_state


def apply_basicsr_patches() -> None:
    """Install the replacements above into ``basicsr.train`` (idempotent)."""
    import basicsr.train

    basicsr.train.load_resume_state = load_resume_state
