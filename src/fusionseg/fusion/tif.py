"""TIF — Transformer Interactive Fusion (DS-TransUNet, Lin et al., arXiv 2106.06716).

Two branches exchange one global token each, then each runs one pre-norm transformer layer
with global self-attention over all of its tokens (:func:`fusionseg.kernels.attention.scaled_dot_product_attention`,
O(N) memory; with ``reference_ops`` the explicit N×N matrix of the original and ``F.interpolate``).

Example:
    >>> tif = TIF(dim_s=96, dim_l=128, spatial_dims=2)
    >>> e, r = torch.randn(1, 128, 16, 16), torch.randn(1, 96, 8, 8)
    >>> [t.shape for t in tif.forward_paired(e, r)]
    [torch.Size([1, 128, 16, 16]), torch.Size([1, 96, 8, 8])]
    >>> tif(e, r).shape  # fused form: r' mapped to 128 ch by linear_s, resized to e's grid, added
    torch.Size([1, 128, 16, 16])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from fusionseg.kernels.attention import explicit_attention, scaled_dot_product_attention
from fusionseg.kernels.switch import reference_ops_default
from fusionseg.layers import check_positive_int, check_spatial_dims

__all__ = [
    "TIF",
    "Attention",
    "FeedForward",
    "PreNorm",
    "Transformer",
    "add_resized",
    "from_tokens",
    "to_tokens",
]


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) → (B, N, C); a view when ``x`` is channels-last."""
    return x.flatten(2).transpose(1, 2)


def from_tokens(t: torch.Tensor, spatial: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """(B, N, C) → (B, C, *S) channels-last view (no copy)."""
    return t.transpose(1, 2).unflatten(2, tuple(spatial))


class PreNorm(nn.Module):
    """``fn(LayerNorm(x))`` — official names ``norm`` and ``fn``."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class Attention(nn.Module):
    """Multi-head global self-attention on (B, N, dim) tokens; q, k, v from one bias-free Linear.

    ``softmax(q·kᵀ·dim_head^-½)·v`` per head, then ``to_out`` (identity when heads == 1 and
    dim_head == dim). Two implementations, same numbers: fast (default) — exact attention in O(N)
    memory with a chunked CPU backward; ``reference_ops = True`` — the original's explicit (N × N) matrix.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        if heads < 1 or dim_head < 1:
            raise ValueError(f"Attention needs heads >= 1 and dim_head >= 1, got heads={heads}, dim_head={dim_head}")
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head**-0.5
        self.dropout = dropout
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        project = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout)) if project else nn.Identity()
        self.reference_ops = reference_ops_default()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        # (B, N, 3·h·dh) → three (B, h, N, dh) strided views; SDPA reads them without copies.
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4).unbind(0)
        p = self.dropout if self.training else 0.0
        if not self.reference_ops:
            out = scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
        else:  # softmax(q·kᵀ·scale)·v with the (B, heads, N, N) matrix
            out = explicit_attention(q, k, v, self.scale, dropout_p=p)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class FeedForward(nn.Module):
    """``Linear → GELU → Dropout → Linear → Dropout`` (official indices ``net.0`` / ``net.3``)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """``depth`` pre-norm layers ``t = t + Attn(LN(t)); t = t + FFN(LN(t))``."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PreNorm(dim, Attention(dim, heads, dim_head, dropout)),
                    PreNorm(dim, FeedForward(dim, mlp_dim, dropout)),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in cast("Iterable[nn.ModuleList]", self.layers):  # its items are typed nn.Module
            x = x + attn(x)
            x = x + ff(x)
        return x


class TIF(nn.Module):
    """Transformer Interactive Fusion of a fine branch ``e`` (dim_l) and a coarse branch ``r`` (dim_s).

    1. tokens: ``e → (B, N_e, dim_l)``, ``r → (B, N_r, dim_s)``;
    2. global tokens ``g_e = linear_l(mean_tokens(norm_l(e)))`` (B, 1, dim_s) and
       ``g_r = linear_s(mean_tokens(norm_s(r)))`` (B, 1, dim_l);
    3. ``r' = T_s([g_e; r])[:, 1:]``, ``e' = T_l([g_r; e])[:, 1:]`` with T one pre-norm transformer
       layer ``t = t + Attn(LN(t)); t = t + FFN(LN(t))`` (global self-attention over all tokens);
    4. tokens back to (B, C, *S).

    ``forward_paired(e, r)`` returns ``(e', r')`` at their own shapes (the DS-TransUNet form);
    e and r may have any grids (same batch size). ``forward(e, r)`` is the plug-and-play fused
    form ``e' + nearest_resize(proj(r'))`` at e's shape (B, dim_l, *S_e):

    - widths: when ``dim_s != dim_l``, r' is mapped to dim_l channels per voxel by ``linear_s``
      (the dim_s → dim_l map that already carries r's global token into the e branch), so the
      fused form adds no parameters and official state_dicts still load strictly;
      when ``dim_s == dim_l`` nothing is projected (the blog's ``e' + r'``);
    - grids: r' is resized to e's grid by nearest interpolation (``F.interpolate`` rule). When
      every e size is an integer multiple of the r size (e.g. ×2, as in DS-TransUNet) this is
      a broadcast add over the repeated cells, with no upsampled copy.

    Outputs are channels-last tensors (views of the token sequences). 2D and 3D: TIF has no
    convolutions, so it takes its dimensionality from its inputs (the seed's ``TIF(dim_s, dim_l)`` call).

    Two implementations, same numbers, chosen by ``reference_ops`` (set on TIF and its attention
    modules at once with :func:`fusionseg.kernels.set_reference_ops`): fast (default) — exact attention
    in O(N) memory and the integer-factor resize as a broadcast add; ``reference_ops = True`` — the
    explicit (N × N) attention matrix and ``F.interpolate``, the steps above literally (what the
    tests compare the fast path against).

    Networks fuse TIF at their deepest skip only unless told otherwise (:attr:`default_skip_levels`).

    Args:
        dim_s: channels of the coarse branch ``r``.
        dim_l: channels of the fine branch ``e``.
        spatial_dims: None (default: 2D or 3D, from the inputs), or 2 / 3 to accept only that.
        heads_s, dim_head_s, mlp_s: transformer of the r branch (official 3, 32, 128).
        heads_l, dim_head_l, mlp_l: transformer of the e branch (official 1, 64, 256).
        depth: transformer layers per branch (official 1).
        dropout: attention/FFN dropout (official 0).

    Example:
        >>> TIF(64, 64)(torch.randn(2, 64, 8, 8), torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    #: Skip levels a network fuses when none are given (``fusion.registry.default_fusion_levels``): global
    #: attention is O(N²) in the voxels of a skip, so only the deepest skip (the fewest voxels) by default.
    default_skip_levels = "deepest"

    def __init__(
        self,
        dim_s: int,
        dim_l: int,
        spatial_dims: int | None = None,
        heads_s: int = 3,
        dim_head_s: int = 32,
        mlp_s: int = 128,
        heads_l: int = 1,
        dim_head_l: int = 64,
        mlp_l: int = 256,
        depth: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        sizes = dict(
            dim_s=dim_s,
            dim_l=dim_l,
            heads_s=heads_s,
            dim_head_s=dim_head_s,
            mlp_s=mlp_s,
            heads_l=heads_l,
            dim_head_l=dim_head_l,
            mlp_l=mlp_l,
            depth=depth,
        )
        for name, value in sizes.items():
            check_positive_int(f"TIF {name}", value)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"TIF dropout must be in [0, 1), got {dropout}")
        self.dim_s, self.dim_l = dim_s, dim_l
        self.spatial_dims = None if spatial_dims is None else check_spatial_dims(spatial_dims)
        self.transformer_s = Transformer(dim_s, depth, heads_s, dim_head_s, mlp_s, dropout)
        self.transformer_l = Transformer(dim_l, depth, heads_l, dim_head_l, mlp_l, dropout)
        self.norm_s = nn.LayerNorm(dim_s)
        self.norm_l = nn.LayerNorm(dim_l)
        self.linear_s = nn.Linear(dim_s, dim_l)
        self.linear_l = nn.Linear(dim_l, dim_s)
        self.reference_ops = reference_ops_default()

    @classmethod
    def for_skip(cls, dim: int, spatial_dims: int | None = None, **kwargs) -> TIF:
        """A TIF fusing an upsampled tensor and a skip of the same width ``dim`` (the registry's ``"tif"``)."""
        return cls(dim, dim, spatial_dims=spatial_dims, **kwargs)

    def _check(self, e: torch.Tensor, r: torch.Tensor) -> None:
        ndims = (4, 5) if self.spatial_dims is None else (self.spatial_dims + 2,)
        if e.ndim not in ndims or r.ndim != e.ndim or e.shape[1] != self.dim_l or r.shape[1] != self.dim_s:
            raise ValueError(
                f"TIF({self.extra_repr()}) expects e (B, {self.dim_l}, *S_e) and r (B, {self.dim_s}, *S_r), "
                f"both with {' or '.join(map(str, ndims))} dims; got e {tuple(e.shape)} and r {tuple(r.shape)}"
            )
        if e.shape[0] != r.shape[0]:
            raise ValueError(
                f"TIF needs the same batch size for e and r; got e {tuple(e.shape)} and r {tuple(r.shape)}"
            )

    def forward_paired(self, e: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(e (B, dim_l, *S_e), r (B, dim_s, *S_r)) → (e', r') with the same shapes (channels-last)."""
        self._check(e, r)
        # DS-TransUNet's TIF, steps 1–4 of the class docstring
        te, tr = to_tokens(e), to_tokens(r)  # 1. (B, N_e, dim_l), (B, N_r, dim_s)
        g_e = self.linear_l(self.norm_l(te).mean(1, keepdim=True))  # 2. (B, 1, dim_s)
        g_r = self.linear_s(self.norm_s(tr).mean(1, keepdim=True))  #    (B, 1, dim_l)
        r_out = self.transformer_s(torch.cat([g_e, tr], 1))[:, 1:]  # 3.
        e_out = self.transformer_l(torch.cat([g_r, te], 1))[:, 1:]
        return from_tokens(e_out, e.shape[2:]), from_tokens(r_out, r.shape[2:])  # 4.

    def forward(self, e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Fused form: ``e' + nearest_resize(proj(r'))`` → (B, dim_l, *S_e), channels-last."""
        e_out, r_out = self.forward_paired(e, r)
        if self.dim_s != self.dim_l:  # per voxel, before resizing: nearest resize commutes with it
            r_out = self.linear_s(r_out.movedim(1, -1)).movedim(-1, 1)
        if not self.reference_ops:
            return add_resized(e_out, r_out)  # integer factors: a broadcast add, no upsampled copy
        return e_out + F.interpolate(r_out, size=e_out.shape[2:], mode="nearest")

    def extra_repr(self) -> str:
        return f"dim_s={self.dim_s}, dim_l={self.dim_l}, spatial_dims={self.spatial_dims}"


def add_resized(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + F.interpolate(y, size=x.shape[2:], mode="nearest")`` for (B, C, *S) tensors.

    Integer upsampling factors (e.g. ×2) are done as a broadcast add over the repeated cells, with
    no upsampled copy of ``y`` (nearest upsampling by an integer factor f repeats each cell f times).
    """
    size_x, size_y = tuple(x.shape[2:]), tuple(y.shape[2:])
    if size_x == size_y:
        return x + y
    if not all(sx % sy == 0 for sx, sy in zip(size_x, size_y)):
        return x + F.interpolate(y, size=size_x, mode="nearest")
    b, c = x.shape[:2]
    split, index = [b, c], [b, c]
    for sx, sy in zip(size_x, size_y):
        split += [sy, sx // sy]
        index += [sy, 1]
    return (x.reshape(split) + y.reshape(index)).reshape(x.shape)
