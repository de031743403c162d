"""Checkpoint formats of this package's networks: release layouts and the architecture check.

Each network class declares its :class:`CheckpointFormat` as the class attribute
``checkpoint_format``: how to read the architecture a state dict holds and say it in words, and,
for families whose authors released files in another layout, one filter function per layout that
turns it into our state dict (as timm's ``checkpoint_filter_fn``). :func:`load_checked` loads a
state dict with that check; BasicSR's loader (:mod:`flowprior_plugin.models.base_flow_model`) and the
converters in ``integrations/`` use the same functions, so every route says a mismatch the same way:
one line naming the architecture the checkpoint holds and the one the options build.

The helpers below the check read architecture fields from keys and shapes for the families'
``read_architecture`` functions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flowprior_plugin.errors import CheckpointMismatchError

# What a family's read_architecture returns: field -> value, None where the state dict does not say.
Architecture = dict[str, Any]


@dataclass(frozen=True)
class ReleaseLayout:
    """A file layout the authors of a family released, other than our state dict.

    Attributes:
        name (str): How messages name such a file ("the authors' SRFlow-LP checkpoint").
        recognise (Callable): ``recognise(obj) -> bool``: whether a loaded object is in this layout.
        filter_fn (Callable): ``filter_fn(obj) -> state dict``: the object in our layout (keys
            renamed, wrappers removed; the tensors are not copied).
        requirement (Callable | None): ``requirement(net) -> str | None``: what ``net`` must be to
            load such a file beyond what its tensors show (e.g. a stride), as "needs ...", or None
            when it fits. Default: None.
    """

    name: str
    recognise: Callable[[Any], bool]
    filter_fn: Callable[[Mapping], Mapping[str, Any]]
    requirement: Callable[[nn.Module], str | None] | None = None


@dataclass(frozen=True)
class CheckpointFormat:
    """How the state dicts of one family of networks are read, described and converted.

    Attributes:
        family (str): The family's name in messages ('SRFlow', 'LatentPriorNet').
        read_architecture (Callable): ``read_architecture(state_dict) -> dict``: the architecture
            fields a state dict reveals from its keys and shapes (None where it reveals nothing).
        describe (Callable): ``describe(arch, differ) -> str``: one phrase for an architecture,
            naming the family ("SRFlow 4X, nb=23, K=16, L=3"); ``differ`` names the fields that
            differ from the other side of the comparison (a phrase may show those too).
        releases (tuple[ReleaseLayout, ...]): The released layouts besides ours. Default: ().
        foreign_hint (Callable | None): ``foreign_hint(state_dict) -> str``: a parenthesised hint
            for a state dict with none of the family's weights (e.g. another family's), or ''.
            Default: None.
        mismatch_fix (Callable | None): ``mismatch_fix(theirs, differ) -> str``: what to change to
            load a checkpoint of architecture ``theirs``, appended to the message, or ''.
            Default: None.
    """

    family: str
    read_architecture: Callable[[Mapping[str, Any]], Architecture]
    describe: Callable[[Mapping[str, Any], Sequence[str]], str]
    releases: tuple[ReleaseLayout, ...] = ()
    foreign_hint: Callable[[Mapping[str, Any]], str] | None = None
    mismatch_fix: Callable[[Mapping[str, Any], Sequence[str]], str] | None = None

    def release_of(self, obj: Any) -> ReleaseLayout | None:
        """The released layout ``obj`` is in, or None (our layout, or not a state dict at all)."""
        if not isinstance(obj, Mapping):
            return None
        return next((release for release in self.releases if release.recognise(obj)), None)

    def to_our_layout(self, obj: Mapping) -> tuple[Mapping[str, Any], ReleaseLayout | None]:
        """(``obj`` in our layout, the released layout it was in or None); ours is returned as is."""
        release = self.release_of(obj)
        return (obj, None) if release is None else (release.filter_fn(obj), release)


def checkpoint_format_of(net: nn.Module) -> CheckpointFormat | None:
    """The :class:`CheckpointFormat` a network declares (``checkpoint_format``), or None."""
    fmt = getattr(type(net), 'checkpoint_format', None)
    return fmt if isinstance(fmt, CheckpointFormat) else None


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if hasattr(value, 'shape') else None


def _example(keys: Sequence[str]) -> str:
    return f'{len(keys)} (e.g. {keys[0]})'


def _mismatch(
    net: nn.Module, fmt: CheckpointFormat, state_dict: Mapping[str, Any], source: str, strict: bool
) -> str | None:
    """The message for ``state_dict`` (our layout) loaded into ``net``, or None when it fits."""
    own = net.state_dict()
    reshaped = [k for k in own if k in state_dict and _shape(state_dict[k]) not in (None, tuple(own[k].shape))]
    # Non-strict loading is a deliberate partial load: only tensors of other shapes stop it (torch
    # refuses them too, with a key list).
    if not strict and not reshaped:
        return None
    family = fmt.family
    ours, theirs = fmt.read_architecture(own), fmt.read_architecture(state_dict)
    if all(v is None for v in theirs.values()):
        first = ', '.join(repr(k) for k in list(state_dict)[:3])
        if any(k in state_dict for k in ('params', 'params_ema')):
            hint = " (it looks like a BasicSR checkpoint: pass state_dict['params'])"
        else:
            hint = fmt.foreign_hint(state_dict) if fmt.foreign_hint else ''
        return (
            f'{source} holds no {family} weights{hint}: its keys start with {first or "nothing"}, '
            f'but the options build {fmt.describe(ours, ())}'
        )
    differ = [k for k, v in theirs.items() if v is not None and v != ours.get(k)]
    if differ:
        fix = fmt.mismatch_fix(theirs, differ) if fmt.mismatch_fix else ''
        message = (
            f'{source} holds {fmt.describe(theirs, differ)} but the options build {fmt.describe(ours, differ)}; '
            f'they differ in {", ".join(differ)}{fix}'
        )
        return f'{message}; {_example(reshaped)} tensor(s) of other shapes' if reshaped and not strict else message
    # The fields agree but the tensors do not: say which, in one line instead of torch's lists.
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    detail = [f'{_example(missing)} missing'] if missing else []
    detail += [f'{_example(unexpected)} unexpected'] if unexpected else []
    if reshaped:
        k = reshaped[0]
        detail.append(
            f'{len(reshaped)} with other shapes (e.g. {k}: file {_shape(state_dict[k])}, net {tuple(own[k].shape)})'
        )
    if not detail:
        return None
    return f'{source} does not fit the options, which build {fmt.describe(ours, ())}: keys {"; ".join(detail)}'


def describe_checkpoint_mismatch(net: nn.Module, state_dict: Mapping[str, Any], strict: bool = True) -> str | None:
    """Say in one line why ``state_dict`` does not load into ``net``, or None when it does.

    ``state_dict`` may be in a released layout of ``net``'s family (converted first). A BasicSR
    ``{'params': ...}`` wrapper is not unwrapped: the message says to pass ``state_dict['params']``.

    Args:
        net: A network that declares a ``checkpoint_format`` (others give None).
        state_dict: The loaded checkpoint.
        strict: As ``load_state_dict``: without it only tensors of other shapes are a mismatch.
            Default: True.

    Returns:
        str | None: "checkpoint holds <description> but the options build <description>; they
        differ in <fields>" (plus what to change where the family knows), or None.
    """
    fmt = checkpoint_format_of(net)
    if fmt is None:
        return None
    state_dict, release = fmt.to_our_layout(state_dict)
    return _check(net, fmt, state_dict, release, strict)


def _check(
    net: nn.Module, fmt: CheckpointFormat, state_dict: Mapping[str, Any], release: ReleaseLayout | None, strict: bool
) -> str | None:
    if release is not None and release.requirement is not None:
        needs = release.requirement(net)
        if needs:
            return f'{release.name} {needs}'
    return _mismatch(net, fmt, state_dict, 'checkpoint' if release is None else release.name, strict)


def checked_state_dict(net: nn.Module, state_dict: Mapping[str, Any], strict: bool = True) -> Mapping[str, Any]:
    """``state_dict`` in ``net``'s layout (a released layout converted), checked against ``net``.

    Args:
        net: The network to load into.
        state_dict: The loaded checkpoint, in our layout or a released one of the family.
        strict: As ``load_state_dict``. Default: True.

    Returns:
        Mapping: The state dict to pass to ``net.load_state_dict`` (``state_dict`` itself when it is
        already in our layout).

    Raises:
        CheckpointMismatchError: The checkpoint holds another architecture (one line naming both).
    """
    fmt = checkpoint_format_of(net)
    if fmt is None:
        return state_dict
    state_dict, release = fmt.to_our_layout(state_dict)
    message = _check(net, fmt, state_dict, release, strict)
    if message is not None:
        raise CheckpointMismatchError(message)
    return state_dict


def load_checked(net: nn.Module, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
    """``net.load_state_dict`` of :func:`checked_state_dict`: released layouts load, and a
    checkpoint of another architecture raises :class:`CheckpointMismatchError` naming both.

    Returns:
        What ``load_state_dict`` returns (missing and unexpected keys).
    """
    return net.load_state_dict(checked_state_dict(net, state_dict, strict), strict=strict, assign=assign)


# ---------------------------------------------------------------------- reading architectures


def official_options(family: str, configs: Mapping[str, Mapping], common: Mapping, name: str) -> dict:
    """Constructor arguments of a released config: ``common`` updated by ``configs[name]``.

    Raises:
        KeyError: ``name`` is not in ``configs`` (the message lists the known ones).
    """
    if name not in configs:
        raise KeyError(f'unknown {family} config {name!r}; known: {", ".join(configs)}')
    return dict(common, **configs[name])


def state_dict_shapes(shapes: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor entry of a state dict, keyed as the original keys.

    Keys BasicSR renamed with a trailing ``.ignore`` (size mismatch) are read like the original
    key; entries that are neither tensors nor shapes (e.g. a nested dict of a wrapped checkpoint)
    reveal nothing and are left out.
    """
    keys: dict[str, tuple[int, ...]] = {}
    for key, value in shapes.items():
        if hasattr(value, 'shape'):
            shape = tuple(value.shape)
        elif isinstance(value, (tuple, list, torch.Size)) and all(isinstance(d, int) for d in value):
            shape = tuple(value)
        else:
            continue
        key = str(key)
        keys[key[: -len('.ignore')] if key.endswith('.ignore') else key] = shape
    return keys


def shape_dim(keys: Mapping[str, tuple[int, ...]], key: str, dim: int) -> int | None:
    """Size ``dim`` of the tensor at ``key``, or None where there is no such tensor or dimension."""
    shape = keys.get(key)
    return shape[dim] if shape is not None and len(shape) > dim else None


def key_indices(keys: Mapping[str, Any], pattern: str) -> list[int]:
    """The distinct integers that ``pattern``'s first group matches at the start of a key, sorted."""
    return sorted({int(m.group(1)) for m in (re.match(pattern, k) for k in keys) if m})


def official_config_name(
    arch: Mapping[str, Any], official: Mapping[str, Mapping[str, Any]], fields: Sequence[str]
) -> str | None:
    """The first released config (name -> constructor arguments) that ``arch`` matches in every
    one of ``fields``, or None."""
    for name, options in official.items():
        if all(arch.get(k) == options[k] for k in fields):
            return name
    return None


def describe_scaled_architecture(arch: Mapping[str, Any], fields: Sequence[str], official: str | None) -> str:
    """ "4X, nb=23, K=16 (the official DF2K 4X config)": the scale, then each of ``fields`` the
    architecture reveals, then the released config it matches, if any."""
    parts = [f'{arch["scale"]}X' if arch.get('scale') else 'of unknown scale']
    parts += [f'{k}={arch[k]}' for k in fields if arch.get(k) is not None]
    text = ', '.join(parts)
    return f'{text} (the official {official} config)' if official else text
