"""A small normalizing flow applied independently at every query location (LINF's ``imnet``).

Each location carries a D-dimensional vector (3 colour values of a pixel, or the 27 values of a
3x3 patch) and its own affine parameters, predicted by a network; the full linear maps are shared
by all locations. Tensors are channels-last here: ``(..., D)`` values and ``(..., 2 * L * D)``
parameters, so any leading shape (batch, queries) works.

The inverse of each linear map is computed once and cached (in float64, then cast), instead of a
linear solve at every call: decoding many latents for the same weights, as the learned prior's
training does, then costs one matrix product per map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


@dataclass
class _InverseCache:
    source: Tensor  # a detached alias of the weight it was computed from (keeps that storage alive)
    version: int | None  # the weight's in-place version counter at that time
    inverse: Tensor
    logdet: Tensor


class InvertibleLinear(nn.Module):
    """A full invertible linear map ``y = W x + b`` on the last dimension (log|det W| by slogdet).

    The parameters are ``bias`` and ``_weight`` in this order (the layout of LINF's checkpoints).

    ``W^-1`` and ``log|det W|`` are cached: recomputed only when the weight's storage, dtype,
    device or in-place version changes (an optimiser step, ``load_state_dict``, ``.double()``).
    When autograd must reach the weight (grad mode on and ``W.requires_grad``), both are computed
    afresh on every call so that gradients are exact.

    Args:
        dim (int): Size D of the last dimension.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        # Registration order matters: the released state dicts list bias before _weight.
        self.bias = nn.Parameter(torch.zeros(dim))
        self._weight = nn.Parameter(torch.eye(dim))
        self._cache: _InverseCache | None = None

    @property
    def weight(self) -> Tensor:
        return self._weight

    def _needs_graph(self) -> bool:
        return torch.is_grad_enabled() and self._weight.requires_grad

    def _cached(self) -> _InverseCache:
        w = self._weight
        try:
            version = w._version
        except RuntimeError:  # an inference-mode tensor has no version counter: never cache it
            version = None
        cache = self._cache
        if (
            cache is not None
            and version is not None
            and cache.version == version
            and cache.source.data_ptr() == w.data_ptr()
            and cache.source.dtype == w.dtype
            and cache.source.device == w.device
        ):
            return cache
        with torch.no_grad():
            # float64 keeps the inverse accurate for float32 weights too (a chain of ten 27x27
            # inverses loses digits quickly in float32).
            w64 = w.detach().double()
            inverse = torch.linalg.inv(w64).to(w.dtype)
            logdet = torch.linalg.slogdet(w64)[1].to(w.dtype)
        computed = _InverseCache(w.detach(), version, inverse, logdet)
        self._cache = computed if version is not None else None
        return computed

    def clear_cache(self) -> None:
        """Drop the cached inverse (it is also refreshed automatically when the weight changes)."""
        self._cache = None

    def forward(self, x: Tensor) -> Tensor:
        """``W x + b`` for each vector ``x`` along the last dimension."""
        return F.linear(x, self._weight, self.bias)

    def logdet(self) -> Tensor:
        """``log|det W|`` (a scalar)."""
        if self._needs_graph():
            return torch.linalg.slogdet(self._weight)[1]
        return self._cached().logdet

    def inverse_matrix(self) -> Tensor:
        """``W^-1`` (cached unless gradients must reach ``W``)."""
        if self._needs_graph():
            return torch.linalg.inv(self._weight)
        return self._cached().inverse

    def reverse(self, y: Tensor, solve: bool = False) -> Tensor:
        """``W^-1 (y - b)``.

        Args:
            y: Values (..., D).
            solve: Solve the linear system at this call instead of using the cached inverse (the
                release's way; slower, for checks). Default: False.
        """
        y = y - self.bias
        if solve:
            flat = y.reshape(-1, y.shape[-1]).transpose(0, 1)
            return torch.linalg.solve(self._weight, flat).transpose(0, 1).reshape(y.shape)
        return F.linear(y, self.inverse_matrix())


class PointwiseFlow(nn.Module):
    """``num_layers`` x [linear map, affine with given parameters], then a last linear map.

    The affine step of layer i uses the i-th slice of ``2 * dim`` parameter channels: the first
    ``dim`` are the raw scale s, the next ``dim`` the shift t; ``scale = sigmoid(s + 2) + eps`` and
    ``y = x * scale + t``. The base distribution is N(0, I).

    Args:
        dim (int): Values per location D (3 * patch_size**2 for LINF).
        num_layers (int): Number of linear + affine layers. Default: 10.
        eps (float): Added to the sigmoid scale so it never reaches 0. Default: 1e-4.
    """

    def __init__(self, dim: int, num_layers: int = 10, eps: float = 1e-4) -> None:
        super().__init__()
        self.dim = dim
        self.num_layers = num_layers
        self.eps = eps
        self.linears = nn.ModuleList(InvertibleLinear(dim) for _ in range(num_layers))
        self.last = InvertibleLinear(dim)

    @property
    def param_channels(self) -> int:
        """Affine parameter channels per location: ``2 * num_layers * dim``."""
        return 2 * self.num_layers * self.dim

    def _affine(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """(scale, shift), each (..., num_layers, dim)."""
        if params.shape[-1] != self.param_channels:
            raise ValueError(
                f'PointwiseFlow with {self.num_layers} layers of dim {self.dim} needs {self.param_channels} '
                f'parameter channels, got {params.shape[-1]}'
            )
        p = params.unflatten(-1, (self.num_layers, 2, self.dim))
        return torch.sigmoid(p[..., 0, :] + 2.0) + self.eps, p[..., 1, :]

    def encode(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Data -> latent. Returns ``(z, logdet)`` with z (..., D) and logdet (...)."""
        scale, shift = self._affine(params)
        logdet = torch.log(scale).sum(dim=(-2, -1))
        for i, linear in enumerate(self.linears):
            x = linear(x) * scale[..., i, :] + shift[..., i, :]
            logdet = logdet + linear.logdet()
        return self.last(x), logdet + self.last.logdet()

    def log_prob(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(log p(x), z)``: ``log p = logdet + sum -(z^2 + log 2 pi) / 2`` (natural log), shape (...)."""
        z, logdet = self.encode(x, params)
        return logdet - 0.5 * (z.square() + LOG_2PI).sum(-1), z

    def decode(self, z: Tensor, params: Tensor, solve: bool = False) -> Tensor:
        """Latent -> data, the exact inverse of :meth:`encode`.

        Args:
            z: Latents (..., D).
            params: Affine parameters (..., 2 * num_layers * D).
            solve: Solve each linear system instead of using the cached inverses. Default: False.
        """
        scale, shift = self._affine(params)
        x = self.last.reverse(z, solve)
        for i in range(self.num_layers - 1, -1, -1):
            x = self.linears[i].reverse((x - shift[..., i, :]) / scale[..., i, :], solve)
        return x
