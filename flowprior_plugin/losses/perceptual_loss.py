"""BasicSR's PerceptualLoss (VGG features, optional style loss) on a VGG built from torchvision.

Compatible with BasicSR 1.4.2's ``PerceptualLoss``: the same options, layer names
(``basicsr.archs.vgg_arch.NAMES``), input normalisation and loss value (its ``forward`` is
inherited). Only the VGG's ``features`` are built (no classifier), filled by
:mod:`flowprior_plugin.pretrained_weights` (``weights_path``, else BasicSR's ``VGG_PRETRAIN_PATH``,
the torch hub cache, torchvision's download) or randomly for tests (``random_weights_for_tests``),
and read out with torchvision's ``create_feature_extractor``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from basicsr.archs import vgg_arch
from basicsr.losses.basic_loss import PerceptualLoss
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from flowprior_plugin.errors import OptionError
from flowprior_plugin.pretrained_weights import existing_weights_path, load_backbone_state, load_pretrained_state

# A child of BasicSR's logger: warnings reach BasicSR's log file without initialising it here.
logger = logging.getLogger(f'basicsr.{__name__}')

# torchvision's layer configurations of VGG by name (the keys of torchvision.models.vgg.cfgs).
_VGG_CONFIGS = {'vgg11': 'A', 'vgg13': 'B', 'vgg16': 'D', 'vgg19': 'E'}
_CRITERIA = ('l1', 'l2', 'fro')
_DEFAULT_LAYER_WEIGHTS = {'conv5_4': 1.0}
# Fixed seed for the random VGG: reproducible test values, and fork_rng keeps the caller's stream.
_RANDOM_WEIGHTS_SEED = 0
# ImageNet statistics of torchvision's VGG weights, for inputs in [0, 1] (BasicSR's use_input_norm).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg_layer_names(vgg_type: str) -> list[str]:
    """BasicSR's names of the layers of a torchvision VGG's ``features``, in order.

    Args:
        vgg_type (str): 'vgg11', 'vgg13', 'vgg16', 'vgg19', or one of them with '_bn'.

    Returns:
        list[str]: e.g. ['conv1_1', 'relu1_1', 'conv1_2', ...]; name i is ``features[i]``.

    Raises:
        OptionError: Unknown ``vgg_type``.
    """
    base_type = vgg_type.replace('_bn', '')
    if base_type not in _VGG_CONFIGS or vgg_type not in (base_type, f'{base_type}_bn'):
        raise OptionError(
            f'VGGPerceptualLoss: unknown vgg_type {vgg_type!r}; use one of {sorted(_VGG_CONFIGS)} '
            "(optionally with '_bn')"
        )
    names = vgg_arch.NAMES[base_type]
    return vgg_arch.insert_bn(names) if vgg_type.endswith('_bn') else list(names)


class _VGGTrunk(nn.Module):
    """Only the ``features`` part of a torchvision VGG, with torchvision's parameter names.

    The classifier is never used by the loss; skipping it saves about 120M parameters (0.5 GB and
    seconds of random initialisation) per build.
    """

    def __init__(self, vgg_type: str) -> None:
        super().__init__()
        from torchvision.models import vgg as tv_vgg

        config = tv_vgg.cfgs[_VGG_CONFIGS[vgg_type.replace('_bn', '')]]
        self.features = tv_vgg.make_layers(config, batch_norm=vgg_type.endswith('_bn'))
        for module in self.features:
            if isinstance(module, nn.ReLU):
                # torchvision's ReLUs work in place and would overwrite a returned conv/bn output
                # (BasicSR clones each output for the same reason).
                module.inplace = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def init_like_torchvision(self) -> None:
        """torchvision's VGG initialisation (make_layers alone keeps PyTorch's defaults), so that
        random features keep a sensible scale through 16 conv layers."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


class VGGFeatures(nn.Module):
    """Frozen VGG features under BasicSR's layer names (what BasicSR's ``VGGFeatureExtractor`` returns).

    Args:
        trunk (nn.Module): A module whose ``features`` is a torchvision VGG's ``features``.
        layer_name_list (Iterable[str]): BasicSR layer names to return, e.g. ['conv5_4'].
        vgg_type (str): The trunk's VGG type, for the layer names. Default: 'vgg19'.
        use_input_norm (bool): Normalise inputs in [0, 1] with the ImageNet mean and std. Default: True.
        range_norm (bool): Map inputs from [-1, 1] to [0, 1] first. Default: False.
    """

    def __init__(
        self,
        trunk: nn.Module,
        layer_name_list: Iterable[str],
        vgg_type: str = 'vgg19',
        use_input_norm: bool = True,
        range_norm: bool = False,
    ) -> None:
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.names = vgg_layer_names(vgg_type)
        self.layer_name_list = sorted(layer_name_list, key=self.names.index)
        self.use_input_norm = use_input_norm
        self.range_norm = range_norm
        # The graph keeps the layers up to the last requested one and returns the requested outputs
        # in network order, the order BasicSR sums the per-layer losses in.
        self.vgg_net = create_feature_extractor(
            trunk, {f'features.{self.names.index(name)}': name for name in self.layer_name_list}
        )
        if use_input_norm:
            self.register_buffer('mean', torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer('std', torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def layer(self, name: str) -> nn.Module:
        """The trunk's layer called ``name`` (e.g. 'conv5_4'), if the graph kept it.

        Args:
            name (str): A BasicSR layer name.

        Returns:
            nn.Module: The layer (``features[i]`` of the torchvision VGG).
        """
        return self.vgg_net.get_submodule(f'features.{self.names.index(name)}')

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of ``x``.

        Args:
            x (Tensor): (n, 3, h, w) RGB in [0, 1] (in [-1, 1] with ``range_norm``).

        Returns:
            dict[str, Tensor]: Layer name -> its output, in network order.
        """
        if self.range_norm:
            x = (x + 1) / 2
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        return self.vgg_net(x)


def _build_trunk(vgg_type: str, weights_path: str | None, random_weights: bool) -> _VGGTrunk:
    if random_weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RANDOM_WEIGHTS_SEED)
            trunk = _VGGTrunk(vgg_type)
            trunk.init_like_torchvision()
        logger.warning(
            'VGGPerceptualLoss uses a RANDOM %s (random_weights_for_tests=True): the perceptual loss is '
            'meaningless, for tests only',
            vgg_type,
        )
        return trunk
    trunk = _VGGTrunk(vgg_type)
    state, source = load_pretrained_state(
        vgg_type, weights_path, user='VGGPerceptualLoss', option_place='in the loss options'
    )
    load_backbone_state(trunk, state, source, vgg_type)
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
        # PerceptualLoss.__init__ is skipped on purpose: it would build BasicSR's own
        # VGGFeatureExtractor (its weight lookup, the whole VGG). Only forward and _gram_mat are
        # inherited; they read the attributes set below.
        nn.Module.__init__(self)
        layer_weights = dict(_DEFAULT_LAYER_WEIGHTS if layer_weights is None else layer_weights)
        names = vgg_layer_names(vgg_type)
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
            weights_path = existing_weights_path(vgg_type, weights_path, 'VGGPerceptualLoss')

        self.perceptual_weight = perceptual_weight
        self.style_weight = style_weight
        self.layer_weights = layer_weights
        self.vgg = VGGFeatures(
            _build_trunk(vgg_type, weights_path, random_weights_for_tests),
            layer_weights,
            vgg_type=vgg_type,
            use_input_norm=use_input_norm,
            range_norm=range_norm,
        )
        self.criterion_type = criterion
        # 'l2' is the intended mean squared error (BasicSR 1.4.2 calls the nonexistent torch.nn.L2loss);
        # 'fro' is computed in forward with torch.norm.
        self.criterion = {'l1': nn.L1Loss(), 'l2': nn.MSELoss(), 'fro': None}[criterion]
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
