"""Convolution kernels for channels-last tensors: same sums as the builtin modules, fewer copies and passes.

Every function takes the ``nn.Conv*`` module (for its weights and geometry) and a (B, C, *S) input and
returns a channels-last (B, C_out, *S_out) tensor.

- :func:`pointwise`: a 1×1 conv as one matmul over the channels-last view (+ an in-place residual).
- :func:`depthwise`: a stride-1 "same" depthwise (or dense C → C) conv; dilated depthwise convs run
  undilated on the dilation^n interleaved sub-grids; in 3D on CPU a faster backward (:class:`_SameConv3d`).
- :func:`upsample2x`: a kernel-2 stride-2 transposed conv as one matmul plus one interleaving copy.
- :func:`conv_few_channels`: a dense conv on 1-4 input channels as one im2col matmul (inference).
- :func:`conv_channels_last`, :func:`conv_bn_channels_last`, :func:`bn_affine`: a dense conv (with an
  eval-mode BatchNorm folded into its weights) that lands channels-last.

Example:
    >>> conv = nn.Conv3d(5, 7, 1)
    >>> x = to_channels_last(torch.randn(2, 5, 3, 4, 6))
    >>> torch.allclose(pointwise(x, conv), conv(x), atol=1e-6)
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from fusionseg.layers import to_channels_last

__all__ = [
    "bn_affine",
    "conv_bn_channels_last",
    "conv_channels_last",
    "conv_few_channels",
    "depthwise",
    "pointwise",
    "upsample2x",
]


def pointwise(x: torch.Tensor, conv: _ConvNd, residual: torch.Tensor | None = None) -> torch.Tensor:
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
        grad = to_channels_last(grad)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w_t = weight.flip(2, 3, 4) if c > 1 else weight.flip(2, 3, 4).transpose(0, 1)
            grad_x = F.conv3d(grad, w_t, padding=p, dilation=dil, groups=c)
        if ctx.needs_input_grad[1]:
            x_cl = to_channels_last(x)
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
        crop = (slice(None), *(slice(0, s) for s in sizes))
        z = z[crop].contiguous()
    return z.movedim(-1, 1)


def _same_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pad: int, groups: int) -> torch.Tensor:
    if x.ndim == 5 and x.device.type == "cpu" and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"):
        return _SameConv3d.apply(to_channels_last(x), weight, bias, pad, 1, groups)
    fn = F.conv3d if x.ndim == 5 else F.conv2d
    return fn(x, weight, bias, padding=pad, groups=groups)


def depthwise(x: torch.Tensor, conv: _ConvNd) -> torch.Tensor:
    """A stride-1 "same" ``conv`` (depthwise, or dense C → C) on channels-last ``x``, fast forward and backward.

    A dilated depthwise conv runs as an undilated one on the dilation^n interleaved sub-grids
    (exactly the same sums; oneDNN's dilated depthwise kernels are 4-30× slower). In 3D on CPU
    the backward uses :class:`_SameConv3d`. Other convs fall back to ``conv(x)``.
    """
    k, dil, pad = conv.kernel_size[0], conv.dilation[0], conv.padding[0]
    uniform = len(set(conv.kernel_size)) == len(set(conv.dilation)) == len(set(conv.padding)) == 1
    same = uniform and conv.stride[0] == 1 and pad == dil * (k - 1) // 2 and x.ndim in (4, 5)
    if not same or isinstance(pad, str) or conv.groups not in (1, x.shape[1]):
        return conv(x)
    if dil > 1 and conv.groups == x.shape[1]:
        z, sizes = _to_phases(x, dil)
        return _from_phases(_same_conv(z, conv.weight, conv.bias, (k - 1) // 2, conv.groups), dil, sizes)
    if dil > 1:
        return conv(x)
    return _same_conv(x, conv.weight, conv.bias, pad, conv.groups)


def upsample2x(x: torch.Tensor, conv_t: _ConvNd) -> torch.Tensor:
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
    conv: _ConvNd, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor | None:
    """A dense ``conv`` (its stride and padding; ``weight``/``bias`` may be BN-folded) on an input with
    few channels, as one matmul over im2col columns; channels-last out. None when it does not apply.

    With 1-4 input channels oneDNN is not used and the builtin falls back to a slow NC* kernel plus
    a layout copy; the columns here are (B·S_out, C_in·k^n) — small because C_in is. Inference only
    (no gradients): in training the columns would be kept for the backward, more memory than the builtin.
    """
    n, c_in = x.ndim - 2, x.shape[1]
    kernel, stride, pad = conv.kernel_size, conv.stride, conv.padding
    if isinstance(pad, str):  # "same" / "valid": the builtin
        return None
    fits = (
        not torch.is_grad_enabled()
        and n in (2, 3)
        and c_in <= 4
        and conv.groups == 1
        and conv.dilation == (1,) * n
        and len(set(kernel)) == len(set(stride)) == len(set(pad)) == 1
        and c_in * math.prod(kernel) <= 512
    )
    if not fits:
        return None
    k, s, p = kernel[0], stride[0], pad[0]
    xp = F.pad(x, (p, p) * n) if p else x
    out = [(size + 2 * p - k) // s + 1 for size in x.shape[2:]]
    st = xp.stride()
    # (B, *S_out, C_in, *kernel) view: output position o reads input o·s + tap
    cols = xp.as_strided((x.shape[0], *out, c_in, *(k,) * n), (st[0], *(v * s for v in st[2:]), st[1], *st[2:]))
    y = F.linear(cols.reshape(-1, c_in * k**n), weight.flatten(1), bias)
    return y.view(x.shape[0], *out, -1).movedim(-1, 1)


def conv_channels_last(
    conv: _ConvNd, x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``conv`` on ``x`` with ``weight``/``bias`` (default: the module's), channels-last out.

    Few input channels without gradients: one im2col matmul (:func:`conv_few_channels`); otherwise the builtin.
    """
    if weight is None:
        weight, bias = conv.weight, conv.bias
    y = conv_few_channels(conv, x, weight, bias)
    return to_channels_last(conv._conv_forward(x, weight, bias)) if y is None else y


def bn_affine(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Eval-mode BatchNorm as ``x·scale + shift`` per channel, or None when it uses batch statistics."""
    mean, var = bn.running_mean, bn.running_var  # buffers: None without running statistics
    if bn.training or not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor):
        return None
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def conv_bn_channels_last(conv: _ConvNd, bn: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``, channels-last; in eval mode the BN is folded into the conv weights (one pass fewer)."""
    affine = bn_affine(bn)
    if affine is None:
        return bn(conv_channels_last(conv, x))
    scale, shift = affine
    weight = conv.weight * scale.view(-1, *(1,) * (conv.weight.ndim - 1))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return conv_channels_last(conv, x, weight, bias)
