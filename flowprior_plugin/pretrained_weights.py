"""Where the ImageNet weights of torchvision backbones (VGG, AlexNet, SqueezeNet) come from.

One lookup for the perceptual loss and the LPIPS metric, in this order: an explicit
``weights_path``; BasicSR 1.4.2's ``VGG_PRETRAIN_PATH`` (vgg19 only, where BasicSR looks); the
torch hub cache (``$TORCH_HOME/hub/checkpoints``); torchvision's download of the same file (the
IMAGENET1K_V1 weights that ``pretrained=True`` loads). A file that is nowhere and cannot be
downloaded raises one ``MissingWeightsError`` naming the file, where to put it, the option and the URL.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch
from basicsr.archs import vgg_arch
from torch import nn

from flowprior_plugin.errors import CheckpointMismatchError, MissingWeightsError

# Buffers that torchvision's older ImageNet files predate (the BatchNorm VGGs were saved before
# PyTorch 0.4.1 added it); BatchNorm loads such files with the counter at 0, and so do we.
_OPTIONAL_BUFFERS = ('num_batches_tracked',)


def weights_url(arch: str) -> str:
    """The URL of torchvision's ImageNet weights for ``arch`` (what ``pretrained=True`` downloads).

    Args:
        arch (str): A torchvision model name, e.g. 'vgg19', 'vgg16_bn', 'alexnet', 'squeezenet1_1'.

    Returns:
        str: e.g. https://download.pytorch.org/models/vgg19-dcbb9e9d.pth
    """
    import torchvision

    return torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url


def weights_filename(arch: str) -> str:
    """The file name of ``arch``'s ImageNet weights, e.g. 'vgg19-dcbb9e9d.pth'.

    Args:
        arch (str): A torchvision model name.

    Returns:
        str: The last part of :func:`weights_url`.
    """
    return os.path.basename(weights_url(arch))


def hub_cache_path(arch: str) -> str:
    """Where torchvision keeps (and downloads) ``arch``'s ImageNet weights: ``<torch hub>/checkpoints/``.

    Args:
        arch (str): A torchvision model name.

    Returns:
        str: Absolute path of the cached file (it may not exist); follows ``$TORCH_HOME`` at call time.
    """
    return os.path.join(torch.hub.get_dir(), 'checkpoints', weights_filename(arch))


def basicsr_pretrained_path(arch: str) -> str | None:
    """BasicSR's fixed place for the file, relative to the working directory; vgg19 only.

    BasicSR 1.4.2 loads ``VGG_PRETRAIN_PATH`` (experiments/pretrained_models/vgg19-dcbb9e9d.pth)
    into whatever VGG it builds; the file is VGG19's, so other networks do not look there. The
    value is read at call time, so a project that reassigns it is respected as BasicSR would.

    Args:
        arch (str): A torchvision model name.

    Returns:
        str | None: The path (it may not exist), or None for networks other than vgg19.
    """
    return vgg_arch.VGG_PRETRAIN_PATH if arch == 'vgg19' else None


def local_weights_file(arch: str) -> str | None:
    """The first existing file of the default places (BasicSR's, then the torch hub cache); never downloads.

    Args:
        arch (str): A torchvision model name.

    Returns:
        str | None: Path of the file the default route would load, or None (a download would be needed).
    """
    for path in (basicsr_pretrained_path(arch), hub_cache_path(arch)):
        if path and os.path.isfile(path):
            return path
    return None


def missing_weights_error(arch: str, user: str, option_place: str, reason: str) -> MissingWeightsError:
    """The one-line error for default weights that are absent: the file, where to put it, the option, the URL.

    Args:
        arch (str): A torchvision model name.
        user (str): Who needs the weights, e.g. 'VGGPerceptualLoss' or 'LPIPS (alex)'.
        option_place (str): Where ``weights_path`` is set, e.g. 'in the loss options'.
        reason (str): Why they are not usable, completing "which are not on this machine ...",
            e.g. 'and could not be downloaded (timeout)'.

    Returns:
        MissingWeightsError: The error to raise.
    """
    filename = weights_filename(arch)
    places = f'{hub_cache_path(arch)} (the torch hub cache; $TORCH_HOME moves it)'
    basicsr_path = basicsr_pretrained_path(arch)
    if basicsr_path is not None:
        places = (
            f"{os.path.abspath(basicsr_path)} (BasicSR's VGG_PRETRAIN_PATH, relative to the working "
            f'directory) or at {places}'
        )
    message = (
        f'{user} needs the ImageNet {arch} weights {filename}, which are not on this machine {reason}. '
        f'Put the file at {places}, or set weights_path: /path/to/{filename} {option_place} '
        f'(download: {weights_url(arch)})'
    )
    return MissingWeightsError(' '.join(message.split()))


def existing_weights_path(arch: str, weights_path: str, user: str) -> str:
    """An explicit ``weights_path``, expanded and made absolute, checked to exist.

    Args:
        arch (str): A torchvision model name (for the message).
        weights_path (str): The option's value; '~' is expanded.
        user (str): Who needs the weights (for the message).

    Returns:
        str: The absolute path.

    Raises:
        MissingWeightsError: No file there.
    """
    path = os.path.abspath(os.path.expanduser(str(weights_path)))
    if not os.path.isfile(path):
        raise MissingWeightsError(
            f'{user} weights_path {path} does not exist: it should be the torchvision {arch} ImageNet '
            f'weights file {weights_filename(arch)} (download: {weights_url(arch)})'
        )
    return path


def read_state_file(path: str) -> Mapping[str, torch.Tensor]:
    """A state dict saved with ``torch.save`` (tensors only), unwrapped from ``{'state_dict': ...}``.

    Args:
        path (str): The file.

    Returns:
        Mapping[str, Tensor]: Its tensors by key, on the CPU.
    """
    state = torch.load(path, map_location='cpu', weights_only=True)
    if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
        state = state['state_dict']
    return state


def load_pretrained_state(
    arch: str,
    weights_path: str | None = None,
    *,
    user: str,
    option_place: str,
    allow_download: bool = True,
) -> tuple[Mapping[str, torch.Tensor], str]:
    """The ImageNet state dict of ``arch`` from the first place that has it, downloading as the last resort.

    Order: ``weights_path``; BasicSR's ``VGG_PRETRAIN_PATH`` (vgg19 only); the torch hub cache;
    torchvision's download into that cache (hash-checked, as ``pretrained=True`` does).

    Args:
        arch (str): A torchvision model name, e.g. 'vgg19' or 'alexnet'.
        weights_path (str | None): An explicit local file; when given, nothing else is tried.
            Default: None.
        user (str): Who needs the weights, for messages, e.g. 'VGGPerceptualLoss'.
        option_place (str): Where the user sets ``weights_path``, e.g. 'in the loss options'.
        allow_download (bool): Whether a missing file may be downloaded. Default: True.

    Returns:
        tuple[Mapping[str, Tensor], str]: The state dict and the file it came from.

    Raises:
        MissingWeightsError: ``weights_path`` does not exist, or the file is in none of the
            default places and downloads are off or failed.
    """
    if weights_path is not None:
        path = existing_weights_path(arch, weights_path, user)
        return read_state_file(path), path
    local = local_weights_file(arch)
    if local is not None:
        return read_state_file(local), local
    if not allow_download:
        raise missing_weights_error(arch, user, option_place, 'and downloads are off (allow_download: false)')
    cached = hub_cache_path(arch)
    try:
        state = torch.hub.load_state_dict_from_url(
            weights_url(arch), map_location='cpu', progress=True, check_hash=True, weights_only=True
        )
    except Exception as error:  # the download's failure modes vary (URLError, timeouts, hash)
        if os.path.isfile(cached):  # downloaded, but unreadable: not a "missing" problem
            raise
        raise missing_weights_error(arch, user, option_place, f'and could not be downloaded ({error})') from error
    return state, cached


def load_backbone_state(
    target: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    arch: str,
    key_in_state: Callable[[str], str] = lambda key: key,
    context: str = '',
) -> None:
    """Copy the entries of a torchvision state dict that ``target`` needs; other keys are ignored.

    Every key of ``target`` must be present with its shape (a wrong network's file is an error,
    not a partial load), except buffers older torchvision files lack (``num_batches_tracked``).

    Args:
        target (nn.Module): The module to fill.
        state (Mapping[str, Tensor]): The torchvision state dict.
        source (str): Where ``state`` came from (for the message).
        arch (str): The torchvision model name it should be (for the message).
        key_in_state (Callable[[str], str]): Maps a key of ``target`` to the key in ``state``.
            Default: the same key.
        context (str): Appended to the network's name in the message. Default: ''.

    Raises:
        CheckpointMismatchError: Keys missing from ``state``, or shapes that differ.
    """
    expected = target.state_dict()
    wanted = {
        ours: key_in_state(ours)
        for ours in expected
        if key_in_state(ours) in state or not ours.endswith(_OPTIONAL_BUFFERS)
    }
    missing = [theirs for theirs in wanted.values() if theirs not in state]
    wrong = [
        f'{theirs} {tuple(state[theirs].shape)} (expected {tuple(expected[ours].shape)})'
        for ours, theirs in wanted.items()
        if theirs in state and state[theirs].shape != expected[ours].shape
    ]
    if missing or wrong:
        raise CheckpointMismatchError(
            f'{source} is not a torchvision {arch} state dict{context}: missing keys {missing[:5]}'
            f'{" ..." if len(missing) > 5 else ""}, wrong shapes {wrong[:5]}{" ..." if len(wrong) > 5 else ""}'
        )
    # A skipped num_batches_tracked is filled in by BatchNorm itself (a dict without version metadata).
    target.load_state_dict({ours: state[theirs] for ours, theirs in wanted.items()})
