"""The one interface every flow super-resolution network of this package implements.

The learned-prior model (``FlowPriorModel``) and likelihood training (``FlowLikelihoodModel``) talk to a
flow only through these methods, so adding a flow family never adds a branch to a model. The
contract of each member, the ``out_size`` rules and the optional hooks are stated in
``docs/adding_a_flow.md``. In short::

    cond = flow.condition(lq)                 # everything computed from the LR alone, once
    z0 = flow.initial_prior(lq, cond=cond)    # the learned prior's input
    sr = flow.decode(lq, prior(lq, z0), cond=cond)
    samples = [flow.decode(lq, flow.sample_latents(lq, 0.9, cond=cond), cond=cond) for _ in range(8)]

Latents are a list of tensors, one per level, in the family's documented order. Likelihood
training calls the flow itself (``forward(lq, gt, dequantize=True)`` is ``nll``) because
``DistributedDataParallel`` synchronises gradients only through the wrapped module's ``forward``.
:func:`check_flow_protocol` checks the required members and every optional hook
(:data:`OPTIONAL_HOOKS`) a flow has, and lists every problem in one TypeError.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

Latents = list[Tensor]

PROTOCOL_METHODS = (
    'condition',
    'encode',
    'decode',
    'sample_latents',
    'nll',
    'initial_prior',
    'latent_channels',
    'initialize_from_batch',
    'forward',
)
PROTOCOL_ATTRIBUTES = ('scale', 'lr_multiple', 'arbitrary_scale')
# The keyword arguments the models pass to ``forward`` (likelihood training and decoding).
FORWARD_ARGUMENTS = ('gt', 'latents', 'dequantize', 'out_size')

# The methods tiled prediction calls besides the protocol's, required when ``supports_tiling``.
TILING_HOOKS = ('latent_strides', 'tile_alignment', 'tile_context', 'tile_inputs')
# Every optional hook, and what a flow without it gets.
OPTIONAL_HOOKS: dict[str, str] = {
    'supports_tiling': 'class attribute, bool. Default: False (tiled prediction is refused with a one-line error).',
    'latent_strides': '() -> list[int]: HR pixels per latent cell of each level. Required by supports_tiling.',
    'tile_alignment': '() -> int: the HR grid tile borders sit on. Required by supports_tiling.',
    'tile_context': '(lq, hr_size) -> Any: work done once on the whole LR. Required by supports_tiling.',
    'tile_inputs': '(lq, context, box, hr_size) -> TileInputs: what decodes an HR box. Required by supports_tiling.',
    'checkpoint_format': (
        'class attribute, a flowprior_plugin.checkpoints.CheckpointFormat (release layout, one-line '
        'mismatch message). Default: None (a wrong checkpoint gets the lists of mismatched keys).'
    ),
}


@dataclass
class FlowCondition:
    """Base of the LR-only conditioning a flow computes once and reuses.

    Subclasses add their cached tensors. ``lq_shape`` lets a flow reject a ``cond`` computed for a
    different LR image (a silent mix-up would decode with the wrong conditioning).
    """

    lq_shape: tuple[int, ...]

    def check_matches(self, lq: Tensor) -> None:
        if tuple(lq.shape) != tuple(self.lq_shape):
            raise ValueError(
                f'conditioning was computed for an LR of shape {tuple(self.lq_shape)}, '
                f'but this call got an LR of shape {tuple(lq.shape)}'
            )


@dataclass(frozen=True)
class HRWindow:
    """Where each HR target of a batch sits in the HR image its LR covers.

    The LR of sample ``b`` covers an HR image of ``full_size[b]`` pixels; the target is the
    ``size`` window whose top-left pixel is ``offset[b]`` in it. Windows share one size (they are
    batched), while full sizes and offsets may differ per sample (mixed scales).

    Attributes:
        size: (h, w) of every window.
        full_size: Long tensor (B, 2): (H, W) of each HR image.
        offset: Long tensor (B, 2): (top, left) of each window.
    """

    size: tuple[int, int]
    full_size: Tensor
    offset: Tensor

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f'HRWindow: size must be (h, w) with positive sides, got {self.size}')
        object.__setattr__(self, 'size', size)
        full, off = self.full_size, self.offset
        if full.dim() != 2 or full.shape[1] != 2 or off.shape != full.shape:
            raise ValueError(
                f'HRWindow: full_size and offset must both have shape (B, 2), got {tuple(full.shape)} and '
                f'{tuple(off.shape)}'
            )
        window = torch.tensor(size, device=full.device)
        if bool((off < 0).any()) or bool((off + window > full).any()):
            raise ValueError(
                f'HRWindow: a {size} window at offsets {off.tolist()} does not fit HR images of sizes {full.tolist()}'
            )

    @classmethod
    def from_batch(cls, gt: Tensor, full_size: Tensor, offset: Tensor) -> HRWindow:
        """The windows of a data batch: ``gt`` (B, C, h, w) and the dataset's ``hr_size`` / ``window``."""
        return cls(tuple(gt.shape[-2:]), full_size.to(torch.long).reshape(-1, 2), offset.to(torch.long).reshape(-1, 2))

    @property
    def batch(self) -> int:
        return int(self.full_size.shape[0])

    def is_whole(self) -> bool:
        """Whether every window is its whole HR image (then ``size`` alone says everything)."""
        window = torch.tensor(self.size, device=self.full_size.device)
        return bool((self.offset == 0).all()) and bool((self.full_size == window).all())


# What ``out_size`` may be: None (lq * scale), (H, W), or windows of larger HR images.
OutputSize = Sequence[int] | HRWindow | None


def output_hw(out_size: OutputSize) -> tuple[int, int] | None:
    """The (H, W) of the output ``out_size`` asks for (a window's size), or None."""
    if out_size is None:
        return None
    if isinstance(out_size, HRWindow):
        return out_size.size
    return int(out_size[0]), int(out_size[1])


@runtime_checkable
class FlowSRProtocol(Protocol):
    """A conditional normalizing flow HR <-> latents given LR.

    Attributes:
        scale (int): Upscaling factor of fixed-scale flows; the default output scale (when no
            ``out_size`` is given) of arbitrary-scale flows.
        lr_multiple (int): LR sides must be multiples of this; models reflect-pad the LR to it
            and crop the SR back (SRFlow: 2).
        arbitrary_scale (bool): Whether ``out_size`` may differ from ``lq * scale`` (LINF: True;
            SRFlow, HCFlow: False). Models then take the HR size from the gt when there is one.
    """

    scale: int
    lr_multiple: int
    arbitrary_scale: bool

    def condition(self, lq: Tensor) -> FlowCondition:
        """Compute everything that depends on the LR alone."""

    def encode(self, lq: Tensor, gt: Tensor, cond: FlowCondition | None = None, out_size: OutputSize = None) -> Latents:
        """HR -> latents, deterministic (no dequantisation noise). ``out_size``: None (``gt`` is
        the whole HR) or the :class:`HRWindow` that ``gt`` is."""

    def decode(
        self,
        lq: Tensor,
        latents: Latents,
        cond: FlowCondition | None = None,
        out_size: OutputSize = None,
    ) -> Tensor:
        """Latents -> SR image (not clamped) of size ``out_size`` (HR (height, width) or an
        :class:`HRWindow`; None: lq * scale). Differentiable w.r.t. the latents; changes no
        parameter or buffer and never mutates ``latents``."""

    def sample_latents(
        self,
        lq: Tensor,
        temperature: float,
        generator: torch.Generator | None = None,
        cond: FlowCondition | None = None,
        out_size: OutputSize = None,
    ) -> Latents:
        """Latents for temperature sampling as the release draws them (zeros at 0), shaped for
        an HR of size ``out_size`` (None: lq * scale)."""

    def nll(
        self,
        lq: Tensor,
        gt: Tensor,
        cond: FlowCondition | None = None,
        dequantize: bool = False,
        generator: torch.Generator | None = None,
        out_size: OutputSize = None,
    ) -> Tensor:
        """Negative log-likelihood in bits per HR pixel, one value per image, shape (B,); with an
        :class:`HRWindow` ``out_size``, of the window ``gt`` given the LR of the whole HR image.

        With ``dequantize`` the release's dequantisation noise (and its log-det term) is used,
        as in likelihood training."""

    def initial_prior(self, lq: Tensor, cond: FlowCondition | None = None, out_size: OutputSize = None) -> Latents:
        """The learned prior's initial latents z0 as the authors released them for this family
        (SRFlow: standardised encoding of the bilinearly upsampled LR; LINF: encoding of the
        residual of the upsampled LR), for an HR of size ``out_size`` (None: lq * scale)."""

    def latent_channels(self) -> list[int]:
        """Channel count of each latent level, in latent order."""

    def initialize_from_batch(self, lq: Tensor, gt: Tensor) -> bool:
        """Data-dependent initialisation (ActNorm) from a first batch, if the flow has one and it
        has not happened yet (loaded weights count as initialised). Returns True if it ran."""

    def forward(
        self,
        lq: Tensor,
        gt: Tensor | None = None,
        latents: Latents | None = None,
        dequantize: bool = False,
        out_size: OutputSize = None,
    ) -> Tensor:
        """With ``gt``: ``nll(lq, gt, dequantize=dequantize, out_size=out_size)``, what likelihood
        training calls through the (possibly DDP-wrapped) module so that DDP synchronises its
        gradients. Without: ``decode(lq, latents, out_size=out_size)``, of the zero latents
        (temperature 0) when ``latents`` is None."""


def supports_tiling(flow: object) -> bool:
    """Whether ``flow`` declares the optional tiling hooks (``supports_tiling = True``)."""
    return bool(getattr(flow, 'supports_tiling', False))


def check_flow_protocol(net: object, option_name: str = 'network') -> None:
    """Raise a clear TypeError if ``net`` does not implement :class:`FlowSRProtocol`.

    Checks the required methods and attributes (with their types), that ``forward`` is the
    network's own and takes :data:`FORWARD_ARGUMENTS`, and that every optional hook it has is well
    formed (:data:`OPTIONAL_HOOKS`). The message lists every problem at once.

    Args:
        net: The network to check (a DDP wrapper is not unwrapped here).
        option_name: The option section that built it, named in the message.
    """
    missing = [name for name in PROTOCOL_METHODS if not callable(getattr(net, name, None))]
    missing += [name for name in PROTOCOL_ATTRIBUTES if not hasattr(net, name)]
    problems = [f'it lacks {", ".join(missing)}'] if missing else []
    problems += _attribute_problems(net)
    if 'forward' not in missing:
        problems += _forward_problems(net)
    problems += _optional_hook_problems(net)
    if problems:
        raise TypeError(
            f'{option_name}: {type(net).__name__} is not a flow SR network: {"; ".join(problems)} '
            '(see flowprior_plugin.flow_protocol.FlowSRProtocol)'
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _attribute_problems(net: object) -> list[str]:
    problems = []
    for name in ('scale', 'lr_multiple'):
        value = getattr(net, name, None)
        if hasattr(net, name) and not (_is_int(value) and value >= 1):
            problems.append(f'{name} must be a positive int, got {value!r}')
    if hasattr(net, 'arbitrary_scale') and not isinstance(net.arbitrary_scale, bool):
        problems.append(f'arbitrary_scale must be a bool, got {net.arbitrary_scale!r}')
    return problems


def _forward_problems(net: object) -> list[str]:
    """``forward`` must be the flow's own (nn.Module's placeholder raises) and take the models' arguments."""
    if getattr(type(net), 'forward', None) is torch.nn.Module.forward:
        return ['forward is not defined (likelihood training calls forward(lq, gt, dequantize=..., out_size=...))']
    try:
        parameters = inspect.signature(net.forward).parameters.values()
    except (TypeError, ValueError):  # no signature to read (e.g. a builtin): trust it
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return []
    names = {p.name for p in parameters if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    lacking = [name for name in FORWARD_ARGUMENTS if name not in names]
    return [f'forward takes no {", ".join(lacking)} argument'] if lacking else []


def _optional_hook_problems(net: object) -> list[str]:
    problems = []
    tiling = getattr(net, 'supports_tiling', False)
    if not isinstance(tiling, bool):
        problems.append(f'supports_tiling must be a bool, got {tiling!r}')
    for name in TILING_HOOKS:
        hook = getattr(net, name, None)
        if hook is None and tiling is True:
            problems.append(f'supports_tiling is True but {name} is missing')
        elif hook is not None and not callable(hook):
            problems.append(f'{name} must be a method, got {type(hook).__name__}')
    checkpoint_format = getattr(net, 'checkpoint_format', None)
    if checkpoint_format is not None:
        # Imported here: this module stays free of the checkpoint machinery the networks build on.
        from flowprior_plugin.checkpoints import CheckpointFormat

        if not isinstance(checkpoint_format, CheckpointFormat):
            problems.append(f'checkpoint_format must be a CheckpointFormat, got {type(checkpoint_format).__name__}')
    return problems
