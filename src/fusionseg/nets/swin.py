"""Swin Transformer v1 (Liu et al., ICCV 2021) as a segmentation encoder, 2D and 3D windows.

The layout follows the segmentation form of Swin used by DS-TransUNet (its official code): feature
maps are padded (right/bottom) to a multiple of the window inside every block, shifted blocks mask
cross-region pairs with -100, a LayerNorm ``norm{i}`` is applied to each stage output and all stages
are returned. Parameter names match the official Swin checkpoints (``patch_embed.proj``,
``layers.i.blocks.j.attn.qkv``, ...). 3D by default (3D windows, patches and merging); 2D for images.

Inside a stage the tokens stay on their grid, channels-last: (B, *S, C). Window attention runs
through ``scaled_dot_product_attention`` with the relative position bias (and the shifted-window
mask) passed as ``attn_mask``; with ``reference_ops`` (:func:`fusionseg.kernels.set_reference_ops`)
it is the plain ``softmax(q·scale·kᵀ + bias + mask)·v`` formulation of the original (same weights).

Example:
    >>> enc = SwinEncoder(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), patch_size=4, spatial_dims=2)
    >>> [f.shape[1:] for f in enc(torch.randn(1, 3, 64, 64))]
    [torch.Size([24, 16, 16]), torch.Size([48, 8, 8]), torch.Size([96, 4, 4]), torch.Size([192, 2, 2])]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fusionseg.kernels.attention import explicit_attention
from fusionseg.kernels.switch import reference_ops_default
from fusionseg.layers import DropPath, check_spatial_dims, conv_type

__all__ = [
    "Mlp",
    "PatchEmbed",
    "PatchMerging",
    "SwinBlock",
    "SwinEncoder",
    "SwinLayer",
    "WindowAttention",
    "relative_position_index",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]

_MASK_VALUE = -100.0  # the original's value for pairs of tokens from different shifted regions


def _tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    out = (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != n or min(out) < 0:
        raise ValueError(f"{name} must be a non-negative int or a sequence of {n} ints, got {value!r}")
    return out


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, *S, C) with S divisible by ``window`` → (B·nW, prod(window), C), windows in raster order."""
    b, *spatial, c = x.shape
    nd = len(spatial)
    shape = [b]
    for s, w in zip(spatial, window):
        shape += [s // w, w]
    x = x.view([*shape, c])
    perm = [0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1]
    return x.permute(perm).reshape(-1, math.prod(window), c)


def window_reverse(windows: torch.Tensor, window: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B·nW, prod(window), C) → (B, *S, C)."""
    nd = len(spatial)
    counts = [s // w for s, w in zip(spatial, window)]
    c = windows.shape[-1]
    x = windows.view([-1, *counts, *window, c])
    perm = [0]
    for i in range(nd):
        perm += [1 + i, 1 + nd + i]
    return x.permute([*perm, 2 * nd + 1]).reshape([-1, *spatial, c])


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """(N, N) index into a ``prod(2w-1)`` bias table for every pair of tokens of one window."""
    cpu = torch.device("cpu")  # also under a meta-device context (shape-only model construction)
    coords = torch.stack(torch.meshgrid([torch.arange(w, device=cpu) for w in window], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, nd)
    rel = rel + torch.tensor([w - 1 for w in window], device=cpu)
    index = torch.zeros(rel.shape[:2], dtype=torch.long, device=cpu)
    for i in range(len(window)):
        stride = math.prod(2 * w - 1 for w in window[i + 1 :])
        index += rel[..., i] * stride
    return index


def shifted_window_mask(
    spatial: Sequence[int], window: Sequence[int], shift: Sequence[int], device: torch.device | None = None
) -> torch.Tensor:
    """(nW, N, N) additive mask (0 / -100) for shifted windows on a padded grid ``spatial``."""
    img = torch.zeros((1, *spatial, 1), device=device)
    slices = [
        (slice(0, -w), slice(-w, -s), slice(-s, None)) if s > 0 else (slice(None),) for w, s in zip(window, shift)
    ]
    for cnt, region in enumerate(itertools.product(*slices)):
        index = (slice(None), *region, slice(None))
        img[index] = cnt
    ids = window_partition(img, window).squeeze(-1)  # (nW, N)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.zeros_like(diff).masked_fill_(diff != 0, _MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias.

    Official names: ``relative_position_bias_table`` ((∏(2w-1)), heads), buffer
    ``relative_position_index`` (N, N), ``qkv`` (with bias), ``proj``. Two implementations, same
    numbers: SDPA with the bias as ``attn_mask`` (default), or with ``reference_ops = True`` the
    original's explicit (N × N) logits per window and head.

    Example:
        >>> WindowAttention(32, (7, 7), num_heads=2)(torch.randn(4, 49, 32)).shape
        torch.Size([4, 49, 32])
    """

    relative_position_index: torch.Tensor  # a buffer (registered in __init__)

    def __init__(
        self,
        dim: int,
        window_size: Sequence[int],
        num_heads: int,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"WindowAttention dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        self.dim, self.num_heads = dim, num_heads
        self.window_size = tuple(window_size)
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        table_size = math.prod(2 * w - 1 for w in self.window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_size, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Persistent so that official state_dicts (which carry it) load with strict=True.
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.reference_ops = reference_ops_default()

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, N, N) bias added to the attention logits."""
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B·nW, N, C), mask (nW, N, N) additive or None → (B·nW, N, C)."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias().to(q.dtype).unsqueeze(0)  # (1, h, N, N): 4D lets CPU SDPA use flash
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias + mask.to(q.dtype).unsqueeze(1)).unsqueeze(0)  # (1, nW, h, N, N)
            bias = bias.expand(bw // nw, -1, -1, -1, -1).reshape(bw, self.num_heads, n, n)
        if self.reference_ops:  # the original: q scaled first, explicit (N × N) logits per window and head
            out = explicit_attention(q * self.scale, k, v, bias=bias)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class Mlp(nn.Module):
    """``fc1 → GELU → fc2`` on channels-last tokens."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """(S)W-MSA block on a channels-last grid (B, *S, C): pad → shift → window attention → MLP.

    Example:
        >>> SwinBlock(32, num_heads=2, window_size=(7, 7), shift_size=(3, 3))(torch.randn(1, 10, 9, 32)).shape
        torch.Size([1, 10, 9, 32])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Sequence[int],
        shift_size: Sequence[int] | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = (0,) * len(self.window_size) if shift_size is None else tuple(shift_size)
        if len(self.shift_size) != len(self.window_size) or any(
            not 0 <= s < w for s, w in zip(self.shift_size, self.window_size)
        ):
            raise ValueError(f"shift_size {shift_size} must satisfy 0 <= shift < window {window_size} per dim")
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    @property
    def shifted(self) -> bool:
        return any(self.shift_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, *S, C); ``mask`` = :func:`shifted_window_mask` of the padded grid (shifted blocks)."""
        spatial = x.shape[1:-1]
        dims = tuple(range(1, len(spatial) + 1))
        y = self.norm1(x)
        pads = [(-s) % w for s, w in zip(spatial, self.window_size)]
        if any(pads):  # zero tokens on the right/bottom, as in the original (they are attended to)
            flat = [0, 0]
            for p in reversed(pads):
                flat += [0, p]
            y = F.pad(y, flat)
        padded = y.shape[1:-1]
        if self.shifted:
            y = torch.roll(y, [-s for s in self.shift_size], dims)
        y = self.attn(window_partition(y, self.window_size), mask if self.shifted else None)
        y = window_reverse(y, self.window_size, padded)
        if self.shifted:
            y = torch.roll(y, list(self.shift_size), dims)
        if any(pads):
            crop = (slice(None), *(slice(0, s) for s in spatial))
            y = y[crop]
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2^d neighbours → one token: (B, *S, C) → (B, *S/2, 2C); official names ``norm``, ``reduction``.

    Neighbour order follows the original (2D: (0,0), (1,0), (0,1), (1,1) in (h, w)); the first
    spatial offset varies fastest. Odd sizes are zero-padded.
    """

    def __init__(self, dim: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        k = 2**spatial_dims
        self.norm = nn.LayerNorm(k * dim)
        self.reduction = nn.Linear(k * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, *spatial, c = x.shape
        nd = len(spatial)
        if any(s % 2 for s in spatial):
            flat = [0, 0]
            for s in reversed(spatial):
                flat += [0, s % 2]
            x = F.pad(x, flat)
            spatial = [s + s % 2 for s in spatial]
        shape = [b]
        for s in spatial:
            shape += [s // 2, 2]
        x = x.view([*shape, c])
        # (B, S1/2, S2/2, .., 2_last, .., 2_first, C): offsets of the first dim vary fastest.
        perm = [0, *range(1, 2 * nd, 2), *range(2 * nd, 1, -2), 2 * nd + 1]
        x = x.permute(perm).reshape([b, *(s // 2 for s in spatial), (2**nd) * c])
        return self.reduction(self.norm(x))


class SwinLayer(nn.Module):
    """``depth`` Swin blocks alternating W-MSA / SW-MSA, then an optional :class:`PatchMerging`.

    ``forward(x)`` with x (B, *S, C) returns ``(out, down)``: the stage output (B, *S, C) and the
    merged input of the next stage (or None).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: Sequence[int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: Sequence[float] | float = 0.0,
        downsample: bool = False,
        spatial_dims: int = 3,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"SwinLayer depth must be >= 1, got {depth}")
        window = tuple(window_size)
        shift = tuple(w // 2 for w in window)
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else list(drop_path)
        if len(rates) != depth:
            raise ValueError(f"drop_path needs {depth} rates, got {len(rates)}")
        self.window_size, self.shift_size = window, shift
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window,
                shift if i % 2 else (0,) * len(window),
                mlp_ratio,
                qkv_bias,
                rates[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim, spatial_dims) if downsample else None
        self._mask_cache: dict[tuple, torch.Tensor] = {}

    def _mask(self, spatial: Sequence[int], device: torch.device) -> torch.Tensor:
        padded = tuple(math.ceil(s / w) * w for s, w in zip(spatial, self.window_size))
        key = (padded, str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = shifted_window_mask(padded, self.window_size, self.shift_size, device)
        return self._mask_cache[key]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = self._mask(x.shape[1:-1], x.device) if len(self.blocks) > 1 else None
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else None)


class PatchEmbed(nn.Module):
    """Non-overlapping patches: conv (kernel = stride = patch) then LayerNorm → (B, *S/patch, C).

    Official names ``proj`` and ``norm``. Sizes that are not a multiple of the patch are
    zero-padded on the right/bottom, as in the original.
    """

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int, spatial_dims: int = 3, norm: bool = True):
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.patch_size = patch_size
        self.proj = conv_type(spatial_dims)(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = [(-s) % self.patch_size for s in x.shape[2:]]
        if any(pads):
            flat: list[int] = []
            for p in reversed(pads):
                flat += [0, p]
            x = F.pad(x, flat)
        x = self.proj(x).movedim(1, -1)  # (B, *S, C)
        return self.norm(x) if self.norm is not None else x


class SwinEncoder(nn.Module):
    """Swin v1 backbone returning the four normed stage outputs (B, C·2^i, *S/(patch·2^i)).

    Official names: ``patch_embed``, ``layers.i``, ``norm0..norm3``. No absolute position embedding.

    Args:
        in_channels: image channels.
        embed_dim: channels of stage 1 (doubled per stage).
        depths, num_heads: blocks and heads per stage.
        patch_size: 4 (main DS-TransUNet branch) or 8 (second branch).
        window_size: int or per-dim tuple (7 in the original).
        mlp_ratio, qkv_bias: block options (4, True).
        drop_path_rate: stochastic depth, linear 0 → rate over all blocks.
        spatial_dims: 3 (default: 3D windows, 3D patch embedding, 8-neighbour merging) or 2.
        use_checkpoint: activation checkpointing per block (saves memory in training).
    """

    def __init__(
        self,
        in_channels: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        patch_size: int = 4,
        window_size: int | Sequence[int] = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        spatial_dims: int = 3,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        depths, num_heads = tuple(depths), tuple(num_heads)
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"depths {depths} and num_heads {num_heads} must be non-empty and of equal length")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        window = _tuple(window_size, spatial_dims, "window_size")
        if min(window) < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        self.patch_size = patch_size
        self.num_features = [embed_dim * 2**i for i in range(len(depths))]
        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim, spatial_dims)
        rates = linear_rates(drop_path_rate, sum(depths))
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(
                SwinLayer(
                    self.num_features[i],
                    depth,
                    heads,
                    window,
                    mlp_ratio,
                    qkv_bias,
                    rates[start : start + depth],
                    downsample=i < len(depths) - 1,
                    spatial_dims=spatial_dims,
                    use_checkpoint=use_checkpoint,
                )
            )
        for i, c in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(c))
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B, C_in, *S) → list of (B, C_i, *S_i) maps (channels-last views)."""
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            out, x = layer(x)
            outs.append(getattr(self, f"norm{i}")(out).movedim(-1, 1))
        return outs


def linear_rates(rate: float, n: int) -> list[float]:
    """``n`` stochastic-depth rates rising linearly from 0 to ``rate`` (``torch.linspace`` values)."""
    return [rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


def _init_weights(m: nn.Module) -> None:
    """The original's init: truncated normal (std 0.02) Linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
