"""Latent generators: the trunk of the learned prior that fuses the encoded inputs.

Each is an ``nn.Module(in_channels, out_channels, **options)`` mapping (B, in_channels, H, W) to
(B, out_channels, H, W) for any H, W >= 1, named in the prior's options
(``generator: {type: UNet, depth: 3, width: 64}``).
"""

from __future__ import annotations

import inspect
from typing import Any

from basicsr.utils.registry import Registry
from torch import nn

from flowprior_plugin.errors import OptionError

# A registry of their own, not BasicSR's ARCH_REGISTRY, so that short names such as UNet never
# collide with another package's networks. Besides its constructor, each class has
# default_out_channels(**options) (its output width when the prior network lets it choose; the
# prior's 1x1 head follows it) and min_training_grid / min_grid_option (the smallest latent grid
# side it learns from more than borders, and the option that lowers it: the learned-prior model
# warns when training crops give smaller grids).
GENERATOR_REGISTRY = Registry('latent_generator')

# Imported after the registry exists: each module registers its classes into it.
from flowprior_plugin.generators import edsr, swin, unet  # noqa: E402,F401


def known_generators() -> list[str]:
    """Names accepted as a generator ``type``, sorted."""
    return sorted(GENERATOR_REGISTRY.keys())


def get_generator_class(name: Any, option_name: str = 'generator') -> type[nn.Module]:
    """The registered generator class called ``name``.

    Args:
        name: The ``type`` from the options.
        option_name: Where the options came from, named in the error message.

    Raises:
        OptionError: ``name`` is not a registered generator (the message lists the known ones).
    """
    # Registry.get would print a note and try a '_basicsr' suffix; an explicit check is clearer.
    if not isinstance(name, str) or name not in GENERATOR_REGISTRY:
        raise OptionError(
            f'{option_name}.type: unknown latent generator {name!r}; known: {", ".join(known_generators())}'
        )
    return GENERATOR_REGISTRY.get(name)


def _split_options(opt: dict, option_name: str) -> tuple[type[nn.Module], dict]:
    if not isinstance(opt, dict):
        raise OptionError(f'{option_name} must be a mapping with a "type" key, got {type(opt).__name__}')
    options = dict(opt)  # never mutate the caller's options (BasicSR reuses them, e.g. on resume)
    if 'type' not in options:
        raise OptionError(f'{option_name}: missing "type"; known: {", ".join(known_generators())}')
    cls = get_generator_class(options.pop('type'), option_name)
    params = inspect.signature(cls.__init__).parameters.values()
    accepted = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ('self', 'in_channels', 'out_channels')
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise OptionError(
            f'{option_name}: {cls.__name__} has no option {", ".join(unknown)}; '
            f'its options: {", ".join(accepted) or "(none)"}'
        )
    return cls, options


def generator_default_out_channels(opt: dict, option_name: str = 'generator') -> int:
    """The output width a generator chooses for itself with these options.

    Args:
        opt: Generator options with ``type`` (not modified).
        option_name: Where the options came from, named in error messages.
    """
    cls, options = _split_options(opt, option_name)
    return int(cls.default_out_channels(**options))


def build_generator(opt: dict, in_channels: int, out_channels: int, option_name: str = 'generator') -> nn.Module:
    """Build a registered generator from its options.

    Args:
        opt: ``type`` names the generator; every other key is a constructor option. The dict
            itself is not modified.
        in_channels: Channels of the generator's input.
        out_channels: Channels of the generator's output.
        option_name: Where the options came from, named in error messages.

    Returns:
        The generator module.

    Raises:
        OptionError: Unknown ``type`` (the message lists the known names) or an option the
            generator does not have.
    """
    cls, options = _split_options(opt, option_name)
    try:
        return cls(in_channels, out_channels, **options)
    except OptionError:
        raise
    except (TypeError, ValueError) as err:
        raise OptionError(f'{option_name} ({cls.__name__}): {err}') from err


__all__ = [
    'GENERATOR_REGISTRY',
    'build_generator',
    'generator_default_out_channels',
    'get_generator_class',
    'known_generators',
]
