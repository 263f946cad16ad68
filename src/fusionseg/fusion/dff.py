"""DFF — Dynamic Feature Fusion (D-Net, arXiv 2403.10674; spec: ``specs/fusion.md``, DFF).

Example:
    >>> dff = DFF(32, spatial_dims=3)
    >>> x, skip = torch.randn(2, 32, 8, 8, 8), torch.randn(2, 32, 8, 8, 8)
    >>> dff(x, skip).shape
    torch.Size([2, 32, 8, 8, 8])
"""

from __future__ import annotations

import torch
from torch import nn

from fusionseg.layers import check_spatial_dims, conv_type, is_channels_last, spatial_mean

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
    """Dynamic Feature Fusion of a decoder feature ``x`` and an encoder ``skip`` of equal shape.

    ``out = W_r · (concat(x, skip) ⊙ a) ⊙ σ(w_1·x + w_2·skip + b)`` with the channel gate
    ``a = σ(W_a · mean_S(concat(x, skip)))``. Parameter names follow the official code, so
    original state_dicts load strictly. ``6·dim² + 2·dim + 2`` parameters.

    The forward pass never builds the concat or the gated copy: the gate is folded into
    per-sample weights ``W_r·diag(a)`` (split into x and skip halves) and the spatial gate is
    one more output row of the same batched matmul. Layout (NC* or channels-last) is kept.

    Args:
        dim: channels of ``x``, ``skip`` and the output.
        spatial_dims: 2 or 3.

    Example:
        >>> DFF(16, spatial_dims=2)(torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 16, 8, 8])
    """

    def __init__(self, dim: int, spatial_dims: int = 3) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"DFF dim must be a positive int (channels of x and skip), got {dim!r}")
        self.dim = dim
        self.spatial_dims = check_spatial_dims(spatial_dims)
        conv = conv_type(spatial_dims)
        self.conv_atten = nn.Sequential(conv(2 * dim, 2 * dim, kernel_size=1, bias=False), nn.Sigmoid())
        self.conv_redu = conv(2 * dim, dim, kernel_size=1, bias=False)
        self.conv1 = conv(dim, 1, kernel_size=1, bias=True)
        self.conv2 = conv(dim, 1, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        check_same_shape("DFF", x, skip, self.dim, self.spatial_dims)
        d = self.dim
        b = x.shape[0]
        # Channel gate a = σ(W_a · [mean x; mean skip]) — (B, 2d).
        w_a = self.conv_atten[0].weight.flatten(1)
        gate = torch.sigmoid(torch.cat([spatial_mean(x), spatial_mean(skip)], 1) @ w_a.t())
        # Per-sample weights: rows 0..d-1 are W_r·diag(a), row d is the spatial-gate conv (spec step 4).
        w_r = self.conv_redu.weight.flatten(1)
        w_x = torch.cat(
            [w_r[:, :d].expand(b, d, d) * gate[:, None, :d], self.conv1.weight.flatten(1).expand(b, 1, d)], 1
        )
        w_s = torch.cat(
            [w_r[:, d:].expand(b, d, d) * gate[:, None, d:], self.conv2.weight.flatten(1).expand(b, 1, d)], 1
        )
        gate_bias = self.conv1.bias + self.conv2.bias
        if is_channels_last(x) and is_channels_last(skip):
            xs, ss = x.movedim(1, -1).reshape(b, -1, d), skip.movedim(1, -1).reshape(b, -1, d)  # (B, N, d) views
            y = torch.baddbmm(torch.bmm(ss, w_s.transpose(1, 2)), xs, w_x.transpose(1, 2))  # (B, N, d+1)
            out = y[..., :d] * torch.sigmoid(y[..., d:] + gate_bias)
            return out.view(b, *x.shape[2:], d).movedim(-1, 1)
        xs, ss = x.reshape(b, d, -1), skip.reshape(b, d, -1)  # (B, d, N)
        y = torch.baddbmm(torch.bmm(w_s, ss), w_x, xs)  # (B, d+1, N)
        out = y[:, :d] * torch.sigmoid(y[:, d:] + gate_bias)
        return out.view(x.shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, spatial_dims={self.spatial_dims}"
