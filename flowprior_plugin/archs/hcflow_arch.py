"""HCFlow (Liang et al., ICCV 2021): a hierarchical conditional flow HR <-> (LR, latents).

Keys, shapes and order are those of the released checkpoints: the HCFlow, HCFlow+ and HCFlow++
files (one layout) and the CelebA 8X file load with ``strict=True``. The latents are each level's
standardised variable, finest level first; ``encode``/``decode`` condition on the given LR,
``encode_hr`` and ``nll`` on the flow's own LR as the release does. Details: ``docs/hcflow.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
    unsqueeze2d,
)
from flowprior_plugin.layers.rrdb import RRDB

# Constructor arguments of the two released configurations (test_SR_{DF2K_4X,CelebA_8X}_HCFlow.yml).
HCFLOW_OFFICIAL_CONFIGS: dict[str, dict] = {
    'DF2K 4X': dict(scale=4, nb=7),
    'CelebA 8X': dict(scale=8, nb=5),
}
_OFFICIAL_COMMON = dict(in_nc=3, nf=64, gc=32, K=26, n_additional_steps=13, hidden_channels=64)


def official_hcflow_options(name: str) -> dict:
    """Constructor arguments of :class:`HCFlowNet` for a released config ('DF2K 4X', 'CelebA 8X')."""
    return official_options('HCFlow', HCFLOW_OFFICIAL_CONFIGS, _OFFICIAL_COMMON, name)


def quantize_straight_through(y: Tensor) -> Tensor:
    """``round(clamp(y, 0, 1) * 255) / 255`` (an 8-bit image) with the identity as its gradient
    (straight through the rounding and the clamp, as the release's quantiser).

    Args:
        y: Any tensor.

    Returns:
        Tensor: The quantised values, same shape and dtype.
    """
    quantized = torch.round(y.clamp(0.0, 1.0) * 255.0) / 255.0
    return y + (quantized - y).detach()


# ---------------------------------------------------------------------- layers


class CouplingNet(nn.Module):
    """The coupling's ``f``: conv3x3 (no bias) + ActNorm -> ReLU -> conv1x1 (no bias) + ActNorm ->
    ReLU -> zero conv3x3 scaled by ``exp(3 * logs)`` (keys ``conv1``, ``conv2``, ``conv3``).

    Args:
        in_channels (int): Input channels (z1, plus the condition's channels if any).
        out_channels (int): Output channels (shift and scale of z2, interleaved).
        hidden_channels (int): Hidden channels. Default: 64.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 64) -> None:
        super().__init__()
        self.conv1 = Conv2dActNorm(in_channels, hidden_channels, 3)
        self.conv2 = Conv2dActNorm(hidden_channels, hidden_channels, 1)
        self.conv3 = Conv2dZeros(hidden_channels, out_channels, 3)

    def from_first(self, pre: Tensor) -> Tensor:
        """The rest of the net given conv1's output before its ActNorm."""
        h = torch.relu(self.conv1.actnorm(pre))
        return self.conv3(torch.relu(self.conv2(h)))


class AffineCoupling(nn.Module):
    """HCFlow's affine coupling with a bounded log-scale.

    ``z1`` = the first C//2 channels, ``h = f(z1)`` or ``f(cat(z1, u))`` with a condition u,
    ``shift, s = h[:, 0::2], h[:, 1::2]``, ``log_scale = 0.318 * atan(2 s)`` (within +-0.5, so the
    inverse never divides by a tiny scale), ``z2' = (z2 + shift) * exp(log_scale)``.

    f's first convolution has no bias and is linear in ``cat(z1, u)``, so it splits into
    ``conv_z1(z1) + conv_u(u)``; ``condition_term(u)`` is the second part, which a caller may cache.

    Args:
        channels (int): Channels C of the flow.
        cond_channels (int): Channels of the condition u (0: unconditional). Default: 0.
        hidden_channels (int): Hidden channels of f. Default: 64.
        log_scale_factor (float): Multiplier of ``atan(2 s)``. Default: 0.318.
    """

    def __init__(
        self, channels: int, cond_channels: int = 0, hidden_channels: int = 64, log_scale_factor: float = 0.318
    ) -> None:
        super().__init__()
        self.c1 = channels // 2
        self.c2 = channels - self.c1
        self.cond_channels = cond_channels
        self.log_scale_factor = log_scale_factor
        self.f = CouplingNet(self.c1 + cond_channels, 2 * self.c2, hidden_channels)

    def condition_term(self, u: Tensor) -> Tensor:
        """``conv_u(u)``: the condition's part of f's first convolution (depends on u alone)."""
        conv1 = self.f.conv1
        return F.conv2d(u, conv1.weight[:, self.c1 :], padding=conv1.padding)

    def _shift_log_scale(self, z1: Tensor, u_term: Tensor | None, u: Tensor | None) -> tuple[Tensor, Tensor]:
        conv1 = self.f.conv1
        if u is not None:  # the plain way: one convolution of the concatenation
            pre = F.conv2d(torch.cat((z1, u), 1), conv1.weight, padding=conv1.padding)
        elif self.cond_channels:
            pre = F.conv2d(z1, conv1.weight[:, : self.c1], padding=conv1.padding) + u_term
        else:
            pre = F.conv2d(z1, conv1.weight, padding=conv1.padding)
        shift, s = cross_split(self.f.from_first(pre))
        return shift, self.log_scale_factor * torch.atan(2.0 * s)

    def encode(self, z: Tensor, u_term: Tensor | None = None, u: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns ``(z', logdet)`` with logdet of shape (B,). Conditional couplings need either the
        cached ``u_term`` or the condition ``u`` itself."""
        z1, z2 = z[:, : self.c1], z[:, self.c1 :]
        shift, log_scale = self._shift_log_scale(z1, u_term, u)
        z2 = (z2 + shift) * torch.exp(log_scale)
        return torch.cat((z1, z2), 1), log_scale.flatten(1).sum(1)

    def decode(self, z: Tensor, u_term: Tensor | None = None, u: Tensor | None = None) -> Tensor:
        z1, z2 = z[:, : self.c1], z[:, self.c1 :]
        shift, log_scale = self._shift_log_scale(z1, u_term, u)
        return torch.cat((z1, z2 * torch.exp(-log_scale) - shift), 1)


class HCFlowStep(nn.Module):
    """ActNorm -> invertible 1x1 conv (key ``permute``) -> affine coupling.

    Args:
        channels (int): Flow channels C.
        cond_channels (int): Channels of the coupling's condition (0: none). Default: 0.
        hidden_channels (int): Hidden channels of the coupling net. Default: 64.
        log_scale_factor (float): The coupling's log-scale factor. Default: 0.318.
    """

    def __init__(
        self, channels: int, cond_channels: int = 0, hidden_channels: int = 64, log_scale_factor: float = 0.318
    ) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.permute = InvertibleConv1x1(channels)
        self.affine = AffineCoupling(channels, cond_channels, hidden_channels, log_scale_factor)

    def encode(
        self, z: Tensor, logdet: Tensor, u_term: Tensor | None = None, u: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        num_pixels = z.shape[2] * z.shape[3]
        z = self.actnorm(z)
        logdet = logdet + self.actnorm.logdet(num_pixels)
        z, ld = self.permute(z)
        logdet = logdet + ld
        z, ld = self.affine.encode(z, u_term, u)
        return z, logdet + ld

    def decode(self, z: Tensor, u_term: Tensor | None = None, u: Tensor | None = None) -> Tensor:
        z = self.affine.decode(z, u_term, u)
        z = self.permute.reverse(z)
        return self.actnorm.reverse(z)


class SplitLayer(nn.Module):
    """Keep the first ``keep`` channels, hand the rest on as the level's latent (no parameters).

    Args:
        keep (int): Channels passed on to the next level (C/2; the image channels at the last level).
        level (int): Index of the level (0 = finest) whose latent this split produces.
    """

    def __init__(self, keep: int, level: int) -> None:
        super().__init__()
        self.keep = keep
        self.level = level

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z[:, : self.keep], z[:, self.keep :]


@dataclass
class LevelCondition:
    """What the conditional part of one level needs, computed from its condition features.

    Attributes:
        features: Condition features F_l (B, 2*nf, H_l, W_l).
        mean: Mean of the level's Gaussian (B, C_l, H_l, W_l).
        logstd: Log-std of the level's Gaussian, same shape.
        step_terms: Per conditional step, ``conv_u(F_l)`` of its coupling (None: compute plainly).
    """

    features: Tensor
    mean: Tensor
    logstd: Tensor
    step_terms: list[Tensor] | None = None


class ConditionalLevel(nn.Module):
    """One level's conditional flow (the checkpoint's ``levelN_condFlow``).

    A condition network turns the condition u into features ``cat(t0, trunk_conv1(t1) + fea)``
    (``fea = conv_first(u)``, ``t0 = RRDB_trunk0(fea)``, ``t1 = RRDB_trunk1(t0)``; 2*nf channels);
    ``n_steps`` conditional flow steps act on the level's latent with those features as their
    coupling condition, and the zero conv ``f`` gives the Gaussian's mean and log-std (cross split).

    Args:
        latent_channels (int): Channels of the level's latent a_l.
        cond_in_channels (int): Channels of the condition u.
        nf (int): Feature channels of the condition network. Default: 64.
        nb (int): RRDB blocks per trunk. Default: 7.
        gc (int): RRDB growth channels. Default: 32.
        n_steps (int): Conditional flow steps. Default: 13.
        hidden_channels (int): Hidden channels of the coupling nets. Default: 64.
        log_scale_factor (float): The couplings' log-scale factor. Default: 0.318.
    """

    def __init__(
        self,
        latent_channels: int,
        cond_in_channels: int,
        nf: int = 64,
        nb: int = 7,
        gc: int = 32,
        n_steps: int = 13,
        hidden_channels: int = 64,
        log_scale_factor: float = 0.318,
    ) -> None:
        super().__init__()
        # Attribute order gives the checkpoint's key order.
        self.conv_first = nn.Conv2d(cond_in_channels, nf, 3, 1, 1)
        self.RRDB_trunk0 = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.RRDB_trunk1 = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.additional_flow_steps = nn.ModuleList(
            HCFlowStep(latent_channels, 2 * nf, hidden_channels, log_scale_factor) for _ in range(n_steps)
        )
        self.f = Conv2dZeros(2 * nf, 2 * latent_channels, 3)
        self.feature_channels = 2 * nf

    def first_term(self, u_part: Tensor, first_channel: int) -> Tensor:
        """``conv_first`` restricted to the input channels from ``first_channel`` on, bias included
        (the part of a concatenated condition that depends on the LR alone)."""
        w = self.conv_first.weight[:, first_channel : first_channel + u_part.shape[1]]
        return F.conv2d(u_part, w, self.conv_first.bias, padding=1)

    def features(self, u: Tensor | None = None, first: Tensor | None = None) -> Tensor:
        """Condition features from the condition ``u``, or from ``conv_first``'s output ``first``."""
        fea = self.conv_first(u) if first is None else first
        t0 = self.RRDB_trunk0(fea)
        t1 = self.RRDB_trunk1(t0)
        return torch.cat((t0, self.trunk_conv1(t1) + fea), 1)

    def level_condition(self, features: Tensor, plain: bool = False) -> LevelCondition:
        """Mean, log-std and (unless ``plain``) every step's coupling term from the features."""
        mean, logstd = cross_split(self.f(features))
        terms = None if plain else [step.affine.condition_term(features) for step in self.additional_flow_steps]
        return LevelCondition(features, mean, logstd, terms)

    def encode(self, a: Tensor, lc: LevelCondition) -> tuple[Tensor, Tensor]:
        """a_l -> (eps_l, log-likelihood of a_l given the condition, (B,)): the steps' log-dets plus
        ``log N(h; mean, exp(logstd)^2)``."""
        logdet = a.new_zeros(a.shape[0])
        h = a
        for i, step in enumerate(self.additional_flow_steps):
            if lc.step_terms is None:
                h, logdet = step.encode(h, logdet, u=lc.features)
            else:
                h, logdet = step.encode(h, logdet, u_term=lc.step_terms[i])
        eps = (h - lc.mean) * torch.exp(-lc.logstd)
        return eps, logdet + gaussian_log_prob(h, lc.mean, lc.logstd)

    def decode(self, eps: Tensor, lc: LevelCondition) -> Tensor:
        h = lc.mean + torch.exp(lc.logstd) * eps
        for i in range(len(self.additional_flow_steps) - 1, -1, -1):
            step = self.additional_flow_steps[i]
            if lc.step_terms is None:
                h = step.decode(h, u=lc.features)
            else:
                h = step.decode(h, u_term=lc.step_terms[i])
        return h


class HierarchicalFlow(nn.Module):
    """The flow (the checkpoint's ``flow`` child): ``layers`` (squeezes, unconditional steps and
    splits of every level) and one ``level{l}_condFlow`` per level, l = 0 the finest.

    Args:
        channels (int): Image channels (HR and LR). Default: 3.
        L (int): Levels, log2 of the scale. Default: 2.
        n_main_steps (int): Unconditional steps per level before the split. Default: 13.
        n_additional_steps (int): Conditional steps per level after the split. Default: 13.
        nf (int): Feature channels of the condition networks. Default: 64.
        nb (int): RRDB blocks per condition-network trunk. Default: 7.
        gc (int): RRDB growth channels. Default: 32.
        hidden_channels (int): Hidden channels of every coupling net. Default: 64.
        log_scale_factor (float): The couplings' log-scale factor. Default: 0.318.
    """

    def __init__(
        self,
        channels: int = 3,
        L: int = 2,
        n_main_steps: int = 13,
        n_additional_steps: int = 13,
        nf: int = 64,
        nb: int = 7,
        gc: int = 32,
        hidden_channels: int = 64,
        log_scale_factor: float = 0.318,
    ) -> None:
        super().__init__()
        self.L = L
        self.layers = nn.ModuleList()
        self.keep_channels: list[int] = []  # per level: channels kept (y's at the last level)
        self.latent_channels: list[int] = []  # per level: channels of a_l
        c = channels
        for level in range(L):
            self.layers.append(SqueezeLayer())
            c *= 4
            for _ in range(n_main_steps):
                self.layers.append(HCFlowStep(c, 0, hidden_channels, log_scale_factor))
            keep = c // 2 if level < L - 1 else channels
            self.layers.append(SplitLayer(keep, level))
            self.keep_channels.append(keep)
            self.latent_channels.append(c - keep)
            c = keep
        for level in range(L):
            # Level l's condition: its kept channels and the features of every coarser level.
            cond_in = self.keep_channels[level] + 2 * nf * (L - 1 - level)
            cond_level = ConditionalLevel(
                self.latent_channels[level], cond_in, nf, nb, gc, n_additional_steps, hidden_channels, log_scale_factor
            )
            setattr(self, f'level{level}_condFlow', cond_level)

    def cond_level(self, level: int) -> ConditionalLevel:
        return getattr(self, f'level{level}_condFlow')


# ---------------------------------------------------------------------- conditioning cache


@dataclass
class HCFlowCondition(FlowCondition):
    """Everything HCFlow computes from the LR alone (see :meth:`HCFlowNet.condition`).

    What can be cached: the coarsest level's condition is the LR itself, so its condition-network
    features F_{L-1}, its Gaussian's mean and log-std and every conditional coupling's
    ``conv_u(F_{L-1})`` depend on the LR only. Every finer level's condition contains F_{L-1}
    (upsampled), so the part of its ``conv_first`` that reads F_{L-1} is cached too (conv_first is
    linear: the concatenation's convolution is a sum over channel slices).

    What cannot: a finer level's condition also holds its kept channels, which in an encode come
    from the HR and in a decode from the reverse pass of the coarser levels (they depend on the
    latents). Its condition network (two RRDB trunks at that level's resolution), its Gaussian and
    its couplings' condition terms are recomputed at every encode and decode. At 4X that is the
    level at twice the LR size, where most of the work is: the cache saves the coarsest trunks only.

    Attributes:
        coarsest: The coarsest level's :class:`LevelCondition`, from the LR.
        first_terms: Per finer level, the LR-only part of its ``conv_first`` (bias included).
    """

    coarsest: LevelCondition | None = None
    first_terms: dict[int, Tensor] = field(default_factory=dict)


# ---------------------------------------------------------------------- checkpoint reading


def read_hcflow_architecture(shapes: Mapping[str, Sequence[int]]) -> dict[str, int | None]:
    """The HCFlow architecture a state dict holds, read from its keys and shapes.

    Args:
        shapes: State-dict keys mapped to tensors or shapes. Keys BasicSR renamed with a trailing
            ``.ignore`` (size mismatch) are read like the original key.

    Returns:
        dict: scale, nb, K, n_additional_steps, nf, gc, in_nc, hidden_channels; a field is None where
        the state dict does not reveal it.
    """
    keys = state_dict_shapes(shapes)

    arch: dict[str, int | None] = dict.fromkeys(
        ('scale', 'nb', 'K', 'n_additional_steps', 'nf', 'gc', 'in_nc', 'hidden_channels')
    )
    levels = key_indices(keys, r'flow\.level(\d+)_condFlow\.')
    if levels:
        arch['scale'] = 2 ** (levels[-1] + 1)
        trunk = key_indices(keys, r'flow\.level0_condFlow\.RRDB_trunk0\.(\d+)\.')
        arch['nb'] = trunk[-1] + 1 if trunk else 0
        arch['n_additional_steps'] = len(
            key_indices(keys, r'flow\.level0_condFlow\.additional_flow_steps\.(\d+)\.actnorm\.bias$')
        )
        arch['nf'] = shape_dim(keys, 'flow.level0_condFlow.conv_first.weight', 0)
        arch['gc'] = shape_dim(keys, 'flow.level0_condFlow.RRDB_trunk0.0.RDB1.conv1.weight', 0)
    steps = key_indices(keys, r'flow\.layers\.(\d+)\.actnorm\.bias$')
    if steps:
        first = steps[0]
        # Layer 0 is the first squeeze; the first level's steps run up to its split (the first gap).
        main = next((i for i in range(first, steps[-1] + 2) if i not in steps), steps[-1] + 1) - first
        if arch['n_additional_steps'] is not None:
            arch['K'] = main + arch['n_additional_steps']
        channels = shape_dim(keys, f'flow.layers.{first}.actnorm.bias', 1)
        arch['in_nc'] = channels // 4 if channels else None
        arch['hidden_channels'] = shape_dim(keys, f'flow.layers.{first}.affine.f.conv1.weight', 0)
    return arch


_CORE_FIELDS = ('nb', 'K')
_EXTRA_FIELDS = ('n_additional_steps', 'nf', 'gc', 'in_nc', 'hidden_channels')


def _official_name(arch: Mapping[str, int | None]) -> str | None:
    official = {name: official_hcflow_options(name) for name in HCFLOW_OFFICIAL_CONFIGS}
    return official_config_name(arch, official, ('scale', *_CORE_FIELDS, *_EXTRA_FIELDS))


def describe_hcflow_architecture(arch: Mapping[str, int | None], differ: Sequence[str] = ()) -> str:
    """ "HCFlow 4X, nb=7, K=26 (the official DF2K 4X config)": scale, nb, K, the other fields
    where they are in ``differ``, and the released config it matches."""
    extra = [k for k in _EXTRA_FIELDS if k in differ]
    return 'HCFlow ' + describe_scaled_architecture(arch, (*_CORE_FIELDS, *extra), _official_name(arch))


def _srflow_checkpoint_hint(state_dict: Mapping[str, Tensor]) -> str:
    if any(k.startswith(('flowUpsamplerNet.', 'RRDB.')) for k in state_dict):
        return ' (it looks like an SRFlow checkpoint: use SRFlowNet)'
    return ''


HCFLOW_CHECKPOINT_FORMAT = CheckpointFormat(
    family='HCFlow',
    read_architecture=read_hcflow_architecture,
    describe=describe_hcflow_architecture,
    foreign_hint=_srflow_checkpoint_hint,
)


# ---------------------------------------------------------------------- the network


@ARCH_REGISTRY.register()
class HCFlowNet(ActNormFlowNet):
    """HCFlow: hierarchical conditional flow for super-resolution, implementing the FlowSRProtocol protocol.

    Latents are the standardised ``eps_l`` of every level, finest first: at 4X and an LR of h x w,
    ``[eps_0 (B, 6, 2h, 2w), eps_1 (B, 21, h, w)]``; at 8X ``[(B, 6, 4h, 4w), (B, 12, 2h, 2w),
    (B, 45, h, w)]``. See ``docs/hcflow.md`` for what is inferred and what was chosen.

    Args:
        in_nc (int): Image channels of the HR and the LR (the flow keeps that many at the end).
            Default: 3.
        nf (int): Feature channels of every condition network; the features have 2*nf. Default: 64.
        nb (int): RRDB blocks per condition-network trunk (two trunks per level). Default: 7.
        gc (int): RRDB growth channels. Default: 32.
        scale (int): Upscaling factor, a power of 2; there are log2(scale) levels. Default: 4.
        K (int): Flow steps per level, the unconditional ones before the split plus the conditional
            ones after it. Default: 26.
        n_additional_steps (int): Conditional flow steps per level after the split. Default: 13.
        hidden_channels (int): Hidden channels of every coupling net. Default: 64.
        quant (int): Quantisation levels of the dequantisation noise in :meth:`nll`. Default: 64.
        lr_noise_logstd (float): Log-std of the LR term ``log N(lq; q(y), exp(lr_noise_logstd)^2)``
            of :meth:`nll` (the release's -6: std e^-6, about 0.0025). Default: -6.0.
        log_scale_factor (float): Coupling log-scale ``= factor * atan(2 s)``. Default: 0.318.
    """

    family = 'HCFlow'
    checkpoint_format = HCFLOW_CHECKPOINT_FORMAT
    condition_type = HCFlowCondition
    # The release's dequantisation noise is not centred: U(0, 1) / quant.
    dequantization_offset = 0.0

    def __init__(
        self,
        in_nc: int = 3,
        nf: int = 64,
        nb: int = 7,
        gc: int = 32,
        scale: int = 4,
        K: int = 26,
        n_additional_steps: int = 13,
        hidden_channels: int = 64,
        quant: int = 64,
        lr_noise_logstd: float = -6.0,
        log_scale_factor: float = 0.318,
    ) -> None:
        super().__init__()
        if scale < 2 or scale & (scale - 1):
            raise ValueError(f'HCFlowNet: scale must be a power of 2 (2, 4, 8, ...), got {scale}')
        if not 0 <= n_additional_steps <= K:
            raise ValueError(
                f'HCFlowNet: n_additional_steps must be between 0 and K = {K} (K counts the steps before '
                f'and after the split), got {n_additional_steps}'
            )
        self.in_nc = in_nc
        self.scale = scale
        self.L = int(math.log2(scale))
        self.K = K
        self.n_additional_steps = n_additional_steps
        self.quant = quant
        self.lr_noise_logstd = float(lr_noise_logstd)
        # The HR (scale x the LR) is squeezed log2(scale) times: every LR size works.
        self.lr_multiple = 1
        self.flow = HierarchicalFlow(
            in_nc, self.L, K - n_additional_steps, n_additional_steps, nf, nb, gc, hidden_channels, log_scale_factor
        )
        # No tensor is checkpoint-only: every layer, condition network and head takes part in the
        # likelihood, so every parameter gets a gradient (nothing to freeze for DDP).

    # ------------------------------------------------------------------ checks
    def _check_hr(self, gt: Tensor) -> None:
        if gt.dim() != 4 or gt.shape[1] != self.in_nc or gt.shape[2] % self.scale or gt.shape[3] % self.scale:
            raise ValueError(
                f'HCFlowNet at {self.scale}X expects an HR of shape (B, {self.in_nc}, H, W) with H and W '
                f'multiples of {self.scale}, got {tuple(gt.shape)}'
            )

    def latent_shapes(self, lq_shape: Sequence[int]) -> list[tuple[int, int, int, int]]:
        """Shapes of the latents for an LR of shape ``lq_shape`` (finest level first)."""
        b, _, h, w = lq_shape
        return [
            (b, c, h * self.scale // 2 ** (level + 1), w * self.scale // 2 ** (level + 1))
            for level, c in enumerate(self.flow.latent_channels)
        ]

    # ------------------------------------------------------------------ flow
    def _main_encode(self, x: Tensor, logdet: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """The unconditional flow: HR -> (kept channels per level, latent a_l per level, logdet).
        The last level's kept channels are the flow's own LR y."""
        kept, aux = [], []
        z = x
        for layer in self.flow.layers:
            if isinstance(layer, SqueezeLayer):
                z = layer(z)
            elif isinstance(layer, HCFlowStep):
                z, logdet = layer.encode(z, logdet)
            else:
                z, a = layer(z)
                kept.append(z)
                aux.append(a)
        return kept, aux, logdet

    def _coarsest_condition(self, lq: Tensor, plain: bool) -> LevelCondition:
        level = self.flow.cond_level(self.L - 1)
        return level.level_condition(level.features(lq), plain)

    def _level_condition(
        self, level: int, kept: Tensor, features: list[Tensor | None], cond: HCFlowCondition | None
    ) -> LevelCondition:
        """A finer level's condition from its kept channels and the coarser levels' features;
        ``cond`` None computes it plainly (concatenation, as the release)."""
        net = self.flow.cond_level(level)
        coarser = [
            F.interpolate(features[m], scale_factor=2 ** (m - level), mode='nearest')
            for m in range(level + 1, self.L - (0 if cond is None else 1))
        ]
        if cond is None:
            return net.level_condition(net.features(torch.cat([kept, *coarser], 1)), plain=True)
        # conv_first(cat(kept, up(F_{l+1}), ..., up(F_{L-1}))): the coarsest slice comes from the cache.
        live = torch.cat([kept, *coarser], 1) if coarser else kept
        w = net.conv_first.weight[:, : live.shape[1]]
        first = F.conv2d(live, w, padding=1) + cond.first_terms[level]
        return net.level_condition(net.features(first=first))

    def _cond_encode(
        self, kept: list[Tensor], aux: list[Tensor], coarsest: LevelCondition, cond: HCFlowCondition | None
    ) -> tuple[Latents, Tensor]:
        """The conditional part of every level: (eps_l finest first, summed log-likelihood (B,))."""
        features: list[Tensor | None] = [None] * self.L
        eps: list[Tensor | None] = [None] * self.L
        logp = kept[0].new_zeros(kept[0].shape[0])
        for level in range(self.L - 1, -1, -1):
            if level == self.L - 1:
                lc = coarsest
            else:
                lc = self._level_condition(level, kept[level], features, cond)
            features[level] = lc.features
            eps[level], lp = self.flow.cond_level(level).encode(aux[level], lc)
            logp = logp + lp
        return eps, logp

    def _encode_on_own_lr(self, gt: Tensor, logdet: Tensor) -> tuple[Latents, Tensor, Tensor]:
        """The release's forward pass: the main flow, then every level conditioned on the flow's
        own LR y. Returns (latents, y, ``logdet`` + the flow's log-dets + the levels' log-likelihoods)."""
        kept, aux, logdet = self._main_encode(gt, logdet)
        cond = self.condition(kept[-1])
        latents, logp = self._cond_encode(kept, aux, cond.coarsest, cond)
        return latents, kept[-1], logdet + logp

    def _run_decode(
        self, lq: Tensor, latents: Latents, coarsest: LevelCondition, cond: HCFlowCondition | None
    ) -> Tensor:
        """The reverse pass from the LR ``lq``; ``cond`` None computes every condition plainly."""
        features: list[Tensor | None] = [None] * self.L
        z = lq
        for idx in range(len(self.flow.layers) - 1, -1, -1):
            layer = self.flow.layers[idx]
            if isinstance(layer, SplitLayer):
                level = layer.level
                if level == self.L - 1:
                    lc = coarsest  # its kept channels are the LR: z is lq here
                else:
                    lc = self._level_condition(level, z, features, cond)
                features[level] = lc.features
                z = torch.cat((z, self.flow.cond_level(level).decode(latents[level], lc)), 1)
            elif isinstance(layer, HCFlowStep):
                z = layer.decode(z)
            else:
                z = unsqueeze2d(z, 2)
        return z

    # ------------------------------------------------------------------ protocol
    def condition(self, lq: Tensor) -> HCFlowCondition:
        """Everything that depends on the LR alone (see :class:`HCFlowCondition` for what is and is
        not cacheable): the coarsest level's condition features, Gaussian and coupling terms, and the
        LR-only part of every finer level's ``conv_first``.

        Args:
            lq: LR batch (B, in_nc, h, w).

        Returns:
            HCFlowCondition: pass it as ``cond`` to the other methods for the same ``lq``.
        """
        self._check_lq(lq)
        coarsest = self._coarsest_condition(lq, plain=False)
        first_terms = {}
        top = self.L - 1
        for level in range(top):
            net = self.flow.cond_level(level)
            up = F.interpolate(coarsest.features, scale_factor=2 ** (top - level), mode='nearest')
            # The coarsest features come last in the level's concatenated condition.
            first_terms[level] = net.first_term(up, net.conv_first.in_channels - up.shape[1])
        return HCFlowCondition(lq_shape=tuple(lq.shape), coarsest=coarsest, first_terms=first_terms)

    def encode_with_lr(self, lq: Tensor, gt: Tensor, cond: FlowCondition | None = None) -> tuple[Latents, Tensor]:
        """HR -> (latents, the flow's own LR y), conditioned on ``lq``; deterministic.

        y is the HR's encoding at LR size; it is not ``lq`` (training only pulls it towards the LR).

        Args:
            lq: LR batch (B, in_nc, h, w): conditions the coarsest level.
            gt: HR batch (B, in_nc, h*scale, w*scale).
            cond: ``condition(lq)`` to reuse; computed when None. Default: None.

        Returns:
            tuple: ``[eps_0, ..., eps_{L-1}]`` (finest first) and y (B, in_nc, h, w).
        """
        self._check_lq(lq)
        self._check_gt(lq, gt)
        cond = self._resolve_cond(lq, cond)
        kept, aux, _ = self._main_encode(gt, gt.new_zeros(gt.shape[0]))
        latents, _ = self._cond_encode(kept, aux, cond.coarsest, cond)
        return latents, kept[-1]

    def encode(self, lq: Tensor, gt: Tensor, cond: FlowCondition | None = None, out_size: OutputSize = None) -> Latents:
        """HR -> standardised latents ``[eps_0, ..., eps_{L-1}]`` (finest first), deterministic.

        The coarsest level is conditioned on ``lq`` (not on the flow's own LR, see the module
        docstring), so ``decode(lq, encode(lq, gt))`` inverts the conditional part exactly; the
        flow's own LR is returned by :meth:`encode_with_lr`.

        Args:
            lq: LR batch (B, in_nc, h, w).
            gt: HR batch (B, in_nc, h*scale, w*scale).
            cond: ``condition(lq)`` to reuse; computed when None. Default: None.
            out_size: None, or a whole-image ``HRWindow`` (a fixed-scale flow). Default: None.

        Returns:
            list[Tensor]: The latents.
        """
        self._check_out_size(lq, out_size)
        return self.encode_with_lr(lq, gt, cond)[0]

    def encode_hr(self, gt: Tensor) -> tuple[Latents, Tensor]:
        """The release's encode from the HR alone: (latents, the flow's own LR y), the coarsest
        level conditioned on y itself. ``decode(y, latents)`` gives back ``gt``.

        Args:
            gt: HR batch (B, in_nc, H, W), sides multiples of ``scale``.

        Returns:
            tuple: ``[eps_0, ..., eps_{L-1}]`` and y (B, in_nc, H/scale, W/scale).
        """
        self._check_hr(gt)
        latents, y, _ = self._encode_on_own_lr(gt, gt.new_zeros(gt.shape[0]))
        return latents, y

    def decode(
        self,
        lq: Tensor,
        latents: Latents,
        cond: FlowCondition | None = None,
        out_size: OutputSize = None,
    ) -> Tensor:
        """Latents -> SR image (not clamped): the reverse pass from the real LR ``lq``.

        Differentiable w.r.t. the latents; never mutates ``latents`` nor any parameter or buffer
        (ActNorm data init is switched off).

        Args:
            lq: LR batch (B, in_nc, h, w); it takes the place of the flow's own LR.
            latents: ``[eps_0, ..., eps_{L-1}]`` with the shapes of :meth:`latent_shapes`.
            cond: ``condition(lq)`` to reuse; computed when None. Default: None.
            out_size: HR (height, width); must be ``lq * scale`` (a fixed-scale flow; ValueError
                otherwise). Default: None.

        Returns:
            Tensor: SR batch (B, in_nc, h*scale, w*scale).
        """
        self._check_lq(lq)
        self._check_out_size(lq, out_size)
        self._check_latents(lq, latents)
        with actnorm_init_disabled():
            cond = self._resolve_cond(lq, cond)
            return self._run_decode(lq, list(latents), cond.coarsest, cond)

    def nll(
        self,
        lq: Tensor,
        gt: Tensor,
        cond: FlowCondition | None = None,
        dequantize: bool = False,
        generator: torch.Generator | None = None,
        out_size: OutputSize = None,
    ) -> Tensor:
        """Negative log-likelihood of ``gt`` given ``lq`` in bits per HR pixel, shape (B,): the
        release's training objective (HCFlow's stage 1).

        ``nll = -(logdet + sum_l [logdet_l + log N(h_l; mean_l, exp(logstd_l)^2)]
        + log N(lq; q(y), exp(lr_noise_logstd)^2)) / (ln 2 * H * W)`` where

        - logdet is the unconditional flow's log-determinant (ActNorms, 1x1 convs, couplings), plus
          ``-log(quant) * H * W`` when ``dequantize``;
        - y is the flow's own LR (the channels the last level keeps);
        - logdet_l and h_l are the log-determinant and output of level l's conditional steps, and
          mean_l, logstd_l its Gaussian; every level is conditioned on y, not on ``lq`` (see
          ``docs/hcflow.md``);
        - ``q(y) = round(clamp(y, 0, 1) * 255) / 255`` with a straight-through (identity) gradient,
          :func:`quantize_straight_through`; lr_noise_logstd is -6 in the release;
        - H*W is the HR pixel count (channels not counted).

        Args:
            lq: LR batch (B, in_nc, h, w), 8-bit values in [0, 1] as in the release's training.
            gt: HR batch (B, in_nc, h*scale, w*scale) in [0, 1].
            cond: ``condition(lq)``; only checked against ``lq`` (no level is conditioned on it
                here). Default: None.
            dequantize: Add U(0, 1)/quant noise to gt (not centred, as the release) and its
                ``-log(quant) * H * W`` log-det term, as in likelihood training. Default: False.
            generator: Random generator of the noise. Default: None.
            out_size: None, or a whole-image ``HRWindow`` (a fixed-scale flow). Default: None.

        Returns:
            Tensor: Bits per pixel, one per image.
        """
        # No level is conditioned on lq here, so condition(lq) is never computed: an empty
        # HCFlowCondition only carries the shape check of a given cond.
        cond = HCFlowCondition(lq_shape=tuple(lq.shape)) if cond is None else cond
        gt, _, logdet = self._start_nll(lq, gt, cond, dequantize, generator, out_size)
        _, y, log_likelihood = self._encode_on_own_lr(gt, logdet)
        lr_logs = torch.full_like(lq, self.lr_noise_logstd)
        lr_term = gaussian_log_prob(lq, quantize_straight_through(y), lr_logs)
        return self._bits_per_pixel(log_likelihood + lr_term, gt)

    def latent_channels(self) -> list[int]:
        """Channel count of each latent, finest first ([6, 21] at 4X, [6, 12, 45] at 8X)."""
        return list(self.flow.latent_channels)

    # ------------------------------------------------------------------ plain computation (checks)
    def plain_encode(self, lq: Tensor, gt: Tensor) -> Latents:
        """:meth:`encode` computed the plain way (no cache, concatenated convolutions, as the
        release). Slow; for verification."""
        self._check_lq(lq)
        self._check_gt(lq, gt)
        kept, aux, _ = self._main_encode(gt, gt.new_zeros(gt.shape[0]))
        return self._cond_encode(kept, aux, self._coarsest_condition(lq, plain=True), None)[0]

    def plain_decode(self, lq: Tensor, latents: Latents) -> Tensor:
        """:meth:`decode` computed the plain way (see :meth:`plain_encode`). Slow; for verification."""
        self._check_lq(lq)
        self._check_latents(lq, latents)
        with actnorm_init_disabled():
            return self._run_decode(lq, list(latents), self._coarsest_condition(lq, plain=True), None)
