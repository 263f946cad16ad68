"""Baseline fusions for ablations: ``ConcatFusion`` (concat + 1×1 projection) and ``AddFusion``.

Example:
    >>> ConcatFusion(8, spatial_dims=2)(torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)).shape
    torch.Size([1, 8, 4, 4])
"""

from __future__ import annotations

import torch
from torch import nn

from fusionseg.fusion.dff import check_same_shape
from fusionseg.layers import check_positive_int, check_spatial_dims, conv_type

__all__ = ["AddFusion", "ConcatFusion"]


class _SkipFusion(nn.Module):
    """Shared constructor and input check: ``dim`` channels in x, skip and the output; 2D or 3D."""

    def __init__(self, dim: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.dim = check_positive_int(f"{type(self).__name__} dim", dim)
        self.spatial_dims = check_spatial_dims(spatial_dims)

    def check(self, x: torch.Tensor, skip: torch.Tensor) -> None:
        check_same_shape(type(self).__name__, x, skip, self.dim, self.spatial_dims)


class ConcatFusion(_SkipFusion):
    """``Conv1x1(concat([x, skip]))``: 2·dim → dim channels, with bias (2·dim² + dim parameters)."""

    def __init__(self, dim: int, spatial_dims: int = 3) -> None:
        super().__init__(dim, spatial_dims)
        self.proj = conv_type(spatial_dims)(2 * dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        self.check(x, skip)
        return self.proj(torch.cat([x, skip], 1))


class AddFusion(_SkipFusion):
    """``x + skip`` (no parameters)."""

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        self.check(x, skip)
        return x + skip
