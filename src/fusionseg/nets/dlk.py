"""DLK — Dynamic Large Kernel layer, module and block of D-Net (Yang et al., arXiv 2403.10674).

Every module here has two numerically equivalent implementations, chosen by its ``reference_ops``
attribute (set for a whole network with :func:`fusionseg.kernels.set_reference_ops`):

- fast (``reference_ops=False``, default): expects channels-last input (it still works, slower, on
  any layout) and runs the kernels of :mod:`fusionseg.kernels` — 1×1 convs as matmuls on the
  channels-last view (residuals added in place to the matmul output), depthwise convs on
  channels-last tensors (dilated ones on the interleaved sub-grids; in 3D a faster backward), the
  layer-scale residuals as single ``addcmul`` ops, the spatial selection as one ``u·(w0+w1)`` and the
  channel attention folded into the residual add; without gradients the MLP runs in slabs.
- reference (``reference_ops=True``): the original's op sequence — every 1×1 conv an ``nn.Conv``,
  the spatial selection computed as ``u·w0 + u·w1``, concat / multiply / add as separate ops;
  tensors keep whatever layout the previous op produced.

Example:
    >>> block = DLKBlock(32, spatial_dims=3)
    >>> x = to_channels_last(torch.randn(1, 32, 8, 8, 8))
    >>> block(x).shape
    torch.Size([1, 32, 8, 8, 8])
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from fusionseg.kernels.conv import depthwise, pointwise
from fusionseg.kernels.mlp import mlp_in_slabs
from fusionseg.kernels.switch import reference_ops_default
from fusionseg.layers import DropPath, LayerNormChannels, check_spatial_dims, conv_type, spatial_mean

__all__ = ["DLKBlock", "DLKLayer", "DLKMlp", "DLKModule"]


def _check_dim(dim: int, name: str) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"{name} dim must be a positive int (number of channels), got {dim!r}")
    return dim


class DLKLayer(nn.Module):
    """Dynamic large-kernel attention, the DLK layer (official name ``spatial_gating_unit``).

    v2: ``p = W_p x`` (C → C/2); ``a1 = DW5(p)``; ``a2 = DW7_dil3(a1)``; ``u = [a1, a2]``;
    ``w = σ(Conv7([mean_c u, max_c u]))``; ``u = u·w0 + u·w1`` (both weights scale all of u,
    as in the official code); ``u = u·σ(W_a mean_S(u))``; return ``u + x``.
    v1: no projection (C channels), no channel attention; return ``a1·w0 + a2·w1 + x``.

    Example:
        >>> DLKLayer(16, spatial_dims=2)(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 16, 8, 8])
    """

    def __init__(self, dim: int, spatial_dims: int = 3, version: int = 2) -> None:
        super().__init__()
        _check_dim(dim, "DLKLayer")
        if version not in (1, 2):
            raise ValueError(f"DLKLayer version must be 1 or 2, got {version!r}")
        if version == 2 and dim % 2:
            raise ValueError(f"DLKLayer v2 splits dim into halves, so dim must be even; got {dim}")
        self.dim, self.version = dim, version
        self.spatial_dims = check_spatial_dims(spatial_dims)
        conv = conv_type(spatial_dims)
        inner = dim // 2 if version == 2 else dim
        if version == 2:
            self.channel_proj = conv(dim, inner, kernel_size=1, bias=False)
        self.att_conv1 = conv(inner, inner, kernel_size=5, padding=2, groups=inner)
        self.att_conv2 = conv(inner, inner, kernel_size=7, padding=9, dilation=3, groups=inner)
        self.spatial_se = nn.Sequential(conv(2, 2, kernel_size=7, padding=3), nn.Sigmoid())
        if version == 2:
            self.conv_atten = nn.Sequential(conv(dim, dim, kernel_size=1, bias=False), nn.Sigmoid())
        self.reference_ops = reference_ops_default()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_reference(x) if self.reference_ops else self._forward_fast(x)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        p = self.channel_proj(x) if self.version == 2 else x
        a1 = self.att_conv1(p)
        a2 = self.att_conv2(a1)
        u = torch.cat([a1, a2], dim=1)
        w = self.spatial_se(torch.cat([u.mean(1, keepdim=True), u.amax(1, keepdim=True)], dim=1))
        if self.version == 1:
            return a1 * w[:, 0:1] + a2 * w[:, 1:2] + x
        u = u * w[:, 0:1] + u * w[:, 1:2]
        keep = (slice(None), slice(None)) + (None,) * self.spatial_dims
        u = u * self.conv_atten(spatial_mean(u)[keep])
        return u + x

    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        p = pointwise(x, self.channel_proj) if self.version == 2 else x
        a1 = depthwise(p, self.att_conv1)
        a2 = depthwise(a1, self.att_conv2)
        u = torch.cat([a1.movedim(1, -1), a2.movedim(1, -1)], dim=-1)  # (B, *S, 2·inner) contiguous
        m = torch.stack([u.mean(-1), u.amax(-1)], dim=-1).movedim(-1, 1)  # (B, 2, *S) channels-last
        w = torch.sigmoid(depthwise(m, cast(_ConvNd, self.spatial_se[0])))  # nn.Sequential items are nn.Module
        if self.version == 1:
            return (a1 * w[:, 0:1] + x).addcmul_(a2, w[:, 1:2])
        s = (w[:, 0] + w[:, 1]).unsqueeze(-1)  # u·w0 + u·w1 = u·(w0 + w1), (B, *S, 1)
        # Channel gate on mean_S(u·s) = sᵀu / N, a batched matmul: u·s is never stored for it.
        b, c = x.shape[:2]
        mean_us = torch.bmm(s.reshape(b, 1, -1), u.reshape(b, -1, c)).squeeze(1) / s[0].numel()
        gate = torch.sigmoid(F.linear(mean_us, cast(_ConvNd, self.conv_atten[0]).weight.flatten(1)))  # (B, C)
        scale = s * gate.view(b, *(1,) * self.spatial_dims, c)  # (B, *S, C): s ⊗ gate
        return torch.addcmul(x.movedim(1, -1), u, scale).movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, version={self.version}, spatial_dims={self.spatial_dims}"


class DLKModule(nn.Module):
    """The DLK module ``proj_2(DLK(GELU(proj_1(x)))) + x`` (official name ``attn``).

    Example:
        >>> DLKModule(16, spatial_dims=3)(torch.randn(1, 16, 4, 4, 4)).shape
        torch.Size([1, 16, 4, 4, 4])
    """

    def __init__(self, dim: int, spatial_dims: int = 3, version: int = 2) -> None:
        super().__init__()
        _check_dim(dim, "DLKModule")
        conv = conv_type(check_spatial_dims(spatial_dims))
        self.proj_1 = conv(dim, dim, kernel_size=1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = DLKLayer(dim, spatial_dims, version)
        self.proj_2 = conv(dim, dim, kernel_size=1)
        self.reference_ops = reference_ops_default()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_reference(x) if self.reference_ops else self._forward_fast(x)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        h = self.activation(self.proj_1(x))
        return self.proj_2(self.spatial_gating_unit(h)) + x

    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(pointwise(x, self.proj_1))
        return pointwise(self.spatial_gating_unit(h), self.proj_2, residual=x)


class DLKMlp(nn.Module):
    """``fc2(GELU(DWConv3(fc1(x))))`` with hidden width ``hidden`` (official name ``mlp``).

    Example:
        >>> DLKMlp(8, 32, spatial_dims=2)(torch.randn(1, 8, 6, 6)).shape
        torch.Size([1, 8, 6, 6])
    """

    def __init__(self, dim: int, hidden: int, spatial_dims: int = 3) -> None:
        super().__init__()
        _check_dim(dim, "DLKMlp")
        _check_dim(hidden, "DLKMlp hidden")
        conv = conv_type(check_spatial_dims(spatial_dims))
        self.fc1 = conv(dim, hidden, kernel_size=1)
        self.dwconv = conv(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = conv(hidden, dim, kernel_size=1)
        self.reference_ops = reference_ops_default()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_reference(x) if self.reference_ops else self._forward_fast(x)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))

    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        y = mlp_in_slabs(x, self.fc1.weight.flatten(1), self.fc1.bias, self.dwconv, self.fc2)
        if y is not None:  # no gradients, large input: slab by slab
            return y
        return pointwise(F.gelu(depthwise(pointwise(x, self.fc1), self.dwconv)), self.fc2)


class DLKBlock(nn.Module):
    """The D-Net DLK block: ``y = x + γ·attn(LN(x))``; ``z = y + γ·mlp(LN(y))``.

    One LayerNorm (``norm_layer``) and one layer-scale vector γ (``layer_scale``, init 1e-6)
    are shared by both halves, as in the official code. DropPath applies to both branches.

    Args:
        dim: channels.
        spatial_dims: 3 (default) or 2.
        version: 2 (default) or 1 — the DLK layer variant.
        mlp_ratio: MLP hidden width / dim (official 4).
        drop_path: stochastic-depth probability.
        layer_scale_init: initial γ.

    Example:
        >>> DLKBlock(16, spatial_dims=2)(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 16, 8, 8])
    """

    def __init__(
        self,
        dim: int,
        spatial_dims: int = 3,
        version: int = 2,
        mlp_ratio: int = 4,
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-6,
    ) -> None:
        super().__init__()
        _check_dim(dim, "DLKBlock")
        self.layer_scale = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        self.norm_layer = LayerNormChannels(dim, eps=1e-6)
        self.attn = DLKModule(dim, spatial_dims, version)
        self.mlp = DLKMlp(dim, mlp_ratio * dim, spatial_dims)
        self.drop_path = DropPath(drop_path)
        self.spatial_dims = spatial_dims
        self.reference_ops = reference_ops_default()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_reference(x) if self.reference_ops else self._forward_fast(x)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.layer_scale.view(-1, *(1,) * self.spatial_dims)
        x = x + self.drop_path(gamma * self.attn(self.norm_layer(x)))
        return x + self.drop_path(gamma * self.mlp(self.norm_layer(x)))

    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.layer_scale  # broadcasts over the channels-last view
        y = torch.addcmul(x.movedim(1, -1), self.drop_path(self.attn(self.norm_layer(x))).movedim(1, -1), gamma)
        y = y.movedim(-1, 1)
        z = torch.addcmul(y.movedim(1, -1), self.drop_path(self.mlp(self.norm_layer(y))).movedim(1, -1), gamma)
        return z.movedim(-1, 1)
