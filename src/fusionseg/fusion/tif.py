"""TIF — Transformer Interactive Fusion (DS-TransUNet, arXiv 2106.06716; spec: ``specs/fusion.md``, TIF).

Two branches exchange one global token each, then each runs one pre-norm transformer layer
with global self-attention over all of its tokens (``scaled_dot_product_attention``, O(N)
memory instead of an explicit N×N matrix).

Example:
    >>> tif = TIF(dim_s=96, dim_l=128, spatial_dims=2)
    >>> e, r = torch.randn(1, 128, 16, 16), torch.randn(1, 96, 8, 8)
    >>> [t.shape for t in tif.forward_paired(e, r)]
    [torch.Size([1, 128, 16, 16]), torch.Size([1, 96, 8, 8])]
    >>> tif(e, r).shape  # fused form: r' projected to 128 ch, resampled to e's grid, added
    torch.Size([1, 128, 16, 16])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusionseg.layers import check_spatial_dims, conv_type

__all__ = ["TIF", "Attention", "FeedForward", "PreNorm", "Transformer", "from_tokens", "to_tokens"]


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
    """Multi-head global self-attention on (B, N, dim) tokens; q, k, v from one bias-free Linear."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        # (B, N, 3·h·dh) → three (B, h, N, dh) strided views; SDPA reads them without copies.
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4).unbind(0)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
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
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return x


class TIF(nn.Module):
    """Transformer Interactive Fusion of a fine branch ``e`` (dim_l) and a coarse branch ``r`` (dim_s).

    ``forward_paired(e, r)`` returns ``(e', r')`` at their own shapes (the DS-TransUNet form).
    ``forward(e, r)`` returns the fused ``e' + resample(proj(r'))`` at e's shape: when widths
    differ, r' is first projected dim_s → dim_l by a 1×1 conv (``proj_r``, only created when
    ``dim_s != dim_l``); when grids differ it is then resized to e's grid with nearest
    interpolation (exact ×2 nearest upsampling, as in the paired network). 2D and 3D.

    Args:
        dim_s: channels of the coarse branch ``r``.
        dim_l: channels of the fine branch ``e``.
        spatial_dims: 2 or 3.
        heads_s, dim_head_s, mlp_s: transformer of the r branch (official 3, 32, 128).
        heads_l, dim_head_l, mlp_l: transformer of the e branch (official 1, 64, 256).
        depth: transformer layers per branch (official 1).
        dropout: attention/FFN dropout (official 0).

    Example:
        >>> TIF(64, 64)(torch.randn(2, 64, 8, 8), torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(
        self,
        dim_s: int,
        dim_l: int,
        spatial_dims: int = 2,
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
        for name, value in dict(dim_s=dim_s, dim_l=dim_l, mlp_s=mlp_s, mlp_l=mlp_l, depth=depth).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TIF {name} must be a positive int, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"TIF dropout must be in [0, 1), got {dropout}")
        self.dim_s, self.dim_l = dim_s, dim_l
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.transformer_s = Transformer(dim_s, depth, heads_s, dim_head_s, mlp_s, dropout)
        self.transformer_l = Transformer(dim_l, depth, heads_l, dim_head_l, mlp_l, dropout)
        self.norm_s = nn.LayerNorm(dim_s)
        self.norm_l = nn.LayerNorm(dim_l)
        self.linear_s = nn.Linear(dim_s, dim_l)
        self.linear_l = nn.Linear(dim_l, dim_s)
        self.proj_r = conv_type(spatial_dims)(dim_s, dim_l, kernel_size=1) if dim_s != dim_l else None

    def _check(self, e: torch.Tensor, r: torch.Tensor) -> None:
        ndim = self.spatial_dims + 2
        if e.ndim != ndim or r.ndim != ndim or e.shape[1] != self.dim_l or r.shape[1] != self.dim_s:
            raise ValueError(
                f"TIF(dim_s={self.dim_s}, dim_l={self.dim_l}, spatial_dims={self.spatial_dims}) expects "
                f"e (B, {self.dim_l}, *S_e) and r (B, {self.dim_s}, *S_r) with {ndim} dims; "
                f"got e {tuple(e.shape)} and r {tuple(r.shape)}"
            )
        if e.shape[0] != r.shape[0]:
            raise ValueError(
                f"TIF needs the same batch size for e and r; got e {tuple(e.shape)} and r {tuple(r.shape)}"
            )

    def forward_paired(self, e: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(e (B, dim_l, *S_e), r (B, dim_s, *S_r)) → (e', r') with the same shapes (channels-last)."""
        self._check(e, r)
        te, tr = to_tokens(e), to_tokens(r)
        g_e = self.linear_l(self.norm_l(te).mean(1, keepdim=True))  # (B, 1, dim_s)
        g_r = self.linear_s(self.norm_s(tr).mean(1, keepdim=True))  # (B, 1, dim_l)
        r_out = self.transformer_s(torch.cat([g_e, tr], 1))[:, 1:]
        e_out = self.transformer_l(torch.cat([g_r, te], 1))[:, 1:]
        return from_tokens(e_out, e.shape[2:]), from_tokens(r_out, r.shape[2:])

    def forward(self, e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Fused form: ``e' + resize(proj_r(r'))`` at e's shape (B, dim_l, *S_e)."""
        e_out, r_out = self.forward_paired(e, r)
        if self.proj_r is not None:
            r_out = self.proj_r(r_out)
        if r_out.shape[2:] != e_out.shape[2:]:
            r_out = F.interpolate(r_out, size=e_out.shape[2:], mode="nearest")
        return e_out + r_out

    def extra_repr(self) -> str:
        return f"dim_s={self.dim_s}, dim_l={self.dim_l}, spatial_dims={self.spatial_dims}"
