"""DLK — Dynamic Large Kernel layer, module and block of D-Net (arXiv 2403.10674; spec: ``specs/dnet.md``).

Every module has two numerically equivalent forward paths, chosen by its ``fast`` attribute
(set for a whole network with :func:`set_fast_path`):

- plain (``fast=False``): the original's op sequence — every 1×1 conv an ``nn.Conv``, the
  spatial selection computed as ``u·w0 + u·w1``, concat / multiply / add as separate ops;
  tensors keep whatever layout the previous op produced (the original's way).
- fast (``fast=True``, default): expects channels-last input (it still works, slower, on any
  layout); 1×1 convs run as matmuls on the channels-last view (residuals added in place to the
  matmul output), depthwise convs run on channels-last tensors (dilated ones as undilated convs
  on the interleaved sub-grids; in 3D a custom backward, see :class:`_SameConv3d`), the
  layer-scale residuals are single ``addcmul`` ops, the spatial selection is one ``u·(w0+w1)``
  and the channel attention is folded into the residual add.

Example:
    >>> block = DLKBlock(32, spatial_dims=3)
    >>> x = to_channels_last(torch.randn(1, 32, 8, 8, 8))
    >>> block(x).shape
    torch.Size([1, 32, 8, 8, 8])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fusionseg.layers import (
    DropPath,
    LayerNormChannels,
    check_spatial_dims,
    conv_type,
    is_channels_last,
    spatial_mean,
)

__all__ = [
    "DLKBlock",
    "DLKLayer",
    "DLKMlp",
    "DLKModule",
    "conv_few_channels",
    "depthwise",
    "mlp_in_slabs",
    "pointwise",
    "set_fast_path",
    "upsample2x",
]

# Inference MLPs run in slabs of about this many voxels: the 4×-wide hidden tensor of one slab
# (2^15 · 4·C floats, 24 MiB at C = 48) stays below glibc's mmap threshold, so it is reused
# instead of freshly page-faulted, and the passes over it stay cache-friendlier.
SLAB_VOXELS = 2**15


def pointwise(x: torch.Tensor, conv: nn.Module, residual: torch.Tensor | None = None) -> torch.Tensor:
    """A 1×1 ``conv`` applied to (B, C, *S) ``x`` as one matmul over the channels-last view (+ ``residual``).

    The output (B, C_out, *S) is channels-last. No copy when ``x`` is channels-last.
    """
    y = F.linear(x.movedim(1, -1), conv.weight.flatten(1), conv.bias)
    if residual is not None:
        y = y.add_(residual.movedim(1, -1))  # in place on the matmul output itself, not on a view
    return y.movedim(-1, 1)


class _SameConv3d(torch.autograd.Function):
    """Stride-1 "same" 3D conv (depthwise, or dense C → C) with a faster CPU backward.

    grad_input is the forward conv of grad_output with the flipped (and, dense, transposed)
    kernel (stride 1, symmetric padding). grad_weight is split into one 2D weight-gradient per
    depth tap over (depth-slice, H, W) views — oneDNN's 2D kernels are several times faster
    there than its 3D one. Saves only x and the weight (as the builtin does).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, dilation: int, groups: int):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.groups, ctx.has_bias = padding, dilation, groups, bias is not None
        return F.conv3d(x, weight, bias, padding=padding, dilation=dilation, groups=groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        p, dil, c = ctx.padding, ctx.dilation, ctx.groups
        k, depth = weight.shape[2], x.shape[2]
        grad = to_channels_last_3d(grad)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w_t = weight.flip(2, 3, 4) if c > 1 else weight.flip(2, 3, 4).transpose(0, 1)
            grad_x = F.conv3d(grad, w_t, padding=p, dilation=dil, groups=c)
        if ctx.needs_input_grad[1]:
            x_cl = to_channels_last_3d(x)
            grad_w = weight.new_zeros(weight.shape)
            for b in range(x.shape[0]):
                xs, gs = x_cl[b].movedim(0, -1), grad[b].movedim(0, -1)  # (D, H, W, C) views
                for i in range(k):
                    off = i * dil - p  # output depth d reads input depth d + off
                    lo, hi = max(0, -off), min(depth, depth - off)
                    if lo >= hi:
                        continue
                    grad_w[:, :, i] += torch.ops.aten.convolution_backward(
                        gs[lo:hi].movedim(-1, 1), xs[lo + off : hi + off].movedim(-1, 1), weight[:, :, i],
                        None, [1, 1], [p, p], [dil, dil], False, [0, 0], c, [False, True, False],
                    )[1]  # fmt: skip
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.movedim(1, -1).reshape(-1, grad.shape[1]).sum(0)
        return grad_x, grad_w, grad_b, None, None, None


def to_channels_last_3d(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) ``x`` stored channels-last (no copy when it already is)."""
    return x.contiguous(memory_format=torch.channels_last_3d)


def _to_phases(x: torch.Tensor, dil: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(B, C, *S) channels-last → (B·dil^n, C, *S/dil): the dil^n interleaved sub-grids as a batch (zero-padded)."""
    b, c, *sizes = x.shape
    n = len(sizes)
    xs = x.movedim(1, -1)
    pads = [(-s) % dil for s in sizes]
    if any(pads):
        xs = F.pad(xs, [0, 0, *(v for p in reversed(pads) for v in (0, p))])  # (C, then W, H, D: after the end)
    grid = [(s + p) // dil for s, p in zip(sizes, pads)]
    z = xs.reshape(b, *[v for g in grid for v in (g, dil)], c)  # (B, g0, r0, g1, r1, .., C)
    z = z.permute(0, *[2 + 2 * a for a in range(n)], *[1 + 2 * a for a in range(n)], 2 * n + 1)
    return z.reshape(b * dil**n, *grid, c).movedim(-1, 1), tuple(sizes)


def _from_phases(y: torch.Tensor, dil: int, sizes: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`_to_phases` (crops the padding), channels-last out."""
    n = len(sizes)
    grid, c = y.shape[2:], y.shape[1]
    b = y.shape[0] // dil**n
    z = y.movedim(1, -1).reshape(b, *(dil,) * n, *grid, c)
    z = z.permute(0, *[v for a in range(n) for v in (1 + n + a, 1 + a)], 2 * n + 1)
    z = z.reshape(b, *(g * dil for g in grid), c)
    if any(g * dil != s for g, s in zip(grid, sizes)):
        z = z[(slice(None), *(slice(0, s) for s in sizes))].contiguous()
    return z.movedim(-1, 1)


def _same_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pad: int, groups: int) -> torch.Tensor:
    if x.ndim == 5 and x.device.type == "cpu" and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"):
        return _SameConv3d.apply(to_channels_last_3d(x), weight, bias, pad, 1, groups)
    fn = F.conv3d if x.ndim == 5 else F.conv2d
    return fn(x, weight, bias, padding=pad, groups=groups)


def depthwise(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """A stride-1 "same" ``conv`` (depthwise, or dense C → C) on channels-last ``x``, fast forward and backward.

    A dilated depthwise conv runs as an undilated one on the dilation^n interleaved sub-grids
    (exactly the same sums; oneDNN's dilated depthwise kernels are 4-30× slower). In 3D on CPU
    the backward uses :class:`_SameConv3d`.
    """
    k, dil, pad = conv.kernel_size[0], conv.dilation[0], conv.padding[0]
    uniform = len(set(conv.kernel_size)) == len(set(conv.dilation)) == len(set(conv.padding)) == 1
    same = uniform and conv.stride[0] == 1 and pad == dil * (k - 1) // 2 and x.ndim in (4, 5)
    if not same or conv.groups not in (1, x.shape[1]):
        return conv(x)
    if dil > 1 and conv.groups == x.shape[1]:
        z, sizes = _to_phases(x, dil)
        return _from_phases(_same_conv(z, conv.weight, conv.bias, (k - 1) // 2, conv.groups), dil, sizes)
    if dil > 1:
        return conv(x)
    return _same_conv(x, conv.weight, conv.bias, pad, conv.groups)


def upsample2x(x: torch.Tensor, conv_t: nn.Module) -> torch.Tensor:
    """A kernel-2 stride-2 transposed conv as one matmul plus one interleaving copy, channels-last out.

    Each input voxel emits a 2×…×2 block: ``y[b, 2d+i, 2h+j, 2w+k, :] = x[b, d, h, w, :] · W[:, :, i, j, k] + bias``.
    """
    b, c_in, *sizes = x.shape
    c_out, n = conv_t.weight.shape[1], len(sizes)
    w = conv_t.weight.movedim(1, -1).reshape(c_in, -1)  # (C_in, 2^n · C_out), offsets (i, j, k) outer
    y = (x.movedim(1, -1) @ w).view(b, *sizes, *(2,) * n, c_out)  # (B, *S, 2, .., 2, C_out)
    # interleave: (B, D, H, W, i, j, k, C) → (B, D, i, H, j, W, k, C)
    order = [0] + [p for a in range(n) for p in (1 + a, 1 + n + a)] + [1 + 2 * n]
    y = y.permute(order).reshape(b, *(2 * s for s in sizes), c_out)
    if conv_t.bias is not None:
        y = y.add_(conv_t.bias)
    return y.movedim(-1, 1)


def conv_few_channels(
    conv: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor | None:
    """A dense ``conv`` (its stride and padding; ``weight``/``bias`` may be BN-folded) on an input with
    few channels, as one matmul over im2col columns; channels-last out. None when it does not apply.

    With 1-4 input channels oneDNN is not used and the builtin falls back to a slow NC* kernel plus
    a layout copy; the columns here are (B·S_out, C_in·k^n) — small because C_in is. Inference only
    (no gradients): in training the columns would be kept for the backward, more memory than the builtin.
    """
    n, c_in = x.ndim - 2, x.shape[1]
    k, stride, pad = conv.kernel_size, conv.stride, conv.padding
    fits = (
        not torch.is_grad_enabled()
        and n in (2, 3)
        and c_in <= 4
        and conv.groups == 1
        and conv.dilation == (1,) * n
        and isinstance(pad, tuple)
        and len(set(k)) == len(set(stride)) == len(set(pad)) == 1
        and c_in * math.prod(k) <= 512
    )
    if not fits:
        return None
    k, s, p = k[0], stride[0], pad[0]
    xp = F.pad(x, (p, p) * n) if p else x
    out = [(size + 2 * p - k) // s + 1 for size in x.shape[2:]]
    st = xp.stride()
    # (B, *S_out, C_in, *kernel) view: output position o reads input o·s + tap
    cols = xp.as_strided((x.shape[0], *out, c_in, *(k,) * n), (st[0], *(v * s for v in st[2:]), st[1], *st[2:]))
    y = F.linear(cols.reshape(-1, c_in * k**n), weight.flatten(1), bias)
    return y.view(x.shape[0], *out, -1).movedim(-1, 1)


def set_fast_path(module: nn.Module, fast: bool) -> nn.Module:
    """Switch every submodule with a ``fast`` attribute to the fast (True) or plain (False) path."""
    for m in module.modules():
        if hasattr(m, "fast"):
            m.fast = bool(fast)
    return module


def _check_dim(dim: int, name: str) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"{name} dim must be a positive int (number of channels), got {dim!r}")
    return dim


class DLKLayer(nn.Module):
    """Dynamic large-kernel attention (official name ``spatial_gating_unit``), spec "DLK layer".

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
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return self._forward_fast(x)
        return self._forward_plain(x)

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
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
        w = torch.sigmoid(depthwise(m, self.spatial_se[0]))
        if self.version == 1:
            return (a1 * w[:, 0:1] + x).addcmul_(a2, w[:, 1:2])
        s = (w[:, 0] + w[:, 1]).unsqueeze(-1)  # u·w0 + u·w1 = u·(w0 + w1), (B, *S, 1)
        # Channel gate on mean_S(u·s) = sᵀu / N, a batched matmul: u·s is never stored for it.
        b, c = x.shape[:2]
        mean_us = torch.bmm(s.reshape(b, 1, -1), u.reshape(b, -1, c)).squeeze(1) / s[0].numel()
        gate = torch.sigmoid(F.linear(mean_us, self.conv_atten[0].weight.flatten(1)))  # (B, C)
        scale = s * gate.view(b, *(1,) * self.spatial_dims, c)  # (B, *S, C): s ⊗ gate
        return torch.addcmul(x.movedim(1, -1), u, scale).movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, version={self.version}, spatial_dims={self.spatial_dims}"


class DLKModule(nn.Module):
    """``proj_2(DLK(GELU(proj_1(x)))) + x`` (official name ``attn``), spec "DLK module".

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
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            h = F.gelu(pointwise(x, self.proj_1))
            return pointwise(self.spatial_gating_unit(h), self.proj_2, residual=x)
        h = self.activation(self.proj_1(x))
        return self.proj_2(self.spatial_gating_unit(h)) + x


def mlp_in_slabs(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    dwconv: nn.Module,
    fc2: nn.Module,
    residual: bool = False,
) -> torch.Tensor | None:
    """No-grad ``fc2(GELU(dwconv(fc1(x)))) (+ x)`` on channels-last ``x``, slab by slab along the first spatial axis.

    Each slab recomputes ``fc1`` on one extra plane each side (the 3-tap depthwise conv's halo);
    at the volume's faces the hidden tensor is zero-padded, exactly like the full conv. Same numbers
    as the whole-tensor path, without ever holding the (B, 4·C, *S) hidden tensor. Returns None when
    the slab path does not apply (gradients needed, small input, other conv shapes, not
    channels-last): the caller then runs the whole-tensor path.

    Example:
        >>> mlp = DLKMlp(4, 16, spatial_dims=3).eval()
        >>> x = torch.randn(1, 4, 80, 32, 32).contiguous(memory_format=torch.channels_last_3d)
        >>> with torch.no_grad():
        ...     y = mlp_in_slabs(x, mlp.fc1.weight.flatten(1), mlp.fc1.bias, mlp.dwconv, mlp.fc2)
        >>> y.shape
        torch.Size([1, 4, 80, 32, 32])
    """
    n = x.ndim - 2
    sizes = x.shape[2:]
    plane = math.prod(sizes[1:]) * x.shape[0]
    slab = max(1, SLAB_VOXELS // max(plane, 1))
    fits = (
        not torch.is_grad_enabled()
        and n in (2, 3)
        and sizes[0] > 2 * slab
        and dwconv.kernel_size == (3,) * n
        and dwconv.padding == (1,) * n
        and dwconv.dilation == (1,) * n
        and dwconv.stride == (1,) * n
        and is_channels_last(x)
    )
    if not fits:
        return None
    xs = x.movedim(1, -1)  # (B, *S, C) contiguous
    depth, conv = sizes[0], F.conv3d if n == 3 else F.conv2d
    out = None
    for d0 in range(0, depth, slab):
        d1 = min(depth, d0 + slab)
        lo, hi = max(0, d0 - 1), min(depth, d1 + 1)
        h = F.linear(xs[:, lo:hi], fc1_weight, fc1_bias).movedim(-1, 1)
        if lo == d0 or hi == d1:  # volume face: the full conv's zero padding of the hidden tensor
            h = F.pad(h, (0, 0) * (n - 1) + (int(lo == d0), int(hi == d1)))
        h = F.gelu(conv(h, dwconv.weight, dwconv.bias, padding=(0,) + (1,) * (n - 1), groups=dwconv.groups))
        y = F.linear(h.movedim(1, -1), fc2.weight.flatten(1), fc2.bias)
        if residual:
            y = y.add_(xs[:, d0:d1])
        if out is None:
            out = xs.new_empty((*xs.shape[:-1], y.shape[-1]), dtype=y.dtype)
        out[:, d0:d1] = y
    return out.movedim(-1, 1)


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
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            y = mlp_in_slabs(x, self.fc1.weight.flatten(1), self.fc1.bias, self.dwconv, self.fc2)
            if y is not None:
                return y
            return pointwise(F.gelu(depthwise(pointwise(x, self.fc1), self.dwconv)), self.fc2)
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class DLKBlock(nn.Module):
    """D-Net block, spec "DLK block": ``y = x + γ·attn(LN(x))``; ``z = y + γ·mlp(LN(y))``.

    One LayerNorm (``norm_layer``) and one layer-scale vector γ (``layer_scale``, init 1e-6)
    are shared by both halves, as in the official code. DropPath applies to both branches.

    Args:
        dim: channels.
        spatial_dims: 2 or 3.
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
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            gamma = self.layer_scale  # broadcasts over the channels-last view
            y = torch.addcmul(x.movedim(1, -1), self.drop_path(self.attn(self.norm_layer(x))).movedim(1, -1), gamma)
            y = y.movedim(-1, 1)
            z = torch.addcmul(y.movedim(1, -1), self.drop_path(self.mlp(self.norm_layer(y))).movedim(1, -1), gamma)
            return z.movedim(-1, 1)
        gamma = self.layer_scale.view(-1, *(1,) * self.spatial_dims)
        x = x + self.drop_path(gamma * self.attn(self.norm_layer(x)))
        return x + self.drop_path(gamma * self.mlp(self.norm_layer(x)))
