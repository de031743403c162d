"""Glow-style flow layers shared by the flow networks of this package.

Conventions: tensors are NCHW; a log-determinant is a tensor of shape (B,) (one value per image),
summed over channels and pixels. Parameter names and shapes follow the released SRFlow checkpoints
(``bias``/``logs`` of an ActNorm, ``weight`` of a 1x1 invertible convolution, ``weight``/``bias``/
``logs`` of a zero-initialised convolution), because they are a file format.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)

# ActNorm's data-dependent initialisation writes parameters. Code that promises not to change any
# parameter (a decode) switches it off for its duration with ``actnorm_init_disabled()``. A context
# variable (not a module attribute) so that the promise holds for every ActNorm the call reaches.
_ACTNORM_INIT_ENABLED: ContextVar[bool] = ContextVar('actnorm_init_enabled', default=True)


@contextmanager
def actnorm_init_disabled() -> Iterator[None]:
    """Within this context no ActNorm runs its data-dependent initialisation, even in training mode."""
    token = _ACTNORM_INIT_ENABLED.set(False)
    try:
        yield
    finally:
        _ACTNORM_INIT_ENABLED.reset(token)


class ActNorm(nn.Module):
    """Per-channel affine normalisation ``y = (x + bias) * exp(logs)`` (Glow).

    On the first forward in training mode, if not initialised yet, ``bias`` and ``logs`` are set
    from the batch so that the output has zero mean and unit variance per channel. Whether that
    happened is a python flag (``initialized``), not a buffer, so the state-dict keys stay those of
    the released checkpoints; loading a state dict that holds this module's ``bias`` and ``logs``
    sets the flag, so loaded weights are never overwritten by the data init.

    Args:
        num_channels (int): Channel count C; parameters are shaped (1, C, 1, 1).
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.initialized = False

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # Loaded values are trained (or deliberately chosen) values: never re-initialise them.
        if prefix + 'bias' in state_dict and prefix + 'logs' in state_dict:
            self.initialized = True

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent initialisation from a batch ``x`` (B, C, H, W); marks the module initialised."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True).sqrt()
        self.bias.copy_(-mean)
        self.logs.copy_(torch.log(1.0 / (std + 1e-6)))
        self.initialized = True

    def forward(self, x: Tensor) -> Tensor:
        """Encode direction; runs the data init first when training and not yet initialised."""
        if self.training and not self.initialized and _ACTNORM_INIT_ENABLED.get():
            self.initialize(x)
        return (x + self.bias) * torch.exp(self.logs)

    def reverse(self, y: Tensor) -> Tensor:
        """Decode direction (never initialises)."""
        return y * torch.exp(-self.logs) - self.bias

    def logdet(self, num_pixels: int) -> Tensor:
        """Log-determinant of the encode direction for an image of ``num_pixels`` pixels (a scalar)."""
        return self.logs.sum() * num_pixels


class InvertibleConv1x1(nn.Module):
    """Invertible 1x1 convolution ``y = W x`` per pixel (Glow), with an orthogonal initial ``W``.

    The inverse and ``log|det W|`` are computed in float64 (the decode divides by small scales
    many times, so the inverse must be as exact as possible) and cast to the input dtype. For a
    frozen weight they are cached, keyed on the weight's version counter, storage, dtype and device
    and checked against a copy of the weight (``weight.data`` writes do not bump the version).
    When the weight requires grad and grad mode is on they are recomputed at every call, so the
    result always carries the gradient.

    Args:
        num_channels (int): Channel count C; ``weight`` is (C, C).
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        weight = torch.linalg.qr(torch.randn(num_channels, num_channels))[0]
        self.weight = nn.Parameter(weight)
        self._cache: tuple | None = None

    def _cached(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        weight = self.weight
        key = (weight._version, weight.data_ptr(), weight.dtype, weight.device, dtype)
        cache = self._cache
        if cache is not None and cache[0] == key and torch.equal(cache[1], weight.detach()):
            return cache[2], cache[3]
        with torch.no_grad():
            w64 = weight.detach().to(torch.float64)
            inverse = torch.linalg.inv(w64).to(dtype)
            logabsdet = torch.linalg.slogdet(w64)[1].to(dtype)
            self._cache = (key, weight.detach().clone(), inverse, logabsdet)
        return inverse, logabsdet

    def _live(self) -> bool:
        # A weight being trained needs a differentiable (and fresh) inverse / log-det.
        return self.weight.requires_grad and torch.is_grad_enabled()

    def logabsdet(self, dtype: torch.dtype) -> Tensor:
        """``log|det W|`` (a scalar) in ``dtype``."""
        if self._live():
            return torch.linalg.slogdet(self.weight.to(torch.float64))[1].to(dtype)
        return self._cached(dtype)[1]

    def inverse(self, dtype: torch.dtype) -> Tensor:
        """``W^-1`` in ``dtype``, computed in float64."""
        if self._live():
            return torch.linalg.inv(self.weight.to(torch.float64)).to(dtype)
        return self._cached(dtype)[0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encode: returns ``(W x, log|det W| * H * W)`` (the log-det is a scalar)."""
        channels = self.weight.shape[0]
        y = F.conv2d(x, self.weight.view(channels, channels, 1, 1))
        return y, self.logabsdet(x.dtype) * (x.shape[2] * x.shape[3])

    def reverse(self, y: Tensor) -> Tensor:
        """Decode: ``W^-1 y``."""
        channels = self.weight.shape[0]
        return F.conv2d(y, self.inverse(y.dtype).view(channels, channels, 1, 1))


def squeeze2d(x: Tensor, factor: int = 2) -> Tensor:
    """(B, C, H, W) -> (B, C*f*f, H/f, W/f); output channel ``c*f*f + dy*f + dx`` (4c+2dy+dx at f=2)."""
    if x.shape[-2] % factor or x.shape[-1] % factor:
        raise ValueError(f'squeeze2d needs sides divisible by {factor}, got a tensor of shape {tuple(x.shape)}')
    return rearrange(x, 'b c (h dy) (w dx) -> b (c dy dx) h w', dy=factor, dx=factor)


def unsqueeze2d(x: Tensor, factor: int = 2) -> Tensor:
    """Exact inverse of :func:`squeeze2d`."""
    f2 = factor * factor
    if x.shape[1] % f2:
        raise ValueError(f'unsqueeze2d needs channels divisible by {f2}, got a tensor of shape {tuple(x.shape)}')
    return rearrange(x, 'b (c dy dx) h w -> b c (h dy) (w dx)', dy=factor, dx=factor)


class SqueezeLayer(nn.Module):
    """Space-to-depth by 2 as a layer (:func:`squeeze2d`): no parameters, but it occupies an index
    of the released flows' ``layers`` lists (SRFlow, HCFlow), so their keys count it."""

    def forward(self, x: Tensor) -> Tensor:
        return squeeze2d(x, 2)


class Conv2dZeros(nn.Module):
    """Zero-initialised convolution with a learned output scale: ``conv(x) * exp(3 * logs)``.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels; ``logs`` is shaped (out_channels, 1, 1).
        kernel_size (int): Square kernel size, padded to keep the spatial size. Default: 3.
        logscale_factor (float): Multiplier of ``logs`` in the exponent. Default: 3.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, logscale_factor: float = 3.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.logs = nn.Parameter(torch.zeros(out_channels, 1, 1))
        self.padding = kernel_size // 2
        self.logscale_factor = logscale_factor

    def forward(self, x: Tensor) -> Tensor:
        out = F.conv2d(x, self.weight, self.bias, padding=self.padding)
        return out * torch.exp(self.logs * self.logscale_factor)


class Conv2dActNorm(nn.Module):
    """Convolution without bias followed by its own ActNorm (key ``.actnorm``), Glow's hidden conv.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        kernel_size (int): Square kernel size; padding keeps the size (1 for 3x3, 0 for 1x1). Default: 3.
        init_std (float): Standard deviation of the normal weight init. Default: 0.05.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, init_std: float = 0.05) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.normal_(self.weight, mean=0.0, std=init_std)
        self.actnorm = ActNorm(out_channels)
        self.padding = kernel_size // 2

    def forward(self, x: Tensor) -> Tensor:
        return self.actnorm(F.conv2d(x, self.weight, padding=self.padding))


def gaussian_log_density(x: Tensor, mean: Tensor | None = None, logs: Tensor | None = None) -> Tensor:
    """Element-wise ``log N(x; mean, exp(logs)^2)``; ``None`` means 0 (standard normal)."""
    if mean is not None:
        x = x - mean
    if logs is None:
        return -0.5 * (LOG_2PI + x * x)
    return -0.5 * (LOG_2PI + 2.0 * logs + x * x * torch.exp(-2.0 * logs))


def gaussian_log_prob(x: Tensor, mean: Tensor | None = None, logs: Tensor | None = None) -> Tensor:
    """``log N(x; mean, exp(logs)^2)`` summed over all but the batch dimension: shape (B,)."""
    return gaussian_log_density(x, mean, logs).flatten(1).sum(1)


def cross_split(h: Tensor) -> tuple[Tensor, Tensor]:
    """The releases' "cross" split: even channels and odd channels, ``(h[:, 0::2], h[:, 1::2])``."""
    return h[:, 0::2], h[:, 1::2]


def standardize_per_pixel(z: Tensor) -> Tensor:
    """``(z - mean_c) / (std_c + 1e-8)`` per pixel across channels (unbiased std): the learned
    prior's standardisation of latents (shared by every flow's ``initial_prior``)."""
    mean = z.mean(dim=1, keepdim=True)
    std = z.std(dim=1, keepdim=True, unbiased=True)
    return (z - mean) / (std + 1e-8)
