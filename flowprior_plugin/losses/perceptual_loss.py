"""BasicSR's PerceptualLoss with explicit, offline-safe VGG weight loading.

BasicSR 1.4.2's ``VGGFeatureExtractor`` gets its VGG like this: if the file
``VGG_PRETRAIN_PATH`` (experiments/pretrained_models/vgg19-dcbb9e9d.pth, relative to the working
directory) exists, ``torchvision.models.vgg.<type>(pretrained=False)`` plus that file; otherwise
``<type>(pretrained=True)``, which downloads into the torch hub cache. With torchvision 0.29 that
still works, but only through torchvision's deprecated ``pretrained=`` shim (two UserWarnings per
build), it builds the whole classifier (about 120M parameters the loss never uses), a failed
download surfaces as a bare ``URLError``, and the vgg19-only file is loaded into any ``vgg_type``
(a vgg16 loss crashes when that file is present). There is also no way to name a weights file or
to build a random VGG for tests.

``VGGPerceptualLoss`` keeps BasicSR's feature extractor, loss and forward, and replaces only where
the VGG trunk comes from: during construction it swaps ``basicsr.archs.vgg_arch``'s reference to
torchvision's VGG module for a stand-in that returns a trunk built and filled by us (see
``_basicsr_vgg_source``). Routes:

- default: BasicSR's own lookup order: ``VGG_PRETRAIN_PATH`` (vgg19 only), else the torch hub
  cache, else torchvision's download (the same file and URL as ``pretrained=True``). Absent and
  not downloadable: ``MissingWeightsError`` saying where to put the file.
- ``weights_path``: a local torchvision VGG state dict (full, or only its ``features.*`` keys).
- ``random_weights_for_tests``: a randomly initialised VGG (fixed seed), for tests only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from basicsr.archs import vgg_arch
from basicsr.losses.basic_loss import PerceptualLoss
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from flowprior_plugin.errors import CheckpointMismatchError, MissingWeightsError, OptionError

# A child of BasicSR's logger: warnings reach BasicSR's log file without initialising it here.
logger = logging.getLogger(f'basicsr.{__name__}')

# torchvision's layer configurations of VGG by name (the keys of torchvision.models.vgg.cfgs).
_VGG_CONFIGS = {'vgg11': 'A', 'vgg13': 'B', 'vgg16': 'D', 'vgg19': 'E'}
_CRITERIA = ('l1', 'l2', 'fro')
_DEFAULT_LAYER_WEIGHTS = {'conv5_4': 1.0}
# Fixed seed for the random VGG: reproducible test values, and fork_rng keeps the caller's stream.
_RANDOM_WEIGHTS_SEED = 0

# Construction patches module globals of basicsr.archs.vgg_arch; serialise it across threads.
_PATCH_LOCK = threading.Lock()


class _VGGTrunk(nn.Module):
    """Only the ``features`` part of a torchvision VGG, with torchvision's parameter names.

    BasicSR uses nothing but ``.features``; skipping the classifier saves about 120M parameters
    (0.5 GB and seconds of random initialisation) per build.
    """

    def __init__(self, vgg_type: str) -> None:
        super().__init__()
        from torchvision.models import vgg as tv_vgg

        config = tv_vgg.cfgs[_VGG_CONFIGS[vgg_type.replace('_bn', '')]]
        self.features = tv_vgg.make_layers(config, batch_norm=vgg_type.endswith('_bn'))


class _TorchvisionVGGStandIn:
    """Answers BasicSR's ``getattr(vgg, vgg_type)(pretrained=...)`` with our own trunk."""

    def __init__(self, build: Callable[[str], nn.Module]) -> None:
        self._build = build

    def __getattr__(self, vgg_type: str) -> Callable[..., nn.Module]:
        if vgg_type.startswith('_'):  # not a VGG builder (e.g. copy/pickle probing dunders)
            raise AttributeError(vgg_type)

        def builder(pretrained: bool = True, **kwargs: Any) -> nn.Module:
            return self._build(vgg_type)

        return builder


@contextlib.contextmanager
def _basicsr_vgg_source(build: Callable[[str], nn.Module]) -> Iterator[None]:
    """Make BasicSR's VGGFeatureExtractor take its VGG from ``build`` while the block runs.

    ``VGG_PRETRAIN_PATH`` is set to '' (never exists) so BasicSR takes its ``pretrained=True``
    branch and loads nothing itself; ``vgg`` (torchvision's module) becomes a stand-in whose
    builders call ``build``. Both globals are restored afterwards, even on errors.
    """
    with _PATCH_LOCK:
        saved = vgg_arch.vgg, vgg_arch.VGG_PRETRAIN_PATH
        vgg_arch.vgg = _TorchvisionVGGStandIn(build)
        vgg_arch.VGG_PRETRAIN_PATH = ''
        try:
            yield
        finally:
            vgg_arch.vgg, vgg_arch.VGG_PRETRAIN_PATH = saved


def _torchvision_weights(vgg_type: str) -> Any:
    """The weights torchvision's ``<vgg_type>(pretrained=True)`` loads (IMAGENET1K_V1)."""
    import torchvision

    return torchvision.models.get_model_weights(vgg_type).IMAGENET1K_V1


def vgg_hub_cache_path(vgg_type: str = 'vgg19') -> str:
    """Where torchvision keeps (and downloads) a VGG's ImageNet weights: ``<torch hub>/checkpoints/``.

    Args:
        vgg_type (str): e.g. 'vgg19'. Default: 'vgg19'.

    Returns:
        str: Absolute path of the cached file (it may not exist); follows ``$TORCH_HOME``.
    """
    filename = os.path.basename(_torchvision_weights(vgg_type).url)
    return os.path.join(torch.hub.get_dir(), 'checkpoints', filename)


def _load_trunk_state(trunk: _VGGTrunk, state: Mapping[str, torch.Tensor], source: str, vgg_type: str) -> None:
    """Load the ``features.*`` entries of a torchvision VGG state dict; other keys are ignored."""
    expected = trunk.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [
        f'{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})'
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or wrong:
        raise CheckpointMismatchError(
            f'{source} is not a torchvision {vgg_type} state dict: missing keys {missing[:5]}'
            f'{" ..." if len(missing) > 5 else ""}, wrong shapes {wrong[:5]}{" ..." if len(wrong) > 5 else ""}'
        )
    trunk.load_state_dict({k: state[k] for k in expected})


def _read_state_file(path: str) -> Mapping[str, torch.Tensor]:
    state = torch.load(path, map_location='cpu', weights_only=True)
    if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
        state = state['state_dict']
    return state


def _missing_default_weights(vgg_type: str, basicsr_path: str | None, error: Exception) -> MissingWeightsError:
    weights = _torchvision_weights(vgg_type)
    filename = os.path.basename(weights.url)
    places = f'{vgg_hub_cache_path(vgg_type)} (the torch hub cache; $TORCH_HOME moves it)'
    if basicsr_path is not None:
        places = (
            f"{os.path.abspath(basicsr_path)} (BasicSR's VGG_PRETRAIN_PATH, relative to the working "
            f'directory) or at {places}'
        )
    return MissingWeightsError(
        f'VGGPerceptualLoss needs the ImageNet {vgg_type} weights {filename}, which are not on this machine '
        f'and could not be downloaded ({error}). Put the file at {places}, or set '
        f'weights_path: /path/to/{filename} in the loss options (download: {weights.url})'
    )


def _init_like_torchvision(trunk: _VGGTrunk) -> None:
    """torchvision's VGG initialisation (make_layers alone keeps PyTorch's defaults), so that random
    features keep a sensible scale through 16 conv layers."""
    for module in trunk.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _build_trunk(vgg_type: str, weights_path: str | None, random_weights: bool, basicsr_path: str | None) -> _VGGTrunk:
    """Build the VGG trunk from the chosen source.

    ``basicsr_path`` is BasicSR's VGG_PRETRAIN_PATH as it was before construction patched it.
    """
    if random_weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RANDOM_WEIGHTS_SEED)
            trunk = _VGGTrunk(vgg_type)
            _init_like_torchvision(trunk)
        logger.warning(
            'VGGPerceptualLoss uses a RANDOM %s (random_weights_for_tests=True): the perceptual loss is '
            'meaningless, for tests only',
            vgg_type,
        )
        return trunk

    trunk = _VGGTrunk(vgg_type)
    if weights_path is not None:
        _load_trunk_state(trunk, _read_state_file(weights_path), weights_path, vgg_type)
        return trunk

    # BasicSR's own order: its fixed path first. That file is VGG19's, so only vgg19 looks there
    # (BasicSR would load it into any vgg_type and crash).
    basicsr_path = basicsr_path if vgg_type == 'vgg19' else None
    if basicsr_path and os.path.isfile(basicsr_path):
        _load_trunk_state(trunk, _read_state_file(basicsr_path), basicsr_path, vgg_type)
        return trunk
    cached = vgg_hub_cache_path(vgg_type)
    was_cached = os.path.isfile(cached)
    try:
        # The same call torchvision's pretrained=True makes: hub cache, else download there.
        state = _torchvision_weights(vgg_type).get_state_dict(progress=True, check_hash=True)
    except Exception as error:  # the download's failure modes vary (URLError, timeouts, hash)
        if was_cached or os.path.isfile(cached):
            raise
        raise _missing_default_weights(vgg_type, basicsr_path, error) from error
    _load_trunk_state(trunk, state, cached, vgg_type)
    return trunk


@LOSS_REGISTRY.register()
class VGGPerceptualLoss(PerceptualLoss):
    """BasicSR's PerceptualLoss (VGG features, optional style loss) with explicit weight sources.

    Forward is BasicSR's: ``forward(x, gt) -> (percep_loss, style_loss)``, either None when its
    weight is 0. Inputs are (n, 3, h, w) RGB in [0, 1] (or [-1, 1] with ``range_norm``).

    Args:
        layer_weights (dict[str, float] | None): VGG layer name -> weight, e.g. {'conv5_4': 1}
            (the layer's output before its ReLU). Default: None ({'conv5_4': 1.0}, the paper's).
        vgg_type (str): 'vgg11', 'vgg13', 'vgg16', 'vgg19', or one of them with '_bn'.
            Default: 'vgg19'.
        use_input_norm (bool): Normalise inputs with the ImageNet mean and std. Default: True.
        range_norm (bool): Map inputs from [-1, 1] to [0, 1] first. Default: False.
        perceptual_weight (float): Weight of the perceptual loss (0 disables it). Default: 1.0.
        style_weight (float): Weight of the Gram-matrix style loss (0 disables it). Default: 0.0.
        criterion (str): 'l1', 'l2' (mean squared error; BasicSR 1.4.2 crashes on it) or 'fro'.
            Default: 'l1'.
        weights_path (str | None): Local torchvision VGG state dict (e.g. vgg19-dcbb9e9d.pth).
            Default: None (BasicSR's VGG_PRETRAIN_PATH, else the torch hub cache, else download).
        random_weights_for_tests (bool): Randomly initialised VGG (logged warning); the loss is
            meaningless. Default: False.

    Raises:
        MissingWeightsError: ``weights_path`` does not exist, or the default weights are absent and
            cannot be downloaded.
        CheckpointMismatchError: The weights file is not a state dict of this ``vgg_type``.
        OptionError: Unknown ``vgg_type``, layer name or criterion, or both weight options.
    """

    def __init__(
        self,
        layer_weights: Mapping[str, float] | None = None,
        vgg_type: str = 'vgg19',
        use_input_norm: bool = True,
        range_norm: bool = False,
        perceptual_weight: float = 1.0,
        style_weight: float = 0.0,
        criterion: str = 'l1',
        weights_path: str | None = None,
        random_weights_for_tests: bool = False,
    ) -> None:
        layer_weights = dict(_DEFAULT_LAYER_WEIGHTS if layer_weights is None else layer_weights)
        base_type = vgg_type.replace('_bn', '')
        if base_type not in _VGG_CONFIGS or vgg_type not in (base_type, f'{base_type}_bn'):
            raise OptionError(
                f'VGGPerceptualLoss: unknown vgg_type {vgg_type!r}; use one of {sorted(_VGG_CONFIGS)} '
                "(optionally with '_bn')"
            )
        names = vgg_arch.NAMES[base_type]
        if vgg_type.endswith('_bn'):
            names = vgg_arch.insert_bn(names)
        unknown = [name for name in layer_weights if name not in names]
        if not layer_weights or unknown:
            raise OptionError(
                f'VGGPerceptualLoss: layer_weights names unknown {vgg_type} layers {unknown or "(none given)"}; '
                f'valid names: {names}'
            )
        if criterion not in _CRITERIA:
            raise OptionError(f'VGGPerceptualLoss: criterion must be one of {list(_CRITERIA)}, got {criterion!r}')
        if weights_path is not None and random_weights_for_tests:
            raise OptionError('VGGPerceptualLoss: give either weights_path or random_weights_for_tests, not both')
        if weights_path is not None:
            weights_path = os.path.expanduser(str(weights_path))
            if not os.path.isfile(weights_path):
                raise MissingWeightsError(
                    f'VGGPerceptualLoss weights_path {os.path.abspath(weights_path)} does not exist: it should be '
                    f'a torchvision {vgg_type} state dict such as '
                    f'{os.path.basename(_torchvision_weights(vgg_type).url)}'
                )

        # Read before _basicsr_vgg_source blanks it; the current value is used, so a project that
        # reassigns vgg_arch.VGG_PRETRAIN_PATH is respected as BasicSR would.
        basicsr_path = vgg_arch.VGG_PRETRAIN_PATH

        def build(requested_type: str) -> nn.Module:
            return _build_trunk(requested_type, weights_path, random_weights_for_tests, basicsr_path)

        with _basicsr_vgg_source(build):
            # 'l2' is passed to BasicSR as 'l1' because its l2 branch calls the nonexistent
            # torch.nn.L2loss; the criterion is replaced by the intended MSE just below.
            super().__init__(
                layer_weights=layer_weights,
                vgg_type=vgg_type,
                use_input_norm=use_input_norm,
                range_norm=range_norm,
                perceptual_weight=perceptual_weight,
                style_weight=style_weight,
                criterion='l1' if criterion == 'l2' else criterion,
            )
        if criterion == 'l2':
            self.criterion_type = 'l2'
            self.criterion = nn.MSELoss()
        self.weights_path = weights_path
        self.random_weights_for_tests = random_weights_for_tests

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        """Set training mode, but keep the frozen VGG in eval mode.

        A model calling ``.train()`` on its losses would otherwise switch the BatchNorm layers of
        the '_bn' VGG types to batch statistics, and the loss would change with the batch.

        Args:
            mode (bool): Training mode for the rest of the module. Default: True.

        Returns:
            VGGPerceptualLoss: self.
        """
        super().train(mode)
        self.vgg.eval()
        return self
