"""The convolutional MLP ``fc2(GELU(dwconv3(fc1(x)))) (+ x)`` without gradients, slab by slab.

Example:
    >>> fc1, dw, fc2 = nn.Conv3d(4, 16, 1), nn.Conv3d(16, 16, 3, padding=1, groups=16), nn.Conv3d(16, 4, 1)
    >>> x = torch.randn(1, 4, 80, 32, 32).contiguous(memory_format=torch.channels_last_3d)
    >>> with torch.no_grad():
    ...     mlp_in_slabs(x, fc1.weight.flatten(1), fc1.bias, dw, fc2).shape
    torch.Size([1, 4, 80, 32, 32])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.modules.conv import _ConvNd

from fusionseg.layers import is_channels_last

__all__ = ["SLAB_VOXELS", "mlp_in_slabs"]

# Inference MLPs run in slabs of about this many voxels: the 4×-wide hidden tensor of one slab
# (2^15 · 4·C floats, 24 MiB at C = 48) stays below glibc's mmap threshold, so it is reused
# instead of freshly page-faulted, and the passes over it stay cache-friendlier.
SLAB_VOXELS = 2**15


def mlp_in_slabs(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    dwconv: _ConvNd,
    fc2: _ConvNd,
    residual: bool = False,
) -> torch.Tensor | None:
    """No-grad ``fc2(GELU(dwconv(fc1(x)))) (+ x)`` on channels-last ``x``, slab by slab along the first spatial axis.

    ``fc1`` is given as a (hidden, C) matrix and bias (so a folded BatchNorm can be passed in). Each
    slab recomputes ``fc1`` on one extra plane each side (the 3-tap depthwise conv's halo); at the
    volume's faces the hidden tensor is zero-padded, exactly like the full conv. Same numbers as the
    whole-tensor path, without ever holding the (B, 4·C, *S) hidden tensor. Returns None when the
    slab path does not apply (gradients needed, small input, other conv shapes, not channels-last):
    the caller then runs the whole-tensor path.
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
    assert out is not None  # depth > 2·slab: the loop ran
    return out.movedim(-1, 1)
