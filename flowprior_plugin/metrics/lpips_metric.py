"""LPIPS (Zhang et al. 2018) as a BasicSR metric, with explicit behaviour when weights are offline.

The learned-prior paper reports LPIPS with the AlexNet backbone on images in [-1, 1]. The ``lpips``
package ships only its linear heads; the ImageNet backbone comes from the torch hub cache, a local
file or a download (:mod:`flowprior_plugin.pretrained_weights`, :func:`get_lpips_network`).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import numpy as np
import torch
from basicsr.metrics.metric_util import reorder_image
from basicsr.utils.registry import METRIC_REGISTRY

from flowprior_plugin.errors import OptionError
from flowprior_plugin.pretrained_weights import (
    existing_weights_path,
    hub_cache_path,
    load_backbone_state,
    load_pretrained_state,
    local_weights_file,
    missing_weights_error,
)

# A child of BasicSR's logger, so warnings land in BasicSR's log file during training without
# initialising that logger here (get_root_logger would freeze it before BasicSR adds its file).
logger = logging.getLogger(f'basicsr.{__name__}')

# lpips' name for the backbone -> torchvision's builder name. lpips asks torchvision for
# ``<builder>(pretrained=True)``, which torchvision maps to the IMAGENET1K_V1 weights.
_TORCHVISION_BUILDERS = {'alex': 'alexnet', 'vgg': 'vgg16', 'vgg16': 'vgg16', 'squeeze': 'squeezenet1_1'}

# Seed for the random backbone: a fixed seed makes test scores reproducible, and building it inside
# fork_rng leaves the caller's random stream (e.g. a training run) untouched.
_RANDOM_BACKBONE_SEED = 0
# Where a user sets ``weights_path`` (for messages).
_OPTION_PLACE = 'in the LPIPS metric options'

# Per (net, weights source, device), so that validation does not rebuild a network per image.
_NETWORK_CACHE: dict[tuple[str, str, str], torch.nn.Module] = {}


def _check_net(net: str) -> str:
    if net not in _TORCHVISION_BUILDERS:
        raise OptionError(f'LPIPS net must be one of {sorted(_TORCHVISION_BUILDERS)}, got {net!r}')
    return _TORCHVISION_BUILDERS[net]


def backbone_hub_cache_path(net: str = 'alex') -> str:
    """Where torchvision looks for (and downloads) the backbone file: ``<torch hub>/checkpoints/``.

    The hub directory follows ``$TORCH_HOME`` (default ``~/.cache/torch``) at call time.

    Args:
        net (str): 'alex', 'vgg' or 'squeeze'. Default: 'alex'.

    Returns:
        str: The absolute path of the cached backbone file (it may not exist).
    """
    return hub_cache_path(_check_net(net))


def lpips_available(net: str = 'alex', weights_path: str | None = None) -> tuple[bool, str]:
    """Whether LPIPS can be computed from local files only (never attempts a download).

    Models use this to report "skipped: <reason>" instead of failing a validation run. With the
    default route, False means the first LPIPS call would try a download (which works for users
    with internet).

    Args:
        net (str): 'alex', 'vgg' or 'squeeze'. Default: 'alex'.
        weights_path (str | None): A local torchvision backbone file, as for ``calculate_lpips``.
            Default: None (the torch hub cache).

    Returns:
        tuple[bool, str]: (available, a sentence saying where the weights are or why they are not).
    """
    import lpips

    arch = _check_net(net)
    heads = os.path.join(os.path.dirname(lpips.__file__), 'weights', 'v0.1', f'{net}.pth')
    if not os.path.isfile(heads):
        return False, f'the lpips package lacks its linear heads file {heads} (reinstall lpips)'
    if weights_path is not None:
        if os.path.isfile(weights_path):
            return True, f'LPIPS ({net}) backbone from weights_path {weights_path}'
        return False, f'LPIPS weights_path {weights_path} does not exist'
    local = local_weights_file(arch)
    if local is not None:
        return True, f'LPIPS ({net}) backbone from the torch hub cache {local}'
    return False, str(missing_weights_error(arch, f'LPIPS ({net})', _OPTION_PLACE, 'and would have to be downloaded'))


def _build_lpips(net: str, weights_path: str | None, random_backbone: bool, allow_download: bool) -> torch.nn.Module:
    """``lpips.LPIPS`` with its packaged linear heads and the backbone from ``pretrained_weights``
    (or random); lpips itself never downloads."""
    import lpips

    arch = _check_net(net)
    with warnings.catch_warnings():
        # lpips calls torchvision's deprecated `pretrained=` interface; torchvision 0.29 still maps
        # it to `weights=` and warns on every build, which says nothing useful to our users.
        warnings.filterwarnings('ignore', message=r".*'pretrained' is deprecated.*", category=UserWarning)
        warnings.filterwarnings('ignore', message=r'Arguments other than a weight enum.*', category=UserWarning)
        # pnet_rand=True: torchvision builds the backbone with weights=None (no network); lpips
        # still loads its packaged linear heads from disk.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RANDOM_BACKBONE_SEED)
            model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    if random_backbone:
        return model
    state, source = load_pretrained_state(
        arch, weights_path, user=f'LPIPS ({net})', option_place=_OPTION_PLACE, allow_download=allow_download
    )
    # lpips splits torchvision's ``features`` into ``slice<k>`` Sequentials but keeps each layer's
    # index as its name, so ``slice<k>.<i>.<rest>`` is torchvision's ``features.<i>.<rest>``.
    load_backbone_state(
        model.net,
        state,
        source,
        arch,
        key_in_state=lambda key: 'features.' + key.split('.', 1)[1],
        context=f' for LPIPS net {net!r}',
    )
    return model


def get_lpips_network(
    net: str = 'alex',
    weights_path: str | None = None,
    random_backbone_for_tests: bool = False,
    device: str | torch.device | None = None,
    allow_download: bool = True,
) -> torch.nn.Module:
    """The cached ``lpips.LPIPS`` network for these options (built on first use, eval mode, frozen).

    Args:
        net (str): Backbone, 'alex', 'vgg' or 'squeeze'. Default: 'alex'.
        weights_path (str | None): Local torchvision backbone file (e.g. alexnet-owt-7be5be79.pth);
            no network access, the linear heads still come from the ``lpips`` package.
            Default: None (torch hub cache, else download).
        random_backbone_for_tests (bool): Random backbone (deterministic seed), meaningless scores
            and a logged warning; tests only. Default: False.
        device (str | torch.device | None): Where the network runs. Default: None (CUDA if
            available, else CPU).
        allow_download (bool): Whether the default route may download the backbone; False makes
            offline runs explicit (a missing file is reported, nothing is fetched). Default: True.

    Returns:
        torch.nn.Module: The network; call it with two (n, 3, h, w) RGB tensors in [-1, 1].

    Raises:
        MissingWeightsError: The backbone is absent and cannot be downloaded, or ``weights_path``
            does not exist.
        OptionError: Unknown ``net``, or both ``weights_path`` and ``random_backbone_for_tests``.
    """
    arch = _check_net(net)
    if weights_path is not None and random_backbone_for_tests:
        raise OptionError('LPIPS: give either weights_path or random_backbone_for_tests, not both')
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(device)
    if weights_path is not None:
        weights_path = existing_weights_path(arch, weights_path, f'LPIPS ({net})')
        source = f'file:{weights_path}'
    else:
        source = 'random' if random_backbone_for_tests else 'torchvision'

    key = (net, source, str(device))
    model = _NETWORK_CACHE.get(key)
    if model is None:
        model = _build_lpips(net, weights_path, random_backbone_for_tests, allow_download)
        model = model.to(device).eval().requires_grad_(False)
        _NETWORK_CACHE[key] = model
        if random_backbone_for_tests:
            logger.warning(
                'LPIPS (%s) uses a RANDOM backbone (random_backbone_for_tests=True): its scores are '
                'meaningless, for tests only',
                net,
            )
    return model


def clear_lpips_cache() -> None:
    """Drop the cached LPIPS networks (frees their memory; the next call rebuilds)."""
    _NETWORK_CACHE.clear()


@METRIC_REGISTRY.register()
def calculate_lpips_pt(
    img: torch.Tensor,
    img2: torch.Tensor,
    net: str = 'alex',
    weights_path: str | None = None,
    random_backbone_for_tests: bool = False,
    device: str | torch.device | None = None,
    crop_border: int = 0,
    allow_download: bool = True,
    **kwargs: Any,
) -> torch.Tensor:
    """LPIPS of a batch (PyTorch version, like BasicSR's ``calculate_psnr_pt``); lower is better.

    Args:
        img (Tensor): Images of shape (n, 3, h, w), RGB, range [0, 1].
        img2 (Tensor): Reference images, same shape.
        net (str): Backbone, 'alex', 'vgg' or 'squeeze'. Default: 'alex'.
        weights_path (str | None): Local torchvision backbone file. Default: None.
        random_backbone_for_tests (bool): Random backbone, meaningless scores. Default: False.
        device (str | torch.device | None): Where to compute. Default: None (the device of ``img``).
        crop_border (int): Pixels cropped from each edge first. Default: 0.
        allow_download (bool): Whether a missing backbone may be downloaded. Default: True.
        **kwargs: Ignored (other options of the validation block).

    Returns:
        Tensor: Shape (n,), one LPIPS distance per image, on the compute device.
    """
    if img.shape != img2.shape or img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(
            f'calculate_lpips_pt expects two (n, 3, h, w) tensors of the same shape, got '
            f'{tuple(img.shape)} and {tuple(img2.shape)}'
        )
    if crop_border:
        img = img[..., crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[..., crop_border:-crop_border, crop_border:-crop_border]
    device = img.device if device is None else torch.device(device)
    model = get_lpips_network(net, weights_path, random_backbone_for_tests, device, allow_download)
    with torch.no_grad():
        # LPIPS is defined on [-1, 1]; BasicSR tensors are [0, 1].
        x = img.to(device, torch.float32) * 2 - 1
        y = img2.to(device, torch.float32) * 2 - 1
        return model(x, y).flatten()


@METRIC_REGISTRY.register()
def calculate_lpips(
    img: np.ndarray,
    img2: np.ndarray,
    net: str = 'alex',
    weights_path: str | None = None,
    random_backbone_for_tests: bool = False,
    device: str | torch.device | None = None,
    crop_border: int = 0,
    input_order: str = 'HWC',
    allow_download: bool = True,
    **kwargs: Any,
) -> float:
    """LPIPS distance between two uint8 BGR images (BasicSR's metric convention); lower is better.

    The images are converted to RGB in [-1, 1], as the paper's evaluation does.

    Args:
        img (ndarray): The SR image, uint8 [0, 255], BGR, 3 channels.
        img2 (ndarray): The HR image, same shape.
        net (str): Backbone, 'alex' (the paper's), 'vgg' or 'squeeze'. Default: 'alex'.
        weights_path (str | None): Local torchvision backbone file (e.g. alexnet-owt-7be5be79.pth)
            for offline use. Default: None (torch hub cache, else download).
        random_backbone_for_tests (bool): Random backbone; the score is meaningless (a warning is
            logged). Default: False.
        device (str | torch.device | None): Where to compute. Default: None (CUDA if available).
        crop_border (int): Pixels cropped from each edge first. Default: 0.
        input_order (str): 'HWC' or 'CHW'. Default: 'HWC'.
        allow_download (bool): Whether a missing backbone may be downloaded; set false for
            offline runs. Default: True.
        **kwargs: Ignored (e.g. ``lq``, ``test_y_channel`` from the validation block).

    Returns:
        float: The LPIPS distance (0 for identical images).

    Raises:
        MissingWeightsError: The backbone weights are absent and cannot be downloaded.
        ValueError: Different shapes or not 3 channels.
    """
    if input_order not in ('HWC', 'CHW'):
        raise ValueError(f"calculate_lpips: input_order must be 'HWC' or 'CHW', got {input_order!r}")
    a = reorder_image(np.asarray(img), input_order=input_order)
    b = reorder_image(np.asarray(img2), input_order=input_order)
    if a.shape != b.shape or a.shape[2] != 3:
        raise ValueError(
            f'calculate_lpips expects two 3-channel images of the same shape, got {a.shape} and {b.shape} (HWC)'
        )

    def to_tensor(x: np.ndarray) -> torch.Tensor:
        # BGR -> RGB, HWC -> 1CHW, [0, 255] -> [0, 1] (calculate_lpips_pt maps to [-1, 1]).
        rgb = np.ascontiguousarray(x[..., ::-1].transpose(2, 0, 1), dtype=np.float32) / 255.0
        return torch.from_numpy(rgb)[None]

    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    score = calculate_lpips_pt(
        to_tensor(a), to_tensor(b), net, weights_path, random_backbone_for_tests, device, crop_border, allow_download
    )
    return float(score.item())
