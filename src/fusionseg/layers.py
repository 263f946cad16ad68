"""Dimension-generic building blocks shared by every module and network.

Everything here is pure PyTorch and picks its 2D or 3D variant from ``spatial_dims``; the argument
checks every module shares (:func:`check_spatial_dims`, :func:`check_positive_int`, :func:`int_list`) live here too.

Example:
    >>> conv = conv_type(3)(8, 16, kernel_size=3, padding=1)
    >>> x = to_channels_last(torch.randn(1, 8, 4, 4, 4))
    >>> LayerNormChannels(16)(conv(x)).shape
    torch.Size([1, 16, 4, 4, 4])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DropPath",
    "LayerNormChannels",
    "batch_norm_type",
    "channels_last_format",
    "check_positive_int",
    "check_spatial_dims",
    "conv_transpose_type",
    "conv_type",
    "int_list",
    "is_channels_last",
    "max_pool_type",
    "spatial_mean",
    "to_channels_last",
]

_CONV: dict[int, type[nn.Conv1d | nn.Conv2d | nn.Conv3d]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T: dict[int, type[nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d]] = {
    1: nn.ConvTranspose1d,
    2: nn.ConvTranspose2d,
    3: nn.ConvTranspose3d,
}
_BN: dict[int, type[nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d]] = {
    1: nn.BatchNorm1d,
    2: nn.BatchNorm2d,
    3: nn.BatchNorm3d,
}
_MAXPOOL: dict[int, type[nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d]] = {
    1: nn.MaxPool1d,
    2: nn.MaxPool2d,
    3: nn.MaxPool3d,
}


def check_positive_int(name: str, value: object) -> int:
    """``value`` if it is an int ≥ 1 (not a bool); ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def int_list(name: str, values: int | Sequence[int], length: int | None = None, minimum: int = 1) -> list[int]:
    """``values`` (one int or a sequence) as a list of ints ≥ ``minimum``, ``length`` of them when given;
    ValueError naming ``name`` otherwise."""
    values = [values] if isinstance(values, int) else list(values)
    if (length is not None and len(values) != length) or any(
        isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values
    ):
        size = f"{length} " if length is not None else ""
        raise ValueError(f"{name} must be {size}integers ≥ {minimum}, got {values!r}")
    return values


def check_spatial_dims(spatial_dims: int, allowed: tuple[int, ...] = (2, 3)) -> int:
    """Return ``spatial_dims`` or raise a ``ValueError`` naming the allowed values."""
    if isinstance(spatial_dims, bool) or spatial_dims not in allowed:
        raise ValueError(f"spatial_dims must be one of {allowed} (2 for images, 3 for volumes), got {spatial_dims!r}")
    return int(spatial_dims)


def conv_type(spatial_dims: int) -> type[nn.Conv1d | nn.Conv2d | nn.Conv3d]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _CONV[check_spatial_dims(spatial_dims, (1, 2, 3))]


def conv_transpose_type(spatial_dims: int) -> type[nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return _CONV_T[check_spatial_dims(spatial_dims, (1, 2, 3))]


def batch_norm_type(spatial_dims: int) -> type[nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d]:
    """``nn.BatchNorm2d`` or ``nn.BatchNorm3d``."""
    return _BN[check_spatial_dims(spatial_dims, (1, 2, 3))]


def max_pool_type(spatial_dims: int) -> type[nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return _MAXPOOL[check_spatial_dims(spatial_dims, (1, 2, 3))]


def channels_last_format(ndim: int) -> torch.memory_format:
    """Memory format that stores channels last for a tensor of ``ndim`` dims (4 → 2D, 5 → 3D)."""
    if ndim == 4:
        return torch.channels_last
    if ndim == 5:
        return torch.channels_last_3d
    return torch.contiguous_format


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` (B, C, *S) laid out channels-last (no copy when it already is)."""
    return x.contiguous(memory_format=channels_last_format(x.ndim))


def is_channels_last(x: torch.Tensor) -> bool:
    """True when (B, C, *S) ``x`` is stored channels-last, i.e. ``x.movedim(1, -1)`` is contiguous."""
    return x.ndim in (4, 5) and x.movedim(1, -1).is_contiguous()


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over all spatial dims of (B, C, *S) → (B, C). Deterministic, unlike adaptive pooling."""
    return x.mean(dim=tuple(range(2, x.ndim)))


class LayerNormChannels(nn.Module):
    """LayerNorm over the channel dim of a (B, C, *S) tensor.

    On channels-last input the channel axis is already innermost, so the norm runs on a
    view with no permute copy, and the output keeps the channels-last layout.

    Example:
        >>> LayerNormChannels(8)(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, elementwise_affine: bool = True) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        self.num_channels = num_channels
        self.eps = eps
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.num_channels:
            raise ValueError(
                f"LayerNormChannels expects {self.num_channels} channels at dim 1, got input of shape {tuple(x.shape)}"
            )
        y = F.layer_norm(x.movedim(1, -1), (self.num_channels,), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples with probability ``drop_prob`` and rescale the rest."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or when ``drop_prob == 0``)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
