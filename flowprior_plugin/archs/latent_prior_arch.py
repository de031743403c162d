"""The learned prior's latent module (Tsao et al., CVPR 2024): predicts a flow's latents from the LR and z0.

One independent branch per latent level: a prior encoder for the level's z0, optionally an LR
encoder, a latent generator fusing the two, and a 1x1 conv head. The authors' released SRFlow-LP
and LINF-LP modules load directly (``param_key_g: prior_model``); their settings are in
``docs/learned_prior.md``.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn

from flowprior_plugin.checkpoints import CheckpointFormat, ReleaseLayout, shape_dim, state_dict_shapes
from flowprior_plugin.errors import CheckpointMismatchError, OptionError
from flowprior_plugin.flow_protocol import HRWindow
from flowprior_plugin.generators import build_generator, generator_default_out_channels
from flowprior_plugin.layers.dense_block import DenseBlock5

DEFAULT_GENERATOR = {'type': 'UNet', 'depth': 3, 'width': 64}
LR_ALIGNMENTS = ('window', 'release')


@dataclass(frozen=True)
class LatentWindow:
    """Which cells of a whole image's latent grid a latent tensor holds, per sample.

    A training window (:class:`~flowprior_plugin.flow_protocol.HRWindow`) decodes only part of
    the HR image its LR covers; its latents are cells ``offset .. offset + size`` of the grid the
    whole HR image would have (``full_size`` cells). The LR branch uses this to read the LR under
    the window, exactly as whole-image inference reads it.

    Attributes:
        full_size: Float tensor (B, 2): rows and columns of the whole image's latent grid.
        offset: Float tensor (B, 2): the window's first row and column in that grid (fractional
            when the HR window does not start on a latent cell).
    """

    full_size: Tensor
    offset: Tensor

    @classmethod
    def from_hr_window(cls, window: HRWindow, grid: Sequence[int]) -> LatentWindow:
        """The cells of one latent level: ``grid`` is the (h, w) of that level's latents for the
        window; its stride (HR pixels per cell) is ``window.size / grid``. A whole image's grid is
        ``ceil(H / stride)``, as flows that pad a partial last cell (LINF) make it."""
        stride = torch.tensor(
            [window.size[0] / grid[0], window.size[1] / grid[1]], dtype=torch.float64, device=window.full_size.device
        )
        full = torch.ceil(window.full_size.to(torch.float64) / stride - 1e-6)
        return cls(full_size=full, offset=window.offset.to(torch.float64) / stride)

    def sample(self, image: Tensor, grid: Sequence[int]) -> Tensor:
        """Bilinear samples of ``image`` (B, C, h, w), which covers the whole HR image, at the
        centres of the window's ``grid`` cells: what resizing ``image`` to the whole latent grid
        (``F.interpolate``, bilinear, align_corners False) and cropping the window would give."""

        def axis(dim: int, n: int) -> Tensor:
            cells = torch.arange(n, dtype=torch.float64, device=image.device)
            # grid_sample's align_corners=False coordinate of a cell centre of the whole grid;
            # border padding clamps as F.interpolate does at the image edge.
            return 2 * (self.offset[:, dim : dim + 1] + cells + 0.5) / self.full_size[:, dim : dim + 1] - 1

        ys, xs = axis(0, int(grid[0])), axis(1, int(grid[1]))  # (B, h), (B, w)
        coords = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)
        coords = coords.to(image.dtype)
        return F.grid_sample(image, coords, mode='bilinear', padding_mode='border', align_corners=False)


# What each placeholder of the key templates below matches.
_KEY_FIELDS = {
    'level': r'\d+',
    'index': r'\d+',
    'conv': r'conv[1-5]\.(?:weight|bias)',
    'param': r'weight|bias',
    'rest': r'.+',
}


def _rename_rule(source: str, target: str) -> tuple[re.Pattern, str]:
    """A key rename rule from two templates such as ``'inc{level}.double_conv.{rest}'``."""
    parts = re.split(r'\{(\w+)\}', source)  # literal, field, literal, field, ...
    pattern = ''.join(re.escape(p) if i % 2 == 0 else f'(?P<{p}>{_KEY_FIELDS[p]})' for i, p in enumerate(parts))
    return re.compile(f'^{pattern}$'), re.sub(r'\{(\w+)\}', r'\\g<\1>', target)


def _rename_rules(pairs: Sequence[tuple[str, str]], to_release: bool = False) -> tuple[tuple[re.Pattern, str], ...]:
    """Rules from (released template, our template) pairs, in either direction."""
    return tuple(
        _rename_rule(ours, released) if to_release else _rename_rule(released, ours) for released, ours in pairs
    )


# Released SRFlow-LP key -> our key. Pure prefix renames: the blocks themselves are laid out alike.
_SRFLOW_LP_KEYS = (
    ('input_proj{level}.{conv}', 'levels.{level}.prior_encoder.{conv}'),
    ('inc{level}.double_conv.{rest}', 'levels.{level}.generator.stem.{rest}'),
    (
        'down_layers{level}.{index}.maxpool_conv.1.double_conv.{rest}',
        'levels.{level}.generator.downs.{index}.conv.{rest}',
    ),
    ('up_layers{level}.{index}.conv.double_conv.{rest}', 'levels.{level}.generator.ups.{index}.conv.{rest}'),
    ('outc{level}.conv.{param}', 'levels.{level}.head.{param}'),
)
_RELEASE_TO_OURS = _rename_rules(_SRFLOW_LP_KEYS)
_OURS_TO_RELEASE = _rename_rules(_SRFLOW_LP_KEYS, to_release=True)
_RELEASE_KEY = re.compile(r'^(?:module\.)?input_proj\d+\.conv1\.weight$')

# Released LINF-LP key -> our key (one latent level, so the release's keys carry no level index).
_LINF_LP_KEYS = (
    ('input_proj.{conv}', 'levels.0.prior_encoder.{conv}'),
    ('lr_proj.0.{param}', 'levels.0.lr_encoder.0.{param}'),
    ('lr_proj.2.{conv}', 'levels.0.lr_encoder.2.{conv}'),
    ('inc.double_conv.{rest}', 'levels.0.generator.stem.{rest}'),
    ('down_layers.{index}.maxpool_conv.1.double_conv.{rest}', 'levels.0.generator.downs.{index}.conv.{rest}'),
    ('up_layers.{index}.conv.double_conv.{rest}', 'levels.0.generator.ups.{index}.conv.{rest}'),
    ('outc.conv.{param}', 'levels.0.head.{param}'),
)
_LINF_RELEASE_TO_OURS = _rename_rules(_LINF_LP_KEYS)
_LINF_OURS_TO_RELEASE = _rename_rules(_LINF_LP_KEYS, to_release=True)
_LINF_RELEASE_KEY = re.compile(r'^(?:module\.)?(?:input_proj\.conv1\.weight|lr_proj\.0\.weight)$')
# The released LINF-LP LR encoder: a 3x3 conv with stride 3 on the LR image itself.
LINF_LP_LR_ENCODER_STRIDE = 3


def _rename(keys: Mapping[str, Any], rules: Sequence[tuple[re.Pattern, str]], what: str) -> OrderedDict:
    out = OrderedDict()
    unknown = []
    for key, value in keys.items():
        for pattern, repl in rules:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointMismatchError(
            f'{what}: {len(unknown)} key(s) have no counterpart, e.g. {", ".join(unknown[:3])}'
        )
    return out


def _release_state_dict(obj: Mapping) -> Mapping | None:
    """The bare state dict inside a released file or its ``{'name', 'args', 'sd'}`` part, else None."""
    if isinstance(obj.get('prior_model'), Mapping) and isinstance(obj['prior_model'].get('sd'), Mapping):
        return obj['prior_model']['sd']
    if isinstance(obj.get('sd'), Mapping):
        return obj['sd']
    return None


def is_linf_lp_release(obj: Any) -> bool:
    """Whether ``obj`` is the authors' LINF-LP latent module or a part of it.

    Recognised: the whole file (``{'prior_model': {...}}``), its inner ``{'name', 'args', 'sd'}``
    dict, or the bare released state dict (keys such as ``input_proj.conv1.weight``,
    ``lr_proj.0.weight``: no level index, unlike SRFlow-LP).
    """
    if not isinstance(obj, Mapping):
        return False
    inner = _release_state_dict(obj)
    keys = inner if inner is not None else obj
    return any(isinstance(k, str) and _LINF_RELEASE_KEY.match(k) for k in keys)


def is_srflow_lp_release(obj: Any) -> bool:
    """Whether ``obj`` is the authors' SRFlow-LP checkpoint or a part of it.

    Recognised: the whole file (``{'prior_model': {...}}``), its inner ``{'name', 'args', 'sd'}``
    dict, or the bare released state dict (keys such as ``input_proj0.conv1.weight``). A file in
    the same layout with LINF-LP keys is not (see :func:`is_linf_lp_release`).
    """
    if not isinstance(obj, Mapping) or is_linf_lp_release(obj):
        return False
    if _release_state_dict(obj) is not None:
        return True
    return any(isinstance(k, str) and _RELEASE_KEY.match(k) for k in obj)


def _unwrap_release(released: Mapping) -> tuple[Mapping[str, Tensor], dict]:
    """(bare state dict, header dict with 'name' and 'args' where the file has them)."""
    header: dict = {}
    if isinstance(released.get('prior_model'), Mapping):
        released = released['prior_model']
    if isinstance(released.get('sd'), Mapping):
        header = {k: v for k, v in released.items() if k != 'sd'}
        released = released['sd']
    return {(k[7:] if k.startswith('module.') else k): v for k, v in released.items()}, header


def _convert_unet_release(released: Mapping, family: str, table: Sequence[tuple[re.Pattern, str]]) -> OrderedDict:
    """Unwrap a released latent-module file of ``family`` ('SRFlow-LP', 'LINF-LP') already
    recognised as one, check that it holds the released bilinear UNet, and rename its keys by ``table``.

    Raises:
        CheckpointMismatchError: Another latent module, a UNet with transposed-conv upsampling,
            or keys ``table`` does not know.
    """
    sd, header = _unwrap_release(released)
    name = header.get('name', 'unet')
    args = header.get('args') or {}
    if name != 'unet':
        raise CheckpointMismatchError(
            f'the {family} checkpoint holds a {name!r} latent module; only the released "unet" is supported'
        )
    if isinstance(args, Mapping) and args.get('bilinear', True) is False:
        raise CheckpointMismatchError(
            f'the {family} checkpoint holds a UNet with transposed-conv upsampling (bilinear: False); '
            'only the released bilinear UNet is supported'
        )
    return _rename(sd, table, f'{family} checkpoint')


def convert_srflow_lp_state_dict(released: Mapping) -> OrderedDict:
    """Rename the authors' released SRFlow-LP weights to :class:`LatentPriorNet` keys.

    The result loads into ``LatentPriorNet(latent_channels=[...], lr_encoder=False,
    generator={'type': 'UNet', 'depth': d, 'width': w})`` with the file's channels, depth and
    width (the release: [6, 96], 3, 64; ``prior_features`` equals the width).

    Args:
        released: The whole loaded file (``{'prior_model': {'name', 'args', 'sd'}}``), the inner
            ``prior_model`` dict, or the bare state dict. Not modified.

    Returns:
        Our state dict (same tensors, new keys, release order kept).

    Raises:
        CheckpointMismatchError: The file is not a bilinear UNet SRFlow-LP module, or holds keys
            this conversion does not know.
    """
    if not is_srflow_lp_release(released):
        raise CheckpointMismatchError(
            'not an SRFlow-LP checkpoint: expected {"prior_model": {"name", "args", "sd"}} or keys like '
            'input_proj0.conv1.weight'
        )
    return _convert_unet_release(released, 'SRFlow-LP', _RELEASE_TO_OURS)


def convert_linf_lp_state_dict(released: Mapping) -> OrderedDict:
    """Rename the authors' released LINF-LP latent module to :class:`LatentPriorNet` keys.

    The result loads into ``LatentPriorNet(latent_channels=[27], prior_features=32,
    lr_features=32, lr_encoder=True, lr_encoder_stride=3, generator={'type': 'UNet', 'depth': 3,
    'width': 64})`` (see :data:`LINF_LP_RELEASE_OPTIONS`).

    Args:
        released: The whole loaded file (``{'prior_model': {'name', 'args', 'sd'}}``), the inner
            ``prior_model`` dict, or the bare state dict. Not modified.

    Returns:
        Our state dict (same tensors, new keys, release order kept).

    Raises:
        CheckpointMismatchError: The file is not a bilinear UNet LINF-LP module, or holds keys
            this conversion does not know.
    """
    if not is_linf_lp_release(released):
        raise CheckpointMismatchError(
            'not a LINF-LP checkpoint: expected {"prior_model": {"name", "args", "sd"}} with keys like '
            'input_proj.conv1.weight and lr_proj.0.weight'
        )
    return _convert_unet_release(released, 'LINF-LP', _LINF_RELEASE_TO_OURS)


def to_linf_lp_state_dict(state_dict: Mapping[str, Tensor]) -> OrderedDict:
    """Rename single-level :class:`LatentPriorNet` weights (UNet, LR encoder) to the released
    LINF-LP keys; the inverse of :func:`convert_linf_lp_state_dict`.

    Raises:
        CheckpointMismatchError: The weights have parts the release cannot hold (a second latent
            level, a generator other than UNet, a UNet output projection).
    """
    return _rename(state_dict, _LINF_OURS_TO_RELEASE, 'LatentPriorNet weights in the LINF-LP layout')


# Options of LatentPriorNet that load the released LINF-LP module.
LINF_LP_RELEASE_OPTIONS: dict[str, Any] = {
    'latent_channels': [27],
    'generator': {'type': 'UNet', 'depth': 3, 'width': 64},
    'prior_features': 32,
    'lr_encoder': True,
    'lr_features': 32,
    'lr_encoder_stride': LINF_LP_LR_ENCODER_STRIDE,
}


def to_srflow_lp_state_dict(state_dict: Mapping[str, Tensor]) -> OrderedDict:
    """Rename :class:`LatentPriorNet` weights (``lr_encoder: false``, UNet) to the released keys.

    The inverse of :func:`convert_srflow_lp_state_dict`, for tools that read the authors' format.

    Raises:
        CheckpointMismatchError: The weights have parts the release cannot hold (an LR encoder,
            a generator other than UNet, a UNet output projection).
    """
    return _rename(state_dict, _OURS_TO_RELEASE, 'LatentPriorNet weights in the SRFlow-LP layout')


def _level_indices(keys: Mapping[str, Any]) -> list[int]:
    found = {int(m.group(1)) for k in keys if (m := re.match(r'levels\.(\d+)\.head\.weight$', str(k)))}
    return sorted(found)


def _describe_generator(keys: Mapping[str, tuple[int, ...]]) -> str:
    """The first level's generator: its type and the sizes its keys show."""
    gen = [k[len('levels.0.generator.') :] for k in keys if k.startswith('levels.0.generator.')]
    if any(k.startswith('stem.') for k in gen):
        depth = len({k.split('.')[1] for k in gen if k.startswith('downs.')})
        return f'UNet (depth {depth}, width {shape_dim(keys, "levels.0.generator.stem.0.weight", 0)})'
    if any(k.startswith('stages.') for k in gen):
        blocks = len({'.'.join(k.split('.')[1:3]) for k in gen if k.startswith('stages.')})
        return f'SwinT ({blocks} blocks, embed_dim {shape_dim(keys, "levels.0.generator.norm.weight", 0)})'
    if any(k.startswith('blocks.') for k in gen):
        return f'EDSRBaseline ({len({k.split(".")[1] for k in gen if k.startswith("blocks.")})} blocks)'
    return 'unrecognised'


def read_latent_prior_architecture(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`LatentPriorNet` architecture a state dict (our layout) holds, from its keys and shapes.

    Returns:
        dict: latent_channels (tuple, per level), prior_features, lr_encoder (bool), lr_features
        (None without an LR encoder) and generator (its type and sizes, a phrase); every field is
        None when the state dict holds no latent levels.
    """
    keys = state_dict_shapes(state_dict)
    arch: dict[str, Any] = dict.fromkeys(
        ('latent_channels', 'prior_features', 'lr_encoder', 'lr_features', 'generator')
    )
    levels = _level_indices(keys)
    if not levels:
        return arch
    arch['latent_channels'] = tuple(shape_dim(keys, f'levels.{i}.head.weight', 0) for i in levels)
    arch['prior_features'] = shape_dim(keys, 'levels.0.prior_encoder.conv5.weight', 0)
    arch['lr_encoder'] = any(k.startswith('levels.0.lr_encoder.') for k in keys)
    arch['lr_features'] = shape_dim(keys, 'levels.0.lr_encoder.2.conv5.weight', 0)
    arch['generator'] = _describe_generator(keys)
    return arch


def describe_latent_prior_architecture(arch: Mapping[str, Any], differ: Sequence[str] = ()) -> str:
    """One phrase for an architecture from :func:`read_latent_prior_architecture`, e.g. "2 latent
    level(s) with channels [6, 96], prior features 64, LR encoder off, generator UNet (depth 3,
    width 64)"."""

    def size(value: int | None) -> str:
        return '?' if value is None else str(value)

    channels = ', '.join(size(c) for c in arch.get('latent_channels') or ())
    parts = [f'{len(arch.get("latent_channels") or ())} latent level(s) with channels [{channels}]']
    parts.append(f'prior features {size(arch.get("prior_features"))}')
    if arch.get('lr_encoder'):
        parts.append(f'LR encoder on ({size(arch.get("lr_features"))} features)')
    else:
        parts.append('LR encoder off')
    parts.append(f'generator {arch.get("generator")}')
    return ', '.join(parts)


def describe_state_dict(state_dict: Mapping[str, Any]) -> str:
    """One line saying what a :class:`LatentPriorNet` state dict holds (for the converters' reports)."""
    arch = read_latent_prior_architecture(state_dict)
    if arch['latent_channels'] is None:
        some = ', '.join(str(k) for k in list(state_dict)[:3])
        return f'no LatentPriorNet weights (keys like {some})'
    return describe_latent_prior_architecture(arch)


def _latent_prior_fix(theirs: Mapping[str, Any], differ: Sequence[str]) -> str:
    hints = []
    if 'lr_encoder' in differ:
        if theirs['lr_encoder']:
            hints.append('set lr_encoder: true in the network options (the file has an LR encoder)')
        else:
            hints.append('set lr_encoder: false in the network options (the file has no LR encoder)')
    if 'latent_channels' in differ:
        hints.append('use the flow these weights were trained with (the latent channels come from the flow)')
    if not hints:
        hints.append('make prior_features, lr_features and generator match the file')
    return f'. To fix: {"; ".join(hints)}.'


def _linf_lp_requirement(net: nn.Module) -> str | None:
    # The stride is not in the file; with another stride the same tensors would load silently and
    # compute something else.
    if net.use_lr_encoder and net.lr_encoder_stride != LINF_LP_LR_ENCODER_STRIDE:
        return (
            f'needs lr_encoder_stride: {LINF_LP_LR_ENCODER_STRIDE} (its LR encoder convolves the LR image with '
            f'stride {LINF_LP_LR_ENCODER_STRIDE}); the options build lr_encoder_stride: {net.lr_encoder_stride}. '
            f'To fix: set lr_encoder_stride: {LINF_LP_LR_ENCODER_STRIDE} in the network options.'
        )
    return None


# The authors' files (the whole file, its ``prior_model`` dict as BasicSR's loader hands it over
# with ``param_key_g: prior_model``, or the bare released state dict) are renamed to our keys.
LINF_LP_RELEASE = ReleaseLayout(
    "the authors' LINF-LP checkpoint", is_linf_lp_release, convert_linf_lp_state_dict, _linf_lp_requirement
)
SRFLOW_LP_RELEASE = ReleaseLayout(
    "the authors' SRFlow-LP checkpoint", is_srflow_lp_release, convert_srflow_lp_state_dict
)
LATENT_PRIOR_CHECKPOINT_FORMAT = CheckpointFormat(
    family='LatentPriorNet',
    read_architecture=read_latent_prior_architecture,
    describe=describe_latent_prior_architecture,
    releases=(LINF_LP_RELEASE, SRFLOW_LP_RELEASE),
    mismatch_fix=_latent_prior_fix,
)


class _LevelBranch(nn.Module):
    """Encoders, generator and head of one latent level."""

    def __init__(
        self,
        channels: int,
        generator: dict,
        generator_out: int,
        prior_features: int,
        lr_encoder: bool,
        lr_features: int,
        in_nc: int,
        level: int,
        lr_encoder_stride: int = 1,
        lr_alignment: str = 'window',
    ) -> None:
        super().__init__()
        self.prior_encoder = DenseBlock5(channels, prior_features, growth=prior_features)
        self.lr_encoder_stride = lr_encoder_stride
        self.lr_alignment = lr_alignment
        if lr_encoder:
            # As the authors' LINF-LP LR encoder: conv to the level's width, then a dense block.
            # Stride 1 resizes the LR to the level's grid first; a larger stride convolves the LR
            # itself (padding 1, as released) and resizes the features afterwards.
            self.lr_encoder = nn.Sequential(
                nn.Conv2d(in_nc, channels, 3, stride=lr_encoder_stride, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
                DenseBlock5(channels, lr_features, growth=lr_features),
            )
        else:
            self.lr_encoder = None
        fused = prior_features + (lr_features if lr_encoder else 0)
        self.generator = build_generator(generator, fused, generator_out, option_name=f'generator (level {level})')
        self.head = nn.Conv2d(generator_out, channels, 1)

    def forward(self, lq: Tensor | None, z: Tensor, window: LatentWindow | None = None) -> Tensor:
        features = self.prior_encoder(z)
        if self.lr_encoder is not None:
            features = torch.cat([features, self._lr_features(lq, z.shape[-2:], window)], dim=1)
        return self.head(self.generator(features))

    def _lr_features(self, lq: Tensor, grid: Sequence[int], window: LatentWindow | None) -> Tensor:
        """LR features on the latent grid. The LR covers the whole HR image; with ``window`` (and
        ``lr_alignment: window``) the features are those under the window's cells."""
        if self.lr_alignment == 'release':
            window = None  # the whole LR squeezed onto the window's grid, as the LINF-LP release trains
        # align_corners False: the LR and latent grids cover the same image area.
        if self.lr_encoder_stride == 1:
            if window is not None:
                return self.lr_encoder(window.sample(lq, grid))
            return self.lr_encoder(F.interpolate(lq, size=tuple(grid), mode='bilinear', align_corners=False))
        # The released LINF-LP order (as its released outputs require): strided conv on the LR,
        # LeakyReLU, dense block, then a bilinear resize only when the grids differ.
        lr_features = self.lr_encoder(lq)
        if window is not None:
            return window.sample(lr_features, grid)
        if lr_features.shape[-2:] != tuple(grid):
            lr_features = F.interpolate(lr_features, size=tuple(grid), mode='bilinear', align_corners=False)
        return lr_features


@ARCH_REGISTRY.register()
class LatentPriorNet(nn.Module):
    """The learned prior's latent module G: z_hat = G(lq, z0), one branch per latent level.

    Each level i: ``levels.{i}.prior_encoder`` (dense block, C_i -> ``prior_features``);
    ``levels.{i}.lr_encoder`` when enabled (the LR bilinearly resized to the level's grid ->
    3x3 conv to C_i -> LeakyReLU 0.2 -> dense block -> ``lr_features``; with
    ``lr_encoder_stride`` s > 1 the conv has stride s and reads the LR itself, and the features are
    resized to the level's grid afterwards, as in the released LINF-LP); the concatenated
    [prior, LR] features go through ``levels.{i}.generator``, then ``levels.{i}.head`` (1x1 conv)
    back to C_i.

    Args:
        latent_channels (list[int]): Channels of each latent level, in the flow's latent order.
            The model fills it in from the flow's ``latent_channels()``; required when the
            network is built by hand (SRFlow 4X: [6, 96]).
        generator (dict): ``type`` names a registered generator (UNet, EDSRBaseline, SwinT), the
            other keys are its options; an optional ``out_channels`` sets the generator's output
            width (otherwise the generator's own choice, e.g. the UNet's width).
            Default: {'type': 'UNet', 'depth': 3, 'width': 64}.
        prior_features (int): Output (and growth) width of each prior encoder. Default: 64.
        lr_encoder (bool): Add the LR-image encoder. The released SRFlow-LP has none (set
            ``false`` to load it). Default: True.
        lr_features (int): Output (and growth) width of each LR encoder. Default: 64.
        in_nc (int): Channels of the LR image. Default: 3.
        lr_encoder_stride (int): Stride of the LR encoder's first conv. 1 (the default) resizes the
            LR to each level's grid before the conv; the released LINF-LP uses 3 (its 3x3-patch
            latent grid), convolving the LR image itself. Default: 1.
        lr_alignment (str): How the LR branch meets latents of a training window (an HR window
            of the HR crop the LR covers, as LINF-LP trains). ``window``: the LR features under the
            window's cells, exactly what whole-image inference gives those cells. ``release``: the
            whole crop's LR features resized onto the window's grid, as the LINF-LP release trains
            (at test time, on whole images, both are the same). Without windows it changes
            nothing. Default: 'window'.
    """

    checkpoint_format = LATENT_PRIOR_CHECKPOINT_FORMAT

    def __init__(
        self,
        latent_channels: Sequence[int] | None = None,
        generator: dict | None = None,
        prior_features: int = 64,
        lr_encoder: bool = True,
        lr_features: int = 64,
        in_nc: int = 3,
        lr_encoder_stride: int = 1,
        lr_alignment: str = 'window',
    ) -> None:
        super().__init__()
        if lr_alignment not in LR_ALIGNMENTS:
            raise OptionError(
                f'LatentPriorNet: lr_alignment must be one of {", ".join(LR_ALIGNMENTS)}, got {lr_alignment!r}'
            )
        if not latent_channels:
            raise OptionError(
                'LatentPriorNet: latent_channels is missing or empty. The learned-prior model fills it '
                "in from the flow's latent_channels(); when building the network yourself pass the "
                'channels of each latent level, e.g. latent_channels: [6, 96] for SRFlow 4X'
            )
        if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in latent_channels):
            raise OptionError(f'LatentPriorNet: latent_channels must be positive integers, got {list(latent_channels)}')
        for name, value in (
            ('prior_features', prior_features),
            ('lr_features', lr_features),
            ('in_nc', in_nc),
            ('lr_encoder_stride', lr_encoder_stride),
        ):
            if not isinstance(value, int) or value < 1:
                raise OptionError(f'LatentPriorNet: {name} must be a positive integer, got {value!r}')
        gen_opt = dict(DEFAULT_GENERATOR if generator is None else generator)
        generator_out = gen_opt.pop('out_channels', None)
        if generator_out is None:
            generator_out = generator_default_out_channels(gen_opt)
        self.latent_channels = list(latent_channels)
        self.use_lr_encoder = bool(lr_encoder)
        self.in_nc = in_nc
        self.lr_encoder_stride = lr_encoder_stride
        self.lr_alignment = lr_alignment
        self.levels = nn.ModuleList(
            _LevelBranch(
                c,
                gen_opt,
                generator_out,
                prior_features,
                self.use_lr_encoder,
                lr_features,
                in_nc,
                i,
                lr_encoder_stride,
                lr_alignment,
            )
            for i, c in enumerate(self.latent_channels)
        )

    def small_training_grids(self, z0: Sequence[Tensor]) -> list[str]:
        """One line per latent level whose grid is smaller than its generator learns from
        (``min_training_grid``); empty when every level is large enough."""
        found = []
        for i, (branch, z) in enumerate(zip(self.levels, z0)):
            needed = int(getattr(branch.generator, 'min_training_grid', 1))
            h, w = z.shape[-2:]
            if min(h, w) < needed:
                option = getattr(branch.generator, 'min_grid_option', None)
                lower = f' or lower generator.{option}' if option else ''
                found.append(
                    f'latent level {i} is a {h}x{w} grid, but the {type(branch.generator).__name__} generator needs '
                    f'at least {needed}x{needed} (x{math.ceil(needed / min(h, w))} larger training crops{lower})'
                )
        return found

    def _check_inputs(self, lq: Tensor | None, z0: Sequence[Tensor]) -> None:
        if not isinstance(z0, (list, tuple)):
            raise ValueError(f'LatentPriorNet expects z0 as a list of latent tensors, got {type(z0).__name__}')
        if len(z0) != len(self.levels):
            raise ValueError(
                f'LatentPriorNet was built for {len(self.levels)} latent level(s) with channels '
                f'{self.latent_channels}, but got {len(z0)} level(s)'
            )
        for i, (z, c) in enumerate(zip(z0, self.latent_channels)):
            if not isinstance(z, Tensor) or z.dim() != 4:
                got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
                raise ValueError(f'latent level {i}: expected a (B, {c}, H, W) tensor, got {got}')
            if z.shape[1] != c:
                raise ValueError(f'latent level {i}: expected {c} channels, got {z.shape[1]} (shape {tuple(z.shape)})')
            if z.shape[0] != z0[0].shape[0]:
                raise ValueError(f'latent level {i}: batch size {z.shape[0]} differs from level 0 ({z0[0].shape[0]})')
        if self.use_lr_encoder:
            if not isinstance(lq, Tensor) or lq.dim() != 4:
                got = tuple(lq.shape) if isinstance(lq, Tensor) else type(lq).__name__
                raise ValueError(
                    f'LatentPriorNet with lr_encoder: expected the LR image (B, {self.in_nc}, h, w), got {got}'
                )
            if lq.shape[1] != self.in_nc or lq.shape[0] != z0[0].shape[0]:
                raise ValueError(f'LR image: expected (B={z0[0].shape[0]}, {self.in_nc}, h, w), got {tuple(lq.shape)}')

    def forward(
        self, lq: Tensor | None, z0: Sequence[Tensor], windows: Sequence[LatentWindow] | None = None
    ) -> list[Tensor]:
        """Predict the latents.

        Args:
            lq: The LR image (B, in_nc, h, w). Unused (may be None) with ``lr_encoder: false``.
            z0: The initial prior, one (B, C_i, H_i, W_i) tensor per level.
            windows: For latents of training windows of larger HR images, one
                :class:`LatentWindow` per level (see ``lr_alignment``). Default: None (``z0``
                covers the whole HR image the LR covers).

        Returns:
            The predicted latents, same shapes as ``z0``.

        Raises:
            ValueError: Wrong number of levels, channels, batch sizes, or a missing LR image.
        """
        self._check_inputs(lq, z0)
        if windows is None:
            windows = [None] * len(self.levels)
        elif len(windows) != len(self.levels):
            raise ValueError(f'LatentPriorNet: got {len(windows)} latent windows for {len(self.levels)} level(s)')
        return [branch(lq, z, window) for branch, z, window in zip(self.levels, z0, windows)]
