"""SRFlow (Lugmayr et al., ECCV 2020): a conditional normalising flow HR <-> latents given the LR.

Keys and shapes are those of the released checkpoints: the official ``SRFlow_*.pth`` files load
with ``strict=True``. :meth:`SRFlowNet.condition` computes what depends on the LR alone once, for
an encode and any number of decodes. Latent layout, the initial prior and the likelihood:
``docs/srflow.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn

from flowprior_plugin.archs.base_flow_net import ActNormFlowNet
from flowprior_plugin.checkpoints import (
    CheckpointFormat,
    describe_scaled_architecture,
    key_indices,
    official_config_name,
    official_options,
    shape_dim,
    state_dict_shapes,
)
from flowprior_plugin.errors import InputShapeError
from flowprior_plugin.flow_protocol import FlowCondition, Latents, OutputSize
from flowprior_plugin.layers.flow_layers import (
    ActNorm,
    Conv2dActNorm,
    Conv2dZeros,
    InvertibleConv1x1,
    SqueezeLayer,
    actnorm_init_disabled,
    cross_split,
    gaussian_log_prob,
    standardize_per_pixel,  # noqa: F401  (shared with HCFlow; still importable from here)
    unsqueeze2d,
)
from flowprior_plugin.layers.row_bands import apply_in_row_bands
from flowprior_plugin.layers.rrdb import RRDB
from flowprior_plugin.tiling import TileInputs

# Constructor arguments of the three released configurations (SRFlow_{DF2K_4X,DF2K_8X,CelebA_8X}.yml).
SRFLOW_OFFICIAL_CONFIGS: dict[str, dict] = {
    'DF2K 4X': dict(scale=4, nb=23, K=16, L=3, stacked_blocks=(1, 8, 15, 22)),
    'DF2K 8X': dict(scale=8, nb=23, K=16, L=4, stacked_blocks=(1, 3, 5, 7)),
    'CelebA 8X': dict(scale=8, nb=8, K=16, L=4, stacked_blocks=(1, 3, 5, 7)),
}
_OFFICIAL_COMMON = dict(in_nc=3, nf=64, gc=32, hidden_channels=64, n_no_coupling_steps=2)

# Output channels of the release's unused ``flowUpsamplerNet.f.0`` (a constant there, at 4X and 8X).
_UNUSED_F_CHANNELS = 96
# LR pixels of trunk features a tile cuts beyond its box: the upconvs after the trunk reach less
# than one LR pixel; even, so the half-LR conditional of the cut stays on the whole image's grid.
_TILE_HALO = 2
# Rows either side an RRDB block reads (3 dense blocks of 5 3x3 convolutions), and the rows per band
# of the whole-LR trunk in tiled prediction: (96 + 2 * 15) / 96 = 1.31x the trunk's work for a
# peak of one band's intermediates instead of the whole image's.
_RRDB_HALO = 15
TRUNK_BAND_ROWS = 96


def official_srflow_options(name: str) -> dict:
    """Constructor arguments of :class:`SRFlowNet` for a released config ('DF2K 4X', 'DF2K 8X', 'CelebA 8X')."""
    return official_options('SRFlow', SRFLOW_OFFICIAL_CONFIGS, _OFFICIAL_COMMON, name)


def _feature_name(factor: int) -> str:
    """Name of the RRDB conditional at LR size times ``factor`` (0 stands for half the LR size)."""
    return f'fea_up{factor}'


@dataclass
class CouplingCondition:
    """LR-only part of one affine coupling.

    Attributes:
        shift: Feature-injector shift (B, C, H, W).
        scale: Feature-injector scale ``sigmoid(. + 2) + eps`` (B, C, H, W).
        logdet: ``sum log scale`` per image (B,).
        affine_ft: The conditional half of fAffine's first convolution, ``conv_ft(ft)`` (B, hidden, H, W).
    """

    shift: Tensor
    scale: Tensor
    logdet: Tensor
    affine_ft: Tensor


@dataclass
class SRFlowCondition(FlowCondition):
    """Everything SRFlow computes from the LR alone (see :meth:`SRFlowNet.condition`).

    Attributes:
        features: RRDB conditionals by name (``fea_up2`` ...), only those some flow level uses.
        couplings: Per affine flow step (keyed by its index in ``flowUpsamplerNet.layers``).
    """

    features: dict[str, Tensor] = field(default_factory=dict)
    couplings: dict[int, CouplingCondition] = field(default_factory=dict)


class SRFlowRRDB(nn.Module):
    """SRFlow's conditioning encoder (the checkpoint's ``RRDB`` child): an RRDB trunk whose features,
    upsampled to each flow level's resolution, condition the flow.

    Args:
        in_nc (int): LR channels. Default: 3.
        out_nc (int): Channels of the (unused) SR head ``conv_last``. Default: 3.
        nf (int): Feature channels. Default: 64.
        nb (int): Number of RRDB blocks. Default: 23.
        gc (int): Growth channels of the dense blocks. Default: 32.
        scale (int): Upscaling factor; there are log2(scale) ``upconv`` layers. Default: 4.
        stacked_blocks (Sequence[int]): Blocks whose outputs are appended to every conditional.
            Default: (1, 8, 15, 22).
    """

    def __init__(
        self,
        in_nc: int = 3,
        out_nc: int = 3,
        nf: int = 64,
        nb: int = 23,
        gc: int = 32,
        scale: int = 4,
        stacked_blocks: Sequence[int] = (1, 8, 15, 22),
    ) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.num_upconvs = int(math.log2(scale))
        for n in range(1, self.num_upconvs + 1):
            setattr(self, f'upconv{n}', nn.Conv2d(nf, nf, 3, 1, 1))
        # Kept for checkpoint compatibility only: the flow never uses the RRDB's own SR output.
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)
        self.stacked_blocks = tuple(int(i) for i in stacked_blocks)
        self.scale = scale

    def trunk(self, lr: Tensor, band_rows: int | None = None) -> tuple[Tensor, Tensor | None]:
        """The LR-resolution features every conditional is made of: the trunk's output (after the
        residual ``trunk_conv``) and the stacked blocks' outputs concatenated (None without any).

        ``band_rows`` computes each RRDB block ``band_rows`` rows at a time (exact: a block's 15
        3x3 convolutions see 15 rows either side), so that only the kept features grow with the
        image, not the blocks' intermediate tensors (tiled prediction of large images). Default:
        None (whole image at once).
        """
        # The residual around trunk_conv starts from the trunk's OUTPUT (not conv_first's): only this
        # reproduces the release's outputs (tests/archs/test_srflow_arch.py).
        x = self.conv_first(lr)
        stacked = None
        if self.stacked_blocks:
            # Written in place rather than concatenated at the end: no second copy at the peak.
            stacked = x.new_empty(x.shape[0], x.shape[1] * len(self.stacked_blocks), *x.shape[-2:])
        channels = x.shape[1]
        slot = 0
        for i, block in enumerate(self.RRDB_trunk):
            x = block(x) if band_rows is None else apply_in_row_bands(block, x, band_rows, _RRDB_HALO)
            if i in self.stacked_blocks:
                stacked[:, slot * channels : (slot + 1) * channels] = x
                slot += 1
        return x + self.trunk_conv(x), stacked

    def conditionals(
        self, lr: Tensor, factors: Sequence[int], trunk: tuple[Tensor, Tensor | None] | None = None
    ) -> dict[str, Tensor]:
        """RRDB conditionals at LR size times each of ``factors`` (0 = half), each with the stacked
        block features appended (``nf * (1 + len(stacked_blocks))`` channels).

        Only what the requested factors need is computed: no upconv beyond the largest factor.
        ``trunk`` (:meth:`trunk` of ``lr``, or a crop of a larger LR's on even rows and columns)
        skips the trunk; every step after it is local, so a crop's conditionals are the whole
        image's under the crop except within one LR pixel of a cut border.
        """
        factors = set(factors)
        # Every fea_up{2,4,...} is taken AFTER its LeakyReLU (as the release's outputs require).
        last_lr_fea, stacked = self.trunk(lr) if trunk is None else trunk
        raw: dict[int, Tensor] = {}
        if 0 in factors:
            raw[0] = F.interpolate(last_lr_fea, scale_factor=0.5, mode='bilinear', align_corners=False)
        if 1 in factors:
            raw[1] = last_lr_fea
        top = max(factors)
        up = last_lr_fea
        n = 1
        while 2**n <= top:
            up = F.leaky_relu(getattr(self, f'upconv{n}')(F.interpolate(up, scale_factor=2, mode='nearest')), 0.2)
            if 2**n in factors:
                raw[2**n] = up
            n += 1

        out = {}
        for factor, feat in raw.items():
            if stacked is not None:
                resized = F.interpolate(stacked, size=feat.shape[-2:], mode='nearest')
                feat = torch.cat((feat, resized), 1)
            out[_feature_name(factor)] = feat
        return out


def _coupling_net(in_channels: int, out_channels: int, hidden_channels: int) -> nn.Sequential:
    """conv3x3+ActNorm, ReLU, conv1x1+ActNorm, ReLU, zero-conv3x3 (keys .0, .2, .4)."""
    return nn.Sequential(
        Conv2dActNorm(in_channels, hidden_channels, 3),
        nn.ReLU(),
        Conv2dActNorm(hidden_channels, hidden_channels, 1),
        nn.ReLU(),
        Conv2dZeros(hidden_channels, out_channels, 3),
    )


class CondAffineSeparatedAndCond(nn.Module):
    """SRFlow's conditional coupling: a feature injector (affine map of all channels computed from
    the conditional ``ft``), then an affine coupling of the second half given the first half and ft.

    Args:
        in_channels (int): Channels C of the flow at this level.
        cond_channels (int): Channels of the conditional ft. Default: 320.
        hidden_channels (int): Hidden channels of fAffine and fFeatures. Default: 64.
        eps (float): Added to the sigmoid scales so they never reach 0. Default: 1e-4.
    """

    def __init__(
        self, in_channels: int, cond_channels: int = 320, hidden_channels: int = 64, eps: float = 1e-4
    ) -> None:
        super().__init__()
        self.c1 = in_channels // 2
        self.c2 = in_channels - self.c1
        self.eps = eps
        # Attribute order gives the checkpoint's key order (fAffine before fFeatures).
        self.fAffine = _coupling_net(self.c1 + cond_channels, 2 * self.c2, hidden_channels)
        self.fFeatures = _coupling_net(cond_channels, 2 * in_channels, hidden_channels)

    def _scale(self, raw: Tensor) -> Tensor:
        return torch.sigmoid(raw + 2.0) + self.eps

    def condition(self, ft: Tensor) -> CouplingCondition:
        """The LR-only part: injector shift/scale/log-det and ``conv_ft(ft)`` of fAffine's first conv."""
        shift, raw = cross_split(self.fFeatures(ft))
        scale = self._scale(raw)
        first = self.fAffine[0]
        affine_ft = F.conv2d(ft, first.weight[:, self.c1 :], padding=first.padding)
        return CouplingCondition(shift, scale, torch.log(scale).flatten(1).sum(1), affine_ft)

    def _affine(self, z1: Tensor, cc: CouplingCondition) -> tuple[Tensor, Tensor]:
        first = self.fAffine[0]
        # conv(concat(z1, ft)) = conv_z1(z1) + conv_ft(ft): the second term is cached in cc.
        h = F.conv2d(z1, first.weight[:, : self.c1], padding=first.padding) + cc.affine_ft
        h = torch.relu(first.actnorm(h))
        for layer in list(self.fAffine)[2:]:
            h = layer(h)
        shift, raw = cross_split(h)
        return shift, self._scale(raw)

    def encode(self, z: Tensor, cc: CouplingCondition) -> tuple[Tensor, Tensor]:
        """Returns ``(z', logdet)`` with logdet of shape (B,)."""
        z = (z + cc.shift) * cc.scale
        z1, z2 = z[:, : self.c1], z[:, self.c1 :]
        shift, scale = self._affine(z1, cc)
        z2 = (z2 + shift) * scale
        logdet = cc.logdet + torch.log(scale).flatten(1).sum(1)
        return torch.cat((z1, z2), 1), logdet

    def decode(self, z: Tensor, cc: CouplingCondition) -> Tensor:
        z1, z2 = z[:, : self.c1], z[:, self.c1 :]
        shift, scale = self._affine(z1, cc)
        z = torch.cat((z1, z2 / scale - shift), 1)
        return z / cc.scale - cc.shift

    # The plain computation, as the release does it (concat conv, injector recomputed); for checks.
    def plain_encode(self, z: Tensor, ft: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = cross_split(self.fFeatures(ft))
        scale = self._scale(raw)
        z = (z + shift) * scale
        logdet = torch.log(scale).flatten(1).sum(1)
        z1, z2 = z[:, : self.c1], z[:, self.c1 :]
        shift, raw = cross_split(self.fAffine(torch.cat((z1, ft), 1)))
        scale = self._scale(raw)
        z2 = (z2 + shift) * scale
        return torch.cat((z1, z2), 1), logdet + torch.log(scale).flatten(1).sum(1)

    def plain_decode(self, z: Tensor, ft: Tensor) -> Tensor:
        z1, z2 = z[:, : self.c1], z[:, self.c1 :]
        shift, raw = cross_split(self.fAffine(torch.cat((z1, ft), 1)))
        z = torch.cat((z1, z2 / self._scale(raw) - shift), 1)
        shift, raw = cross_split(self.fFeatures(ft))
        return z / self._scale(raw) - shift


class FlowStep(nn.Module):
    """ActNorm -> invertible 1x1 conv -> (optional) conditional affine coupling.

    Args:
        channels (int): Flow channels C at this level.
        cond_channels (int): Channels of the level's conditional. Default: 320.
        hidden_channels (int): Hidden channels of the coupling nets. Default: 64.
        coupling (bool): Whether the step has a coupling (the first steps of a level have none).
            Default: True.
        eps (float): Coupling scale epsilon. Default: 1e-4.
    """

    def __init__(
        self,
        channels: int,
        cond_channels: int = 320,
        hidden_channels: int = 64,
        coupling: bool = True,
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvertibleConv1x1(channels)
        self.affine = CondAffineSeparatedAndCond(channels, cond_channels, hidden_channels, eps) if coupling else None

    def encode(
        self, z: Tensor, logdet: Tensor, cc: CouplingCondition | None = None, ft: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Encode with the cached coupling condition ``cc``, or plainly from the conditional ``ft``."""
        num_pixels = z.shape[2] * z.shape[3]
        z = self.actnorm(z)
        logdet = logdet + self.actnorm.logdet(num_pixels)
        z, ld = self.invconv(z)
        logdet = logdet + ld
        if self.affine is not None:
            z, ld = self.affine.encode(z, cc) if cc is not None else self.affine.plain_encode(z, ft)
            logdet = logdet + ld
        return z, logdet

    def decode(self, z: Tensor, cc: CouplingCondition | None = None, ft: Tensor | None = None) -> Tensor:
        if self.affine is not None:
            z = self.affine.decode(z, cc) if cc is not None else self.affine.plain_decode(z, ft)
        z = self.invconv.reverse(z)
        return self.actnorm.reverse(z)

    @torch.no_grad()
    def rebalance_after_randomize_(self) -> None:
        """After random parameters (:func:`~flowprior_plugin.layers.random_init.randomize_parameters_`):
        a near-zero coupling scales by sigmoid(2) + eps twice per step; let the step's ActNorm undo
        that on average (as the data-dependent init would) so a deep flow neither shrinks nor blows up."""
        if self.affine is not None:
            self.actnorm.logs.sub_(2 * math.log(1 / (1 + math.exp(-2.0)) + self.affine.eps))


class Split2d(nn.Module):
    """Factor out half of the channels as a latent, Gaussian given the other half.

    Args:
        channels (int): Channels C before the split; the first ``C - C//2`` pass on.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c_consume = channels // 2
        self.c_pass = channels - self.c_consume
        self.conv = Conv2dZeros(self.c_pass, 2 * self.c_consume, 3)

    def _prior(self, z1: Tensor) -> tuple[Tensor, Tensor]:
        return cross_split(self.conv(z1))

    def encode(self, z: Tensor, logdet: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(z1, eps, logdet)``; the split's log-prob is added to logdet."""
        z1, z2 = z[:, : self.c_pass], z[:, self.c_pass :]
        mean, logs = self._prior(z1)
        logdet = logdet + gaussian_log_prob(z2, mean, logs)
        return z1, (z2 - mean) * torch.exp(-logs), logdet

    def decode(self, z1: Tensor, eps: Tensor) -> Tensor:
        mean, logs = self._prior(z1)
        return torch.cat((z1, mean + torch.exp(logs) * eps), 1)


class FlowUpsamplerNet(nn.Module):
    """The flow (the checkpoint's ``flowUpsamplerNet`` child).

    Per level 1..L: a squeeze, ``n_no_coupling_steps`` steps without coupling, K coupled steps, and
    a split if the level is below L-1 (and ``split``).

    Args:
        channels (int): HR image channels. Default: 3.
        L (int): Number of levels. Default: 3.
        K (int): Coupled steps per level. Default: 16.
        n_no_coupling_steps (int): Uncoupled steps at the start of each level. Default: 2.
        hidden_channels (int): Hidden channels of the coupling nets. Default: 64.
        cond_channels (int): Channels of every conditional. Default: 320.
        split (bool): Whether levels below L-1 factor out half of their channels. Default: True.
        eps (float): Coupling scale epsilon. Default: 1e-4.
    """

    def __init__(
        self,
        channels: int = 3,
        L: int = 3,
        K: int = 16,
        n_no_coupling_steps: int = 2,
        hidden_channels: int = 64,
        cond_channels: int = 320,
        split: bool = True,
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        self.layer_levels: list[int] = []  # level (1..L) of each layer
        # (channels, level) of each latent, in latent order: split eps of levels 1.., then the top z.
        self.latent_specs: list[tuple[int, int]] = []
        c = channels
        for level in range(1, L + 1):
            self.layers.append(SqueezeLayer())
            self.layer_levels.append(level)
            c *= 4
            for i in range(n_no_coupling_steps + K):
                coupled = i >= n_no_coupling_steps
                self.layers.append(FlowStep(c, cond_channels, hidden_channels, coupled, eps))
                self.layer_levels.append(level)
            if split and level < L - 1:
                layer = Split2d(c)
                self.layers.append(layer)
                self.layer_levels.append(level)
                self.latent_specs.append((layer.c_consume, level))
                c = layer.c_pass
        self.latent_specs.append((c, L))
        # Kept for checkpoint compatibility only; never used.
        self.f = nn.Sequential(nn.Conv2d(cond_channels, _UNUSED_F_CHANNELS, 3, 1, 1))


def read_srflow_architecture(shapes: Mapping[str, Sequence[int]]) -> dict[str, int | None]:
    """The SRFlow architecture a state dict holds, read from its keys and shapes.

    Args:
        shapes: State-dict keys mapped to tensors or shapes. Keys BasicSR renamed with a trailing
            ``.ignore`` (size mismatch) are read like the original key.

    Returns:
        dict: scale, nb, K, L, nf, gc, in_nc, hidden_channels, n_no_coupling_steps, cond_channels and
        splits; a field is None where the state dict does not reveal it (e.g. no flow keys).
    """
    keys = state_dict_shapes(shapes)

    arch: dict[str, int | None] = dict.fromkeys(
        (
            'scale',
            'nb',
            'K',
            'L',
            'nf',
            'gc',
            'in_nc',
            'hidden_channels',
            'n_no_coupling_steps',
            'cond_channels',
            'splits',
        )
    )
    trunk = key_indices(keys, r'RRDB\.RRDB_trunk\.(\d+)\.')
    arch['nb'] = trunk[-1] + 1 if trunk else (0 if 'RRDB.conv_first.weight' in keys else None)
    upconvs = key_indices(keys, r'RRDB\.upconv(\d+)\.weight$')
    arch['scale'] = 2 ** upconvs[-1] if upconvs else None
    arch['nf'] = shape_dim(keys, 'RRDB.conv_first.weight', 0)
    arch['in_nc'] = shape_dim(keys, 'RRDB.conv_first.weight', 1)
    arch['gc'] = shape_dim(keys, 'RRDB.RRDB_trunk.0.RDB1.conv1.weight', 0)

    layer_indices = key_indices(keys, r'flowUpsamplerNet\.layers\.(\d+)\.')
    if layer_indices:
        present = set(layer_indices)
        # Squeezes hold no parameters: they are the gaps in the layer indices (one per level).
        levels = sum(1 for i in range(layer_indices[-1] + 1) if i not in present)
        steps = key_indices(keys, r'flowUpsamplerNet\.layers\.(\d+)\.actnorm\.bias$')
        coupled = key_indices(keys, r'flowUpsamplerNet\.layers\.(\d+)\.affine\.fAffine\.0\.weight$')
        arch['L'] = levels
        arch['splits'] = len(key_indices(keys, r'flowUpsamplerNet\.layers\.(\d+)\.conv\.weight$'))
        if levels:
            arch['K'] = len(coupled) // levels
            arch['n_no_coupling_steps'] = (len(steps) - len(coupled)) // levels
        if coupled:
            first = f'flowUpsamplerNet.layers.{coupled[0]}.affine.fFeatures.0.weight'
            arch['hidden_channels'] = shape_dim(keys, first, 0)
            arch['cond_channels'] = shape_dim(keys, first, 1)
    return arch


_CORE_FIELDS = ('nb', 'K', 'L')
_EXTRA_FIELDS = ('nf', 'gc', 'in_nc', 'hidden_channels', 'n_no_coupling_steps', 'cond_channels', 'splits')


# What identifies a released config (cond_channels and splits follow from these).
_OFFICIAL_FIELDS = ('scale', 'nb', 'K', 'L', 'nf', 'gc', 'in_nc', 'hidden_channels', 'n_no_coupling_steps')


def _official_name(arch: Mapping[str, int | None]) -> str | None:
    official = {name: official_srflow_options(name) for name in SRFLOW_OFFICIAL_CONFIGS}
    return official_config_name(arch, official, _OFFICIAL_FIELDS)


def describe_srflow_architecture(arch: Mapping[str, int | None], differ: Sequence[str] = ()) -> str:
    """ "SRFlow 4X, nb=23, K=16, L=3 (the official DF2K 4X config)": scale, nb, K, L, the other
    fields where they are in ``differ``, and the released config it matches."""
    extra = [k for k in _EXTRA_FIELDS if k in differ]
    return 'SRFlow ' + describe_scaled_architecture(arch, (*_CORE_FIELDS, *extra), _official_name(arch))


SRFLOW_CHECKPOINT_FORMAT = CheckpointFormat(
    family='SRFlow', read_architecture=read_srflow_architecture, describe=describe_srflow_architecture
)


@ARCH_REGISTRY.register()
class SRFlowNet(ActNormFlowNet):
    """SRFlow: conditional normalising flow for super-resolution, implementing the FlowSRProtocol protocol.

    Level l (1..L) of the flow works at HR/2^l (LR * scale / 2^l) and is conditioned on the RRDB
    feature at that resolution (``fea_up{scale/2^l}``; ``fea_up0`` for half the LR size).

    Args:
        in_nc (int): LR channels. Default: 3.
        out_nc (int): HR channels (the flow's image channels). Default: 3.
        nf (int): RRDB feature channels. Default: 64.
        nb (int): Number of RRDB blocks. Default: 23.
        gc (int): RRDB growth channels. Default: 32.
        scale (int): Upscaling factor, a power of 2. Default: 4.
        K (int): Coupled flow steps per level. Default: 16.
        L (int | None): Flow levels; None derives log2(scale) + 1. Default: None.
        hidden_channels (int): Hidden channels of the coupling nets. Default: 64.
        n_no_coupling_steps (int): Uncoupled flow steps at the start of each level. Default: 2.
        split (bool): Whether levels below L-1 factor out half of their channels. Default: True.
        stacked_blocks (Sequence[int]): RRDB blocks whose outputs are appended to every
            conditional. Default: (1, 8, 15, 22).
        quant (int): Quantisation levels of the dequantisation noise in :meth:`nll`. Default: 32.
        eps (float): Added to the coupling scales (they never reach 0). Default: 1e-4.
        tile_rrdb (str): Where tiled prediction gets a tile's RRDB features: ``'crop'`` runs the
            RRDB on the tile's own LR box (memory flat in the image size; the RRDB's context is
            cut at the box, which the margin absorbs), ``'whole'`` runs it once on the whole LR
            and cuts the tile's features from it (exact features; 1.25 KiB per LR pixel kept).
            Measured trade-off: docs/tiling.md. No parameters: checkpoints are the same.
            Default: 'crop'.
    """

    family = 'SRFlow'
    checkpoint_format = SRFLOW_CHECKPOINT_FORMAT
    condition_type = SRFlowCondition
    # The release's dequantisation noise is centred: U(-0.5, 0.5) / quant.
    dequantization_offset = 0.5

    def __init__(
        self,
        in_nc: int = 3,
        out_nc: int = 3,
        nf: int = 64,
        nb: int = 23,
        gc: int = 32,
        scale: int = 4,
        K: int = 16,
        L: int | None = None,
        hidden_channels: int = 64,
        n_no_coupling_steps: int = 2,
        split: bool = True,
        stacked_blocks: Sequence[int] = (1, 8, 15, 22),
        quant: int = 32,
        eps: float = 1e-4,
        tile_rrdb: str = 'crop',
    ) -> None:
        super().__init__()
        if tile_rrdb not in ('crop', 'whole'):
            raise ValueError(f"SRFlowNet: tile_rrdb must be 'crop' or 'whole', got {tile_rrdb!r}")
        self.tile_rrdb = tile_rrdb
        if scale < 2 or scale & (scale - 1):
            raise ValueError(f'SRFlowNet: scale must be a power of 2 (2, 4, 8, ...), got {scale}')
        max_levels = int(math.log2(scale)) + 1
        if L is None:
            L = max_levels
        if not 1 <= L <= max_levels:
            raise ValueError(
                f'SRFlowNet: L must be between 1 and log2(scale) + 1 = {max_levels} at {scale}X '
                f'(level l needs an RRDB feature at LR * {scale} / 2^l, at least half the LR), got {L}'
            )
        bad = [i for i in stacked_blocks if not 0 <= int(i) < nb]
        if bad:
            raise ValueError(f'SRFlowNet: stacked_blocks {list(stacked_blocks)} name blocks outside 0..{nb - 1}')
        self.in_nc, self.out_nc = in_nc, out_nc
        self.scale = scale
        self.L = L
        self.K = K
        self.quant = quant
        # The top level works at HR / 2^L: LR sides must be multiples of 2^L / scale (2 by default).
        self.lr_multiple = max(1, 2**L // scale)
        cond_channels = nf * (1 + len(stacked_blocks))

        self.RRDB = SRFlowRRDB(in_nc, out_nc, nf, nb, gc, scale, stacked_blocks)
        self.flowUpsamplerNet = FlowUpsamplerNet(
            out_nc, L, K, n_no_coupling_steps, hidden_channels, cond_channels, split, eps
        )
        # RRDB resolution factor (0 = half the LR) that conditions each level.
        self._level_factor = {level: scale // 2**level if 2**level <= scale else 0 for level in range(1, L + 1)}
        # Tensors kept only so official checkpoints load strictly (HRconv, conv_last, f, upconvs above
        # the finest level's resolution) never get a gradient: freezing them lets DDP and the
        # optimizer skip them instead of waiting for gradients that never come.
        top = max(self._level_factor.values())
        unused = [self.RRDB.HRconv, self.RRDB.conv_last, self.flowUpsamplerNet.f]
        unused += [getattr(self.RRDB, f'upconv{n}') for n in range(1, self.RRDB.num_upconvs + 1) if 2**n > top]
        for module in unused:
            module.requires_grad_(False)

    # ------------------------------------------------------------------ checks
    @property
    def _hr_channels(self) -> int:
        return self.out_nc

    def _check_lq(self, lq: Tensor) -> None:
        super()._check_lq(lq)
        m = self.lr_multiple
        if lq.shape[2] % m or lq.shape[3] % m:
            need = 'even LR sides' if m == 2 else f'LR sides divisible by {m}'
            # Validation and test pad the LR and crop the SR back; training cannot (the loss needs
            # the whole gt), so there the fix is the crop size.
            raise InputShapeError(
                f'SRFlow needs {need} (its last flow level works at half the LR size), got an LR of shape '
                f'{tuple(lq.shape)}; in training choose datasets.train.gt_size so that gt_size / scale is a '
                f'multiple of {m} (validation and test pad the LR themselves)'
            )

    def latent_shapes(self, lq_shape: Sequence[int]) -> list[tuple[int, int, int, int]]:
        """Shapes of the latents for an LR of shape ``lq_shape`` (split eps first, top z last)."""
        b, _, h, w = lq_shape
        return [
            (b, c, h * self.scale // 2**level, w * self.scale // 2**level)
            for c, level in self.flowUpsamplerNet.latent_specs
        ]

    # ------------------------------------------------------------------ flow
    def _run_encode(
        self, z: Tensor, logdet: Tensor, cond: SRFlowCondition | None, features: dict[int, Tensor] | None = None
    ) -> tuple[Latents, Tensor]:
        flow = self.flowUpsamplerNet
        latents = []
        for idx, layer in enumerate(flow.layers):
            if isinstance(layer, SqueezeLayer):
                z = layer(z)
            elif isinstance(layer, FlowStep):
                if cond is not None:
                    z, logdet = layer.encode(z, logdet, cc=cond.couplings.get(idx))
                else:
                    z, logdet = layer.encode(z, logdet, ft=features[flow.layer_levels[idx]])
            else:
                z, eps, logdet = layer.encode(z, logdet)
                latents.append(eps)
        latents.append(z)
        return latents, logdet

    def _run_decode(
        self, latents: Latents, cond: SRFlowCondition | None, features: dict[int, Tensor] | None = None
    ) -> Tensor:
        flow = self.flowUpsamplerNet
        z = latents[-1]
        pending = len(latents) - 1  # split eps are consumed from the deepest split to the first
        for idx in range(len(flow.layers) - 1, -1, -1):
            layer = flow.layers[idx]
            if isinstance(layer, SqueezeLayer):
                z = unsqueeze2d(z, 2)
            elif isinstance(layer, FlowStep):
                if cond is not None:
                    z = layer.decode(z, cc=cond.couplings.get(idx))
                else:
                    z = layer.decode(z, ft=features[flow.layer_levels[idx]])
            else:
                pending -= 1
                z = layer.decode(z, latents[pending])
        return z

    # ------------------------------------------------------------------ protocol
    def condition(self, lq: Tensor) -> SRFlowCondition:
        """Everything that depends on the LR alone: RRDB conditionals (only at the resolutions a
        level uses) and, per affine coupling, the injector's shift/scale and ``conv_ft(ft)``.

        Args:
            lq: LR batch (B, in_nc, h, w), h and w multiples of ``lr_multiple``.

        Returns:
            SRFlowCondition: pass it as ``cond`` to the other methods for the same ``lq``.
        """
        self._check_lq(lq)
        return self._condition_from_features(lq, self.RRDB.conditionals(lq, sorted(set(self._level_factor.values()))))

    def _condition_from_features(self, lq: Tensor, features: dict[str, Tensor]) -> SRFlowCondition:
        flow = self.flowUpsamplerNet
        couplings = {}
        for idx, layer in enumerate(flow.layers):
            if isinstance(layer, FlowStep) and layer.affine is not None:
                ft = features[_feature_name(self._level_factor[flow.layer_levels[idx]])]
                couplings[idx] = layer.affine.condition(ft)
        return SRFlowCondition(lq_shape=tuple(lq.shape), features=features, couplings=couplings)

    # ------------------------------------------------------------------ tiling hooks
    def tile_context(self, lq: Tensor, hr_size: Sequence[int]) -> tuple[Tensor, Tensor | None] | None:
        """With ``tile_rrdb='whole'``: the RRDB trunk of the whole LR, computed once, so a tile cuts
        the whole image's features (exact: the trunk's receptive field spans hundreds of LR pixels,
        which no affordable margin covers). It runs in row bands (:data:`TRUNK_BAND_ROWS`), so only
        its kept features (320 channels at LR resolution) grow with the image. With ``'crop'``:
        nothing (each tile runs the RRDB on its own box)."""
        self._check_lq(lq)
        if self.tile_rrdb == 'crop':
            return None
        return self.RRDB.trunk(lq, band_rows=TRUNK_BAND_ROWS)

    def tile_inputs(self, lq: Tensor, context: Any, box: Sequence[int], hr_size: Sequence[int]) -> TileInputs:
        """The LR crop under ``box`` with the conditionals cut from the whole LR's trunk (exact:
        the cut keeps ``_TILE_HALO`` LR pixels more on each side for the local upconvs, then drops
        them); the couplings' own convolutions see the crop, and the tile's margin absorbs that.
        Without a context (``tile_rrdb='crop'``): the crop conditioned on its own, as any flow."""
        if context is None:
            return super().tile_inputs(lq, context, box, hr_size)
        top, bottom, left, right = (int(v) // self.scale for v in box)
        h, w = lq.shape[-2:]
        rows = (max(0, top - _TILE_HALO), min(h, bottom + _TILE_HALO))
        cols = (max(0, left - _TILE_HALO), min(w, right + _TILE_HALO))
        trunk = tuple(t if t is None else t[..., rows[0] : rows[1], cols[0] : cols[1]] for t in context)
        factors = sorted(set(self._level_factor.values()))
        features = {}
        for name, feat in self.RRDB.conditionals(lq, factors, trunk).items():
            per_lr = feat.shape[-2] / (rows[1] - rows[0])  # feature pixels per LR pixel (1/2 .. scale)
            r0, c0 = int((top - rows[0]) * per_lr), int((left - cols[0]) * per_lr)
            features[name] = feat[..., r0 : r0 + int((bottom - top) * per_lr), c0 : c0 + int((right - left) * per_lr)]
        crop = lq[..., top:bottom, left:right]
        return TileInputs(crop, self._condition_from_features(crop, features), None, tuple(box))

    def encode(self, lq: Tensor, gt: Tensor, cond: FlowCondition | None = None, out_size: OutputSize = None) -> Latents:
        """HR -> latents ``[split eps (level 1), ..., top z]``, deterministic (no dequantisation noise).

        Args:
            lq: LR batch (B, in_nc, h, w).
            gt: HR batch (B, out_nc, h*scale, w*scale).
            cond: ``condition(lq)`` to reuse; computed when None. Default: None.
            out_size: None, or a whole-image ``HRWindow`` (a fixed-scale flow). Default: None.

        Returns:
            list[Tensor]: The latents, in the release's order.
        """
        self._check_lq(lq)
        self._check_gt(lq, gt)
        self._check_out_size(lq, out_size)
        cond = self._resolve_cond(lq, cond)
        logdet = gt.new_zeros(gt.shape[0])
        return self._run_encode(gt, logdet, cond)[0]

    def decode(
        self,
        lq: Tensor,
        latents: Latents,
        cond: FlowCondition | None = None,
        out_size: OutputSize = None,
    ) -> Tensor:
        """Latents -> SR image (not clamped); differentiable w.r.t. the latents.

        Never mutates ``latents`` nor any parameter or buffer (ActNorm data init is switched off).

        Args:
            lq: LR batch (B, in_nc, h, w).
            latents: ``[split eps ..., top z]`` with the shapes of :meth:`latent_shapes`.
            cond: ``condition(lq)`` to reuse; computed when None. Default: None.
            out_size: HR (height, width); must be ``lq * scale`` (a fixed-scale flow; ValueError
                otherwise). Default: None.

        Returns:
            Tensor: SR batch (B, out_nc, h*scale, w*scale).
        """
        self._check_lq(lq)
        self._check_out_size(lq, out_size)
        self._check_latents(lq, latents)
        with actnorm_init_disabled():
            cond = self._resolve_cond(lq, cond)
            return self._run_decode(list(latents), cond)

    def nll(
        self,
        lq: Tensor,
        gt: Tensor,
        cond: FlowCondition | None = None,
        dequantize: bool = False,
        generator: torch.Generator | None = None,
        out_size: OutputSize = None,
    ) -> Tensor:
        """Negative log-likelihood of ``gt`` given ``lq`` in bits per HR pixel, shape (B,).

        ``-(logdet + log N(z_top; 0, I)) / (ln 2 * H * W)`` with H*W the HR pixel count; the split
        log-probs are inside logdet.

        Args:
            lq: LR batch (B, in_nc, h, w).
            gt: HR batch (B, out_nc, h*scale, w*scale) in [0, 1].
            cond: ``condition(lq)`` to reuse; computed when None. Default: None.
            dequantize: Add U(-0.5, 0.5)/quant noise to gt and its ``-log(quant) * H * W`` log-det
                term, as in likelihood training. Default: False.
            generator: Random generator of the noise. Default: None.
            out_size: None, or a whole-image ``HRWindow`` (a fixed-scale flow). Default: None.

        Returns:
            Tensor: Bits per pixel, one per image.
        """
        gt, cond, logdet = self._start_nll(lq, gt, cond, dequantize, generator, out_size)
        latents, logdet = self._run_encode(gt, logdet, cond)
        objective = logdet + gaussian_log_prob(latents[-1])
        return self._bits_per_pixel(objective, gt)

    def latent_channels(self) -> list[int]:
        """Channel count of each latent in latent order ([6, 96] at 4X, [6, 12, 192] at 8X)."""
        return [c for c, _ in self.flowUpsamplerNet.latent_specs]

    # ------------------------------------------------------------------ plain computation (checks)
    def _plain_features(self, lq: Tensor) -> dict[int, Tensor]:
        # As the release: conditionals at every resolution, the unused highest one included.
        factors = [0] + [2**n for n in range(int(math.log2(self.scale)) + 1)]
        named = self.RRDB.conditionals(lq, factors)
        return {level: named[_feature_name(f)] for level, f in self._level_factor.items()}

    def plain_encode(self, lq: Tensor, gt: Tensor) -> Latents:
        """:meth:`encode` computed the plain way (no cached condition, concat convolutions, every
        RRDB resolution computed as the release does). Slow; for verification."""
        self._check_lq(lq)
        self._check_gt(lq, gt)
        return self._run_encode(gt, gt.new_zeros(gt.shape[0]), None, self._plain_features(lq))[0]

    def plain_decode(self, lq: Tensor, latents: Latents) -> Tensor:
        """:meth:`decode` computed the plain way (see :meth:`plain_encode`). Slow; for verification."""
        self._check_lq(lq)
        self._check_latents(lq, latents)
        with actnorm_init_disabled():
            return self._run_decode(list(latents), None, self._plain_features(lq))
