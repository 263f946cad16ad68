"""DFF — Dynamic Feature Fusion (D-Net, Yang et al., arXiv 2403.10674).

Example:
    >>> dff = DFF(32, spatial_dims=3)
    >>> x, skip = torch.randn(2, 32, 8, 8, 8), torch.randn(2, 32, 8, 8, 8)
    >>> dff(x, skip).shape
    torch.Size([2, 32, 8, 8, 8])
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from fusionseg.kernels.dff import dff
from fusionseg.kernels.switch import reference_ops_default
from fusionseg.layers import check_positive_int, check_spatial_dims, conv_type

__all__ = ["DFF", "check_same_shape"]


def check_same_shape(name: str, x: torch.Tensor, skip: torch.Tensor, channels: int, spatial_dims: int) -> None:
    """Raise a ``ValueError`` naming both shapes unless x and skip are (B, channels, *S) alike."""
    ndim = spatial_dims + 2
    if x.ndim != ndim or skip.ndim != ndim:
        raise ValueError(
            f"{name} with spatial_dims={spatial_dims} expects {ndim}-D inputs (B, C, *S); "
            f"got x {tuple(x.shape)} and skip {tuple(skip.shape)}"
        )
    if x.shape != skip.shape or x.shape[1] != channels:
        raise ValueError(
            f"{name}({channels}) needs x and skip of the same shape (B, {channels}, *S); "
            f"got x {tuple(x.shape)} and skip {tuple(skip.shape)}"
        )


class DFF(nn.Module):
    """Dynamic Feature Fusion of a decoder feature ``x`` and an encoder ``skip`` of equal shape (B, dim, *S).

    1. ``u = concat(x, skip)`` (B, 2·dim, *S);
    2. channel gate ``a = σ(W_a · mean_S(u))`` (``conv_atten``: 2·dim → 2·dim 1×1 conv, no bias);
    3. ``v = W_r · (u ⊙ a)`` (``conv_redu``: 2·dim → dim 1×1 conv, no bias);
    4. spatial gate ``s = σ(w_1·x + b_1 + w_2·skip + b_2)`` (``conv1``, ``conv2``: dim → 1 with bias);
    5. output ``v ⊙ s`` — no norm, no activation, no residual.

    Parameter names follow the official code, so original state_dicts load strictly;
    ``6·dim² + 2·dim + 2`` parameters. Two implementations, same numbers, chosen by ``reference_ops``
    (:mod:`fusionseg.kernels.switch`): fast (default) — :func:`fusionseg.kernels.dff.dff`, which never
    builds the concat or the gated copy, keeps the input's layout (NC* or channels-last) and has a
    hand-written backward; ``reference_ops = True`` — the five steps above, literally, with the
    module's convolutions (what the tests compare the fast path against).

    Args:
        dim: channels of ``x``, ``skip`` and the output.
        spatial_dims: 3 (default) or 2.

    Example:
        >>> DFF(16, spatial_dims=2)(torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 16, 8, 8])
    """

    def __init__(self, dim: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.dim = check_positive_int("DFF dim", dim)  # channels of x and skip
        self.spatial_dims = check_spatial_dims(spatial_dims)
        conv = conv_type(spatial_dims)
        self.conv_atten = nn.Sequential(conv(2 * dim, 2 * dim, kernel_size=1, bias=False), nn.Sigmoid())
        self.conv_redu = conv(2 * dim, dim, kernel_size=1, bias=False)
        self.conv1 = conv(dim, 1, kernel_size=1, bias=True)
        self.conv2 = conv(dim, 1, kernel_size=1, bias=True)
        self.reference_ops = reference_ops_default()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        check_same_shape("DFF", x, skip, self.dim, self.spatial_dims)
        if not self.reference_ops:  # fused kernel: no concat, no gated copy, hand-written backward
            w_atten = cast(_ConvNd, self.conv_atten[0]).weight.flatten(1)  # nn.Sequential items are nn.Module
            w_redu = self.conv_redu.weight.flatten(1)
            w1, w2 = self.conv1.weight.view(1, self.dim), self.conv2.weight.view(1, self.dim)
            b1, b2 = self.conv1.bias, self.conv2.bias
            assert b1 is not None and b2 is not None  # conv1 and conv2 are built with bias=True
            return dff(x, skip, w_atten, w_redu, w1, b1, w2, b2)
        # D-Net's DFF, steps 1–5 of the class docstring
        u = torch.cat([x, skip], 1)  # 1. (B, 2·dim, *S)
        a = self.conv_atten(u.mean(dim=tuple(range(2, u.ndim)), keepdim=True))  # 2. channel gate (B, 2·dim, 1…)
        v = self.conv_redu(u * a)  # 3. (B, dim, *S)
        s = torch.sigmoid(self.conv1(x) + self.conv2(skip))  # 4. spatial gate (B, 1, *S)
        return v * s  # 5.

    def extra_repr(self) -> str:
        return f"dim={self.dim}, spatial_dims={self.spatial_dims}"
