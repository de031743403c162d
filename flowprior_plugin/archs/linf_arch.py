"""LINF (Yao et al., CVPR 2023): Local Implicit Normalizing Flow for arbitrary-scale super-resolution.

Keys and shapes are those of the released checkpoints: ``edsr-baseline-linf.pth``, ``rrdb-linf.pth``
and the 3x3-patch (LINF-LP) files load with ``strict=True``. The flow models the HR residual (HR
minus the bilinearly upsampled LR) per query location, in [-1, 1]. Latent layout and padding,
windows, the initial prior and the likelihood: ``docs/linf.md``.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn

from flowprior_plugin.archs.base_flow_net import BaseFlowNet
from flowprior_plugin.checkpoints import CheckpointFormat, ReleaseLayout, shape_dim, state_dict_shapes
from flowprior_plugin.errors import CheckpointMismatchError
from flowprior_plugin.flow_protocol import FlowCondition, HRWindow, Latents, OutputSize, output_hw
from flowprior_plugin.layers import linf_geometry
from flowprior_plugin.layers.edsr import EDSRBaselineEncoder
from flowprior_plugin.layers.linf_geometry import bilinear_base
from flowprior_plugin.layers.local_fourier import local_fourier_features
from flowprior_plugin.layers.pointwise_flow import InvertibleLinear, PointwiseFlow
from flowprior_plugin.layers.rrdb_encoder import RRDBEncoder
from flowprior_plugin.tiling import TileInputs

ENCODERS = ('edsr_baseline', 'rrdb')
DEQUANTIZATIONS = ('none', 'uniform')
# Default encoder sizes: those of the released checkpoints.
_ENCODER_DEFAULTS: dict[str, dict[str, int]] = {
    'edsr_baseline': dict(nf=64, num_blocks=16),
    'rrdb': dict(nf=64, nb=23, gc=32),
}
# The released checkpoints and the constructor arguments that load them.
LINF_OFFICIAL_CONFIGS: dict[str, dict[str, Any]] = {
    'edsr-baseline-linf': dict(encoder='edsr_baseline', patch_size=1),
    'rrdb-linf': dict(encoder='rrdb', patch_size=1),
    'edsr-baseline-linf-patch': dict(encoder='edsr_baseline', patch_size=3),
    'rrdb-linf-patch': dict(encoder='rrdb', patch_size=3),
}
# Images are normalised to [-1, 1] inside the network: (x - 0.5) / 0.5.
_DATA_MEAN = 0.5
_DATA_STD = 0.5


@dataclass
class LINFCondition(FlowCondition):
    """Everything LINF computes from the LR alone (see :meth:`LINFNet.condition`).

    Attributes:
        lr: The LR image in the network's range [-1, 1] (B, 3, h, w), for the bilinear base.
        coef: Amplitude map (B, hidden_dim, h, w).
        freq: Frequency map (B, hidden_dim, h, w).
    """

    lr: Tensor
    coef: Tensor
    freq: Tensor
    # The flow parameters of the last query grid asked for, as (key, params): see
    # LINFNet.params_for. One entry only, so tiles of one image never pile up their grids.
    params_cache: tuple[tuple, Tensor] | None = field(default=None, repr=False, compare=False)


def to_model_range(x: Tensor) -> Tensor:
    """[0, 1] images -> the network's [-1, 1] range."""
    return (x - _DATA_MEAN) / _DATA_STD


def from_model_range(x: Tensor) -> Tensor:
    """The network's [-1, 1] range -> [0, 1] images (not clamped)."""
    return x * _DATA_STD + _DATA_MEAN


def official_linf_options(name: str) -> dict[str, Any]:
    """Constructor arguments of :class:`LINFNet` for a released checkpoint (see ``LINF_OFFICIAL_CONFIGS``)."""
    if name not in LINF_OFFICIAL_CONFIGS:
        raise KeyError(f'unknown LINF checkpoint {name!r}; known: {", ".join(LINF_OFFICIAL_CONFIGS)}')
    return dict(LINF_OFFICIAL_CONFIGS[name])


# Architecture field -> the LINFNet option that sets it (for the "to load it, set ..." hint).
_OPTION_OF = {
    'encoder': 'encoder',
    'patch_size': 'patch_size',
    'hidden_dim': 'hidden_dim',
    'flow_layers': 'flow_layers',
    'mlp_layers': 'mlp_layers',
    'in_nc': 'in_nc',
}


def is_linf_release(obj: Any) -> bool:
    """Whether ``obj`` is a released LINF checkpoint (``{'model': {'name', 'args', 'sd'}, ...}``) or
    its ``model`` part."""
    if not isinstance(obj, Mapping):
        return False
    inner = obj.get('model')
    if isinstance(inner, Mapping) and isinstance(inner.get('sd'), Mapping):
        return True
    return isinstance(obj.get('sd'), Mapping) and 'name' in obj


def unwrap_linf_checkpoint(obj: Mapping) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """(bare state dict, header) of a released LINF checkpoint, or ``(obj, {})`` for anything else.

    The header holds the release's ``name`` (``'linf'`` or ``'linf-patch'``) and ``args`` where
    present. A ``module.`` prefix (a DataParallel save) is removed.
    """
    if not is_linf_release(obj):
        return obj, {}
    inner = obj['model'] if isinstance(obj.get('model'), Mapping) else obj
    header = {k: v for k, v in inner.items() if k != 'sd'}
    sd = OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in inner['sd'].items())
    return sd, header


def convert_linf_checkpoint(released: Mapping) -> OrderedDict:
    """The state dict of a released LINF checkpoint for :class:`LINFNet` (our keys are the
    release's, so this only unwraps; the tensors are not copied).

    Raises:
        CheckpointMismatchError: ``released`` holds no LINF weights.
    """
    sd, _ = unwrap_linf_checkpoint(released)
    if all(v is None for v in read_linf_architecture(sd).values()):
        raise CheckpointMismatchError(
            "not a LINF checkpoint: expected {'model': {'name', 'args', 'sd'}} or keys like "
            'encoder.head.0.weight, coef.weight, imnet.last._weight'
        )
    return OrderedDict(sd)


def read_linf_architecture(shapes: Mapping[str, Any]) -> dict[str, Any]:
    """The LINF architecture a state dict holds, read from its keys and shapes.

    Args:
        shapes: State-dict keys mapped to tensors or shapes (a trailing ``.ignore``, BasicSR's mark
            of a size mismatch, is read like the original key).

    Returns:
        dict: encoder ('edsr_baseline' / 'rrdb'), encoder_blocks, nf, in_nc, patch_size,
        hidden_dim, flow_layers, mlp_layers; None where the state dict does not reveal a field.
    """
    keys = state_dict_shapes(shapes)

    def count(pattern: str) -> int:
        return len({m.group(1) for k in keys if (m := re.match(pattern, k))})

    arch: dict[str, Any] = dict.fromkeys(
        ('encoder', 'encoder_blocks', 'nf', 'in_nc', 'patch_size', 'hidden_dim', 'flow_layers', 'mlp_layers')
    )
    if 'encoder.head.0.weight' in keys:
        arch['encoder'] = 'edsr_baseline'
        arch['encoder_blocks'] = count(r'encoder\.body\.(\d+)\.body\.0\.weight$')
        arch['nf'] = shape_dim(keys, 'encoder.head.0.weight', 0)
        arch['in_nc'] = shape_dim(keys, 'encoder.head.0.weight', 1)
    elif 'encoder.conv_first.weight' in keys:
        arch['encoder'] = 'rrdb'
        arch['encoder_blocks'] = count(r'encoder\.RRDB_trunk\.(\d+)\.')
        arch['nf'] = shape_dim(keys, 'encoder.conv_first.weight', 0)
        arch['in_nc'] = shape_dim(keys, 'encoder.conv_first.weight', 1)
    arch['hidden_dim'] = shape_dim(keys, 'coef.weight', 0)
    flow_dim = shape_dim(keys, 'imnet.last._weight', 0)
    if flow_dim is not None:
        channels = arch['in_nc'] or 3
        side = math.isqrt(max(flow_dim // channels, 1))
        arch['patch_size'] = side if side * side * channels == flow_dim else None
    if any(k.startswith('imnet.linears.') for k in keys):
        arch['flow_layers'] = count(r'imnet\.linears\.(\d+)\.')
    mlp = count(r'layers\.(\d+)\.weight$')
    arch['mlp_layers'] = mlp - 1 if mlp else None
    return arch


_ENCODER_NAMES = {'edsr_baseline': 'EDSR-baseline', 'rrdb': 'RRDB'}


def describe_linf_architecture(arch: Mapping[str, Any]) -> str:
    """One phrase for an architecture from :func:`read_linf_architecture`, e.g. "3x3-patch model
    (linf-patch) with an RRDB encoder (23 blocks, 64 features), hidden_dim 256, 10 flow layers"."""
    p = arch.get('patch_size')
    if p == 1:
        parts = ['per-pixel model (linf)']
    elif p is not None:
        parts = [f'{p}x{p}-patch model (linf-patch)']
    else:
        parts = ['model of unknown patch size']
    encoder = arch.get('encoder')
    if encoder is not None:
        blocks, nf = arch.get('encoder_blocks'), arch.get('nf')
        parts[0] += f' with an {_ENCODER_NAMES[encoder]} encoder ({blocks} blocks, {nf} features)'
    else:
        parts[0] += ' with no encoder weights'
    if arch.get('hidden_dim') is not None:
        parts.append(f'hidden_dim {arch["hidden_dim"]}')
    if arch.get('flow_layers') is not None:
        parts.append(f'{arch["flow_layers"]} flow layers')
    if arch.get('mlp_layers') is not None:
        parts.append(f'{arch["mlp_layers"]} MLP layers')
    return ', '.join(parts)


def describe_linf_checkpoint(arch: Mapping[str, Any], differ: Sequence[str] = ()) -> str:
    """ "LINF " and :func:`describe_linf_architecture` (every field is always shown)."""
    return f'LINF {describe_linf_architecture(arch)}'


def _linf_mismatch_fix(theirs: Mapping[str, Any], differ: Sequence[str]) -> str:
    fixes = [f'{_OPTION_OF[k]}: {theirs[k]}' for k in differ if k in _OPTION_OF]
    return f'. To load it, set {", ".join(fixes)} in the network options' if fixes else ''


# The released files (``{'model': {'name', 'args', 'sd'}, ...}``, or their ``model`` part as
# BasicSR's loader hands it over with ``param_key_g: model``) hold our keys: only unwrapped.
LINF_RELEASE = ReleaseLayout("the authors' LINF checkpoint", is_linf_release, convert_linf_checkpoint)
LINF_CHECKPOINT_FORMAT = CheckpointFormat(
    family='LINF',
    read_architecture=read_linf_architecture,
    describe=describe_linf_checkpoint,
    releases=(LINF_RELEASE,),
    mismatch_fix=_linf_mismatch_fix,
)


@ARCH_REGISTRY.register()
class LINFNet(BaseFlowNet):
    """LINF: an LR encoder, local implicit Fourier features and a per-location flow.

    Children (the checkpoint's keys): ``encoder`` (EDSR-baseline or RRDB, no upsampling),
    ``coef`` and ``freq`` (3x3 convs to ``hidden_dim``), ``phase`` (bias-free linear map of the
    relative cell to ``hidden_dim / 2``), ``layers`` (1x1-conv MLP, ``4 * hidden_dim`` ->
    ``hidden_dim`` x ``mlp_layers`` -> ``2 * flow_layers * 3 * patch_size**2``) and ``imnet``
    (the per-location flow of ``3 * patch_size**2`` values).

    Latents: one map (B, 3 p^2, Hq, Wq) with one vector per query location: per HR pixel for
    ``patch_size`` 1 (Hq, Wq = H, W); per 3x3 patch of the HR grid zero-padded to whole patches
    for ``patch_size`` p > 1 (Hq = ceil(H / p)).

    Args:
        encoder (str): ``'edsr_baseline'`` or ``'rrdb'``. Default: 'edsr_baseline'.
        patch_size (int): 1 for the per-pixel model (``linf``), 3 for the patch model
            (``linf-patch``, the one LINF-LP uses). Default: 1.
        hidden_dim (int): Width of coef/freq and of the MLP. Default: 256.
        flow_layers (int): Linear + affine layers of the per-location flow. Default: 10.
        mlp_layers (int): Hidden layers of the MLP (the release's ``num_layer``). Default: 3.
        in_nc (int): Image channels. Default: 3.
        encoder_opt (dict | None): Overrides of the encoder's sizes (EDSR: ``nf``, ``num_blocks``;
            RRDB: ``nf``, ``nb``, ``gc``). Default: None (the released sizes).
        query_chunk (int | None): Default number of query locations processed at once (bounds the
            memory of the MLP); None processes all at once. Results do not depend on it.
            Default: None.
        scale (int): Default upscaling factor when a decode is given no output size (the network
            itself works at any scale). Default: 4.
        dequantization (str): What ``nll(dequantize=True)`` (likelihood training) adds: 'none' (as
            LINF's release, which trains on the 8-bit values as they are) or 'uniform' (uniform
            noise of one 8-bit step and its log-det, so the NLL is in discrete bits per pixel).
            Default: 'none'.
        cache_flow_params (bool): Keep the flow parameters of the last query grid in the
            :class:`LINFCondition` and reuse them while the LR, grid and weights are the same (the
            learned prior's initial prior, encode and decode of one step then run the MLP once).
            Costs ``2 * flow_layers * 3 p^2`` floats per query held with the condition (540 for
            the released patch model); only used when no gradient must reach the MLP or the
            condition. False recomputes them at every call. Default: True.
    """

    lr_multiple = 1
    # Any output size: the models take the HR size from the gt when there is one.
    arbitrary_scale = True
    family = 'LINF'
    checkpoint_format = LINF_CHECKPOINT_FORMAT
    condition_type = LINFCondition

    def __init__(
        self,
        encoder: str = 'edsr_baseline',
        patch_size: int = 1,
        hidden_dim: int = 256,
        flow_layers: int = 10,
        mlp_layers: int = 3,
        in_nc: int = 3,
        encoder_opt: Mapping[str, int] | None = None,
        query_chunk: int | None = None,
        scale: int = 4,
        dequantization: str = 'none',
        cache_flow_params: bool = True,
    ) -> None:
        super().__init__()
        self.cache_flow_params = bool(cache_flow_params)
        if dequantization not in DEQUANTIZATIONS:
            raise ValueError(
                f'LINFNet: dequantization must be one of {", ".join(DEQUANTIZATIONS)}, got {dequantization!r}'
            )
        self.dequantization = dequantization
        if encoder not in ENCODERS:
            raise ValueError(f'LINFNet: unknown encoder {encoder!r}; known: {", ".join(ENCODERS)}')
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f'LINFNet: patch_size must be a positive integer, got {patch_size!r}')
        if hidden_dim < 2 or hidden_dim % 2:
            raise ValueError(f'LINFNet: hidden_dim must be even and >= 2, got {hidden_dim}')
        if query_chunk is not None and query_chunk < 1:
            raise ValueError(f'LINFNet: query_chunk must be None or >= 1, got {query_chunk}')
        sizes = dict(_ENCODER_DEFAULTS[encoder], **(encoder_opt or {}))
        unknown = sorted(set(sizes) - set(_ENCODER_DEFAULTS[encoder]))
        if unknown:
            raise ValueError(
                f'LINFNet: encoder_opt of the {encoder} encoder has no {", ".join(unknown)}; '
                f'its options: {", ".join(_ENCODER_DEFAULTS[encoder])}'
            )
        self.encoder_name = encoder
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.in_nc = in_nc
        self.query_chunk = query_chunk
        self.scale = scale
        self.dim = in_nc * patch_size**2

        if encoder == 'edsr_baseline':
            self.encoder = EDSRBaselineEncoder(in_nc=in_nc, **sizes)
        else:
            self.encoder = RRDBEncoder(in_nc=in_nc, out_nc=in_nc, **sizes)
        nf = self.encoder.out_channels
        self.coef = nn.Conv2d(nf, hidden_dim, 3, padding=1)
        self.freq = nn.Conv2d(nf, hidden_dim, 3, padding=1)
        self.phase = nn.Linear(2, hidden_dim // 2, bias=False)
        mlp: list[nn.Module] = []
        width = 4 * hidden_dim
        for _ in range(mlp_layers):
            mlp += [nn.Conv2d(width, hidden_dim, 1), nn.ReLU()]
            width = hidden_dim
        flow = PointwiseFlow(self.dim, flow_layers)
        mlp.append(nn.Conv2d(width, flow.param_channels, 1))
        self.layers = nn.Sequential(*mlp)
        self.imnet = flow

    # ------------------------------------------------------------------ geometry
    def query_shape(self, hr_size: Sequence[int] | HRWindow) -> tuple[int, int]:
        """(Hq, Wq): the query grid of an HR image (or window) of size ``hr_size`` = (H, W)."""
        return linf_geometry.query_shape(hr_size, self.patch_size)

    def padding(self, hr_size: Sequence[int] | HRWindow) -> tuple[int, int]:
        """Rows and columns of zeros added below and right of the HR grid (patch mode only).

        Only what whole patches need, ``(-H) mod p``, as LINF-LP's data pad (see the module
        docstring for LINF's own extra row). A window is padded the same way (its size decides),
        so a latent's shape depends on the output size alone.
        """
        return linf_geometry.patch_padding(hr_size, self.patch_size)

    def query_grid(
        self,
        hr_size: Sequence[int] | HRWindow,
        batch: int = 1,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Query coordinates (B, Hq, Wq, 2) and cell (B, 2) for an HR image of size ``hr_size``, or
        for windows (see :func:`~flowprior_plugin.layers.linf_geometry.query_grid`)."""
        return linf_geometry.query_grid(hr_size, self.patch_size, batch, dtype, device)

    def latent_shape(self, lq_shape: Sequence[int], out_size: OutputSize = None) -> tuple[int, ...]:
        """Shape (B, 3 p^2, Hq, Wq) of the latent map for an LR of shape ``lq_shape`` and an HR
        (or windows) of size ``out_size`` (default: ``scale`` times the LR)."""
        target = self._target(lq_shape, out_size)
        return (int(lq_shape[0]), self.dim, *self.query_shape(target))

    def latent_channels(self) -> list[int]:
        """Channels of the single latent map: ``3 * patch_size**2``."""
        return [self.dim]

    def _target(self, lq_shape: Sequence[int], out_size: OutputSize) -> tuple[int, int] | HRWindow:
        """What the latents describe: a whole HR of size (H, W), or windows of larger HR images
        (an :class:`HRWindow` that is not just whole images)."""
        if out_size is None:
            return int(lq_shape[-2]) * self.scale, int(lq_shape[-1]) * self.scale
        if isinstance(out_size, HRWindow):
            if out_size.batch != int(lq_shape[0]):
                raise ValueError(
                    f'LINFNet: out_size describes windows of {out_size.batch} images, but the LR batch has '
                    f'{int(lq_shape[0])}'
                )
            return out_size.size if out_size.is_whole() else out_size
        if len(out_size) != 2 or min(int(s) for s in out_size) < 1:
            raise ValueError(f'LINFNet: out_size must be (H, W) with positive sides, got {tuple(out_size)}')
        return int(out_size[0]), int(out_size[1])

    # ------------------------------------------------------------------ conditioning and queries
    def condition(self, lq: Tensor, normalized: bool = False) -> LINFCondition:
        """Everything that depends on the LR alone: encoder features -> ``coef`` and ``freq`` maps.

        Args:
            lq: LR batch (B, in_nc, h, w) in [0, 1] (or in [-1, 1] with ``normalized``).
            normalized: ``lq`` is already in the network's [-1, 1] range. Default: False.

        Returns:
            LINFCondition: pass it as ``cond`` to the other methods for the same ``lq``, at any
            output size.
        """
        self._check_lq(lq)
        lr = lq if normalized else to_model_range(lq)
        features = self.encoder(lr)
        return LINFCondition(lq_shape=tuple(lq.shape), lr=lr, coef=self.coef(features), freq=self.freq(features))

    def _check_lq(self, lq: Tensor) -> None:
        if not isinstance(lq, Tensor) or lq.dim() != 4 or lq.shape[1] != self.in_nc:
            got = tuple(lq.shape) if isinstance(lq, Tensor) else type(lq).__name__
            raise ValueError(f'LINFNet expects an LR batch (B, {self.in_nc}, h, w), got {got}')

    def _mlp(self, x: Tensor) -> Tensor:
        # The checkpoint stores 1x1 convolutions; on channels-last query vectors they are linear maps.
        for layer in self.layers:
            x = F.linear(x, layer.weight.flatten(1), layer.bias) if isinstance(layer, nn.Conv2d) else layer(x)
        return x

    def _query_params(self, cond: LINFCondition, coord: Tensor, cell: Tensor) -> Tensor:
        """Flow parameters (B, N, P) at flattened query coordinates (B, N, 2), one chunk."""
        return self._mlp(local_fourier_features(cond.coef, cond.freq, coord, cell, self.phase))

    def flow_params(self, cond: LINFCondition, coord: Tensor, cell: Tensor, query_chunk: int | None = None) -> Tensor:
        """Affine parameters of the per-location flow at the query coordinates.

        Args:
            cond: :meth:`condition` of the LR.
            coord: Query coordinates (B, *grid, 2), ``(row, col)`` in [-1, 1] (see :meth:`query_grid`).
            cell: Output pixel size (B, 2).
            query_chunk: Queries per chunk; None uses the network's ``query_chunk``. Default: None.

        Returns:
            Tensor: (B, 2 * flow_layers * 3 p^2, *grid).
        """
        b = coord.shape[0]
        grid = coord.shape[1:-1]
        flat = coord.reshape(b, -1, 2)
        chunk = query_chunk or self.query_chunk or flat.shape[1]
        params = torch.cat([self._query_params(cond, part, cell) for part in flat.split(chunk, dim=1)], dim=1)
        return params.transpose(1, 2).reshape(b, -1, *grid)

    # ------------------------------------------------------------------ residuals and patches
    def upsampled_lr(self, cond: LINFCondition, hr_size: Sequence[int] | HRWindow) -> Tensor:
        """The bilinear base: the LR (network range) sampled at the HR pixel centres (of the whole
        image, or of each window in its image), border padding, ``align_corners=False`` ->
        (B, in_nc, H, W)."""
        return bilinear_base(cond.lr, hr_size)

    def to_patches(self, image: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C p^2, Hq, Wq): zero-pad as in :meth:`padding`, then one vector per
        patch ordered ``channel * p^2 + p * row + column``."""
        return linf_geometry.to_patches(image, self.patch_size)

    def fold(self, patches: Tensor) -> Tensor:
        """(B, C p^2, Hq, Wq) -> (B, C, p Hq, p Wq): the patches laid back side by side (padding
        kept; crop with ``[..., :H, :W]``)."""
        return linf_geometry.fold_patches(patches, self.patch_size)

    def residual_patches(
        self, cond: LINFCondition, gt: Tensor, normalized: bool = False, window: HRWindow | None = None
    ) -> Tensor:
        """The flow's data: HR minus the bilinear base, as one vector per query (B, 3 p^2, Hq, Wq).

        Args:
            cond: :meth:`condition` of the LR.
            gt: HR batch (B, in_nc, H, W) in [0, 1] (or [-1, 1] with ``normalized``).
            normalized: ``gt`` is already in the network's range. Default: False.
            window: Where ``gt`` sits in the HR images the LR covers (None: ``gt`` is the whole
                HR). Default: None.
        """
        gt = gt if normalized else to_model_range(gt)
        return self.to_patches(gt - self.upsampled_lr(cond, window if window is not None else gt.shape[-2:]))

    # ------------------------------------------------------------------ flow at the query grid
    def log_prob_patches(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Encode direction on maps: ``(log p (B, Hq, Wq), z (B, 3 p^2, Hq, Wq))`` of the residual
        vectors ``x`` (B, 3 p^2, Hq, Wq) under the flow with ``params`` (B, P, Hq, Wq)."""
        log_p, z = self.imnet.log_prob(x.movedim(1, -1), params.movedim(1, -1))
        return log_p, z.movedim(-1, 1)

    def decode_patches(self, z: Tensor, params: Tensor, solve: bool = False) -> Tensor:
        """Decode direction on maps: residual vectors (B, 3 p^2, Hq, Wq) from latents ``z`` of the
        same shape.

        Args:
            z: Latent map.
            params: Flow parameters (B, P, Hq, Wq) from :meth:`flow_params`.
            solve: Solve each linear system instead of using the cached inverses. Default: False.
        """
        return self.imnet.decode(z.movedim(1, -1), params.movedim(1, -1), solve=solve).movedim(-1, 1)

    def params_for(
        self, cond: LINFCondition, hr_size: Sequence[int] | HRWindow, query_chunk: int | None = None
    ) -> Tensor:
        """:meth:`flow_params` on the query grid of an HR image of size ``hr_size`` (or of windows).

        With ``cache_flow_params`` the result is kept in ``cond`` (one grid: the last one) and
        returned again for the same grid while the MLP's weights are unchanged, unless a gradient
        must reach the MLP or ``cond`` (then it is computed afresh, with its graph). The cached
        tensor is the very result of the plain computation (``query_chunk`` does not change it).
        """
        key = self._params_key(cond, hr_size) if self.cache_flow_params else None
        if key is not None and cond.params_cache is not None and cond.params_cache[0] == key:
            return cond.params_cache[1]
        coord, cell = self.query_grid(hr_size, cond.lr.shape[0], cond.lr.dtype, cond.lr.device)
        params = self.flow_params(cond, coord, cell, query_chunk)
        if key is not None:
            cond.params_cache = (key, params)
        return params

    def _params_key(self, cond: LINFCondition, hr_size: Sequence[int] | HRWindow) -> tuple | None:
        """What cached flow parameters depend on besides ``cond``: the query grid and the current
        weights of ``phase`` and the MLP (storage and in-place version, so an optimiser step or a
        ``load_state_dict`` is seen). None when the parameters need an autograd graph."""
        weights = [*self.phase.parameters(), *self.layers.parameters()]
        if torch.is_grad_enabled() and (
            cond.coef.requires_grad or cond.freq.requires_grad or any(w.requires_grad for w in weights)
        ):
            return None
        try:
            versions = tuple((w.data_ptr(), w._version) for w in weights)
        except RuntimeError:  # inference-mode weights have no version counter: never cache
            return None
        if isinstance(hr_size, HRWindow):
            grid = ('window', hr_size.size, *hr_size.full_size.flatten().tolist(), *hr_size.offset.flatten().tolist())
        else:
            grid = ('size', *output_hw(hr_size))
        return grid, versions

    # ------------------------------------------------------------------ image level
    def log_prob(
        self,
        lq: Tensor,
        gt: Tensor,
        cond: FlowCondition | None = None,
        query_chunk: int | None = None,
        out_size: OutputSize = None,
    ) -> tuple[Tensor, Tensor]:
        """Log-density (natural log, network range, no dequantisation) of each query's residual
        vector, and the latent map.

        Args:
            lq: LR batch (B, in_nc, h, w) in [0, 1].
            gt: HR batch (B, in_nc, H, W) in [0, 1], any size.
            cond: ``condition(lq)`` to reuse; computed when None. Default: None.
            query_chunk: Queries per chunk (None: the network's). Default: None.
            out_size: None (``gt`` is the whole HR), or the :class:`HRWindow` that ``gt`` is.
                Default: None.

        Returns:
            tuple[Tensor, Tensor]: log p (B, Hq, Wq) and z (B, 3 p^2, Hq, Wq). LINF's stage-1
            loss is ``-log_p.mean()``.
        """
        self._check_lq(lq)
        target = self._gt_target(lq, gt, out_size)
        cond = self._resolve_cond(lq, cond)
        x = self.residual_patches(cond, gt, window=target if isinstance(target, HRWindow) else None)
        return self.log_prob_patches(x, self.params_for(cond, target, query_chunk))

    def encode(
        self,
        lq: Tensor,
        gt: Tensor,
        cond: FlowCondition | None = None,
        out_size: OutputSize = None,
        query_chunk: int | None = None,
    ) -> Latents:
        """HR -> ``[z]`` with z the latent map (B, 3 p^2, Hq, Wq), deterministic.

        Args:
            lq: LR batch (B, in_nc, h, w) in [0, 1].
            gt: HR batch (B, in_nc, H, W) in [0, 1]; its size fixes the query grid.
            cond: ``condition(lq)`` to reuse; computed when None. Default: None.
            out_size: None (``gt`` is the whole HR), or the :class:`HRWindow` that ``gt`` is.
                Default: None.
            query_chunk: Queries per chunk (None: the network's). Default: None.
        """
        return [self.log_prob(lq, gt, cond, query_chunk, out_size)[1]]

    def decode(
        self,
        lq: Tensor,
        latents: Latents,
        cond: FlowCondition | None = None,
        out_size: OutputSize = None,
        query_chunk: int | None = None,
    ) -> Tensor:
        """``[z]`` -> SR image in [0, 1] (not clamped) of size ``out_size``.

        The latent map alone cannot say the HR size in patch mode (H = 3 Hq - 2 .. 3 Hq), so it is
        an argument. Differentiable w.r.t. the latents; changes no parameter or buffer.

        Args:
            lq: LR batch (B, in_nc, h, w) in [0, 1].
            latents: ``[z]`` with z of shape :meth:`latent_shape`.
            cond: ``condition(lq)`` to reuse; computed when None. Default: None.
            out_size: HR size (H, W), or an :class:`HRWindow` (decode only those windows of the HR
                images the LR covers). Default: None (``scale`` times the LR).
            query_chunk: Queries per chunk (None: the network's). Default: None.
        """
        self._check_lq(lq)
        target = self._target(lq.shape, out_size)
        self._check_latents(lq, latents, target)
        cond = self._resolve_cond(lq, cond)
        return from_model_range(self.decode_residual(cond, latents[0], target, query_chunk, with_base=True))

    def sampled_shapes(self, lq: Tensor, out_size: OutputSize) -> list[tuple[int, ...]]:
        """``[latent_shape]``: temperature sampling draws z ~ N(0, tau^2) at every query location,
        independently (as released), for an HR of size ``out_size`` (or :class:`HRWindow`)."""
        return [self.latent_shape(lq.shape, out_size)]

    def nll(
        self,
        lq: Tensor,
        gt: Tensor,
        cond: FlowCondition | None = None,
        dequantize: bool = False,
        generator: torch.Generator | None = None,
        out_size: OutputSize = None,
    ) -> Tensor:
        """Negative log-likelihood of ``gt`` in bits per HR pixel, one value per image (B,).

        The density is the flow's, of the residual in the network's [-1, 1] range, summed over
        every query and divided by the H * W of ``gt``; training by it is LINF's stage-1 loss
        ``-log_p.mean()`` up to a constant factor. Being a density of continuous values it can be
        negative. Partly padded patches count, their padded entries being zeros.

        ``dequantize`` (likelihood training) follows ``dequantization``: 'none' (the release) adds
        nothing; 'uniform' adds ``(U(0, 1) - 0.5) / 255`` to ``gt`` in [0, 1] (real pixels only) and
        the log-det ``-log(127.5)`` of a 1/255 bin in the [-1, 1] range per value, so the result is
        the discrete bits per pixel of 8-bit images.

        Args:
            lq: LR batch (B, in_nc, h, w) in [0, 1].
            gt: HR batch (B, in_nc, H, W) in [0, 1], any size.
            cond: ``condition(lq)`` to reuse; computed when None. Default: None.
            dequantize: Apply the ``dequantization`` of likelihood training. Default: False.
            generator: Random generator of the noise (any device). Default: None.
            out_size: None (``gt`` is the whole HR), or the :class:`HRWindow` that ``gt`` is (the
                likelihood of the window given the LR of its whole image). Default: None.

        Returns:
            Tensor: Bits per HR pixel, shape (B,).
        """
        self._check_lq(lq)
        self._gt_target(lq, gt, out_size)  # a clear error before the noise touches a wrong gt
        h, w = gt.shape[-2:]
        logdet = gt.new_zeros(gt.shape[0])
        if dequantize and self.dequantization == 'uniform':
            device = generator.device if generator is not None else gt.device
            noise = torch.rand(gt.shape, generator=generator, device=device, dtype=gt.dtype).to(gt.device)
            gt = gt + (noise - 0.5) / 255.0
            logdet = logdet - math.log(255.0 * _DATA_STD) * gt[0].numel()
        log_p, _ = self.log_prob(lq, gt, cond, out_size=out_size)
        return -(log_p.flatten(1).sum(1) + logdet) / (math.log(2.0) * h * w)

    def initial_prior(self, lq: Tensor, cond: FlowCondition | None = None, out_size: OutputSize = None) -> Latents:
        """LINF-LP's initial latents z0: the encoding of the residual of the upsampled LR,
        ``r = up(y) - up(down(up(y)))``, not standardised.

        ``up`` is the flow's own bilinear base (grid_sample, border, align_corners False: the same
        numbers as the release's ``F.interpolate(mode='bilinear')``), so r is what :meth:`encode`
        would see for the HR ``up(y)`` with the LR ``down(up(y))``; ``down`` is a bilinear resize back
        to the LR size without antialiasing, as released. The flow parameters are those of the real
        LR ``y``. For windows, ``down`` resizes the whole HR image's ``up(y)`` and r is taken at the
        window's pixels (as the release computes it on the whole crop).

        Args:
            lq: LR batch (B, in_nc, h, w) in [0, 1].
            cond: ``condition(lq)`` to reuse; computed when None. Default: None.
            out_size: HR size (H, W) or :class:`HRWindow`. Default: None (``scale`` times the LR).

        Returns:
            list[Tensor]: ``[z0]`` of shape :meth:`latent_shape`.
        """
        self._check_lq(lq)
        target = self._target(lq.shape, out_size)
        cond = self._resolve_cond(lq, cond)
        up = self.upsampled_lr(cond, target)
        down = self._down_of_up(cond, target, tuple(lq.shape[-2:]), up)
        residual = self.to_patches(up - bilinear_base(down, target))
        return [self.log_prob_patches(residual, self.params_for(cond, target))[1]]

    def _down_of_up(
        self, cond: LINFCondition, target: tuple[int, int] | HRWindow, lr_size: tuple[int, int], up: Tensor
    ) -> Tensor:
        """``down(up(y))`` at the LR size, ``up`` being that of the whole HR image: ``up`` itself
        for a whole image, recomputed per sample for windows (whose images may differ in size)."""

        def down(up: Tensor) -> Tensor:
            return F.interpolate(up, size=lr_size, mode='bilinear', align_corners=False)

        if not isinstance(target, HRWindow):
            return down(up)
        ups = [bilinear_base(cond.lr[b : b + 1], tuple(full)) for b, full in enumerate(target.full_size.tolist())]
        return torch.cat([down(up) for up in ups])

    def initialize_from_batch(self, lq: Tensor, gt: Tensor) -> bool:
        """LINF has no data-dependent initialisation: never runs, returns False."""
        return False

    # ------------------------------------------------------------------ tiling hooks
    def latent_strides(self) -> list[int]:
        """One latent cell per ``patch_size`` HR pixels."""
        return [self.patch_size]

    def tile_alignment(self) -> int:
        """Tiles start on the patch grid (any HR pixel at patch size 1)."""
        return self.patch_size

    def tile_context(self, lq: Tensor, hr_size: Sequence[int]) -> LINFCondition:
        """The whole LR's conditioning (LR-sized maps): every tile is a window of the whole image."""
        return self.condition(lq)

    def tile_inputs(self, lq: Tensor, context: Any, box: Sequence[int], hr_size: Sequence[int]) -> TileInputs:
        """A window of the whole HR image, decoded with the whole LR's conditioning: exactly the
        pixels a whole decode gives, at any scale."""
        top, bottom, left, right = (int(v) for v in box)
        b = lq.shape[0]
        window = HRWindow(
            (bottom - top, right - left),
            full_size=torch.tensor([list(hr_size)] * b, device=lq.device),
            offset=torch.tensor([[top, left]] * b, device=lq.device),
        )
        return TileInputs(lq, context, window, (top, bottom, left, right))

    def decode_residual(
        self,
        cond: LINFCondition,
        z: Tensor,
        out_size: Sequence[int] | HRWindow,
        query_chunk: int | None = None,
        with_base: bool = False,
        solve: bool = False,
    ) -> Tensor:
        """Latent map -> HR residual (network range) folded and cropped to ``out_size``; with
        ``with_base`` the bilinear base is added (the SR image in the network's range)."""
        params = self.params_for(cond, out_size, query_chunk)
        h, w = output_hw(out_size)
        residual = self.fold(self.decode_patches(z, params, solve=solve))[..., :h, :w]
        return residual + self.upsampled_lr(cond, out_size) if with_base else residual

    def _gt_target(self, lq: Tensor, gt: Tensor, out_size: OutputSize) -> tuple[int, int] | HRWindow:
        """Checks ``gt`` and returns what it is: a whole HR of its size, or the given windows."""
        if not isinstance(gt, Tensor) or gt.dim() != 4 or gt.shape[:2] != lq.shape[:2]:
            got = tuple(gt.shape) if isinstance(gt, Tensor) else type(gt).__name__
            raise ValueError(f'LINFNet expects an HR batch ({lq.shape[0]}, {self.in_nc}, H, W), got {got}')
        if out_size is None:
            return tuple(gt.shape[-2:])
        target = self._target(lq.shape, out_size)
        if output_hw(target) != tuple(gt.shape[-2:]):
            raise ValueError(f'LINFNet: gt of size {tuple(gt.shape[-2:])} does not match out_size {output_hw(target)}')
        return target

    def _check_latents(self, lq: Tensor, latents: Latents, target: Sequence[int] | HRWindow) -> None:
        expected = (int(lq.shape[0]), self.dim, *self.query_shape(target))
        got = [tuple(z.shape) for z in latents] if isinstance(latents, (list, tuple)) else latents
        if got != [expected]:
            raise ValueError(
                f'LINFNet expects latents [{expected}] for an LR of shape {tuple(lq.shape)} and an output '
                f'of size {output_hw(target)}, got {got}'
            )

    def clear_inverse_cache(self) -> None:
        """Drop every cached inverse (they also refresh themselves when a weight changes)."""
        for module in self.modules():
            if isinstance(module, InvertibleLinear):
                module.clear_cache()
