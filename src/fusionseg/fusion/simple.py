"""Baseline fusions for ablations: ``ConcatFusion`` (concat + 1×1 projection) and ``AddFusion``.

Example:
    >>> ConcatFusion(8, spatial_dims=2)(torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)).shape
    torch.Size([1, 8, 4, 4])
"""

from __future__ import annotations

import torch
from torch import nn

from fusionseg.fusion.dff import check_same_shape
from fusionseg.layers import check_spatial_dims, conv_type

__all__ = ["AddFusion", "ConcatFusion"]


class ConcatFusion(nn.Module):
    """``Conv1x1(concat([x, skip]))``: 2·dim → dim channels, with bias (2·dim² + dim parameters)."""

    def __init__(self, dim: int, spatial_dims: int = 3) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"ConcatFusion dim must be a positive int, got {dim!r}")
        self.dim, self.spatial_dims = dim, check_spatial_dims(spatial_dims)
        self.proj = conv_type(spatial_dims)(2 * dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        check_same_shape("ConcatFusion", x, skip, self.dim, self.spatial_dims)
        return self.proj(torch.cat([x, skip], 1))


class AddFusion(nn.Module):
    """``x + skip`` (no parameters)."""

    def __init__(self, dim: int, spatial_dims: int = 3) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"AddFusion dim must be a positive int, got {dim!r}")
        self.dim, self.spatial_dims = dim, check_spatial_dims(spatial_dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        check_same_shape("AddFusion", x, skip, self.dim, self.spatial_dims)
        return x + skip
