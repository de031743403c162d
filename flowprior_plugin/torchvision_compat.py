"""Lets BasicSR 1.4.2 import on torchvision >= 0.17 without editing installed files.

BasicSR 1.4.2 (its last release) imports ``torchvision.transforms.functional_tensor`` in
``basicsr/data/degradations.py``; torchvision 0.17 removed that module, so ``import basicsr`` fails.
The only name BasicSR takes from it is ``rgb_to_grayscale``, which ``torchvision.transforms.functional``
still provides. We register a stand-in module under the old name, and only when the real one is
missing, so older torchvision versions keep their own module.
"""

from __future__ import annotations

import importlib.util
import sys
import types

LEGACY_MODULE = 'torchvision.transforms.functional_tensor'


def install_functional_tensor_stand_in() -> bool:
    """Register the stand-in module if torchvision lacks it.

    Returns:
        bool: True if the stand-in was installed by this call, False if a module of that name
        (the real one, or our stand-in from an earlier call) already exists.
    """
    if LEGACY_MODULE in sys.modules:
        return False
    try:
        if importlib.util.find_spec(LEGACY_MODULE) is not None:
            return False
    except ModuleNotFoundError:
        pass
    from torchvision.transforms import functional

    stand_in = types.ModuleType(LEGACY_MODULE)
    stand_in.__doc__ = 'Stand-in installed by flowprior_plugin: torchvision >= 0.17 removed this module.'
    stand_in.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[LEGACY_MODULE] = stand_in
    return True
