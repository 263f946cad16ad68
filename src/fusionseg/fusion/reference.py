"""Plain, literal formulations of the fusion modules, step by step as in their papers.

They share the weights of a :class:`~fusionseg.fusion.DFF` / :class:`~fusionseg.fusion.TIF`
instance and follow the numbered steps of those classes' docstrings — explicit concat and gated
copy for DFF, NC* 1×1 convolutions, an explicit N×N softmax attention matrix for TIF
(:func:`fusionseg.kernels.attention.explicit_attention`) — so tests can check the fast modules
against them and ``fusionseg bench modules`` can measure the fast paths against them.

Example:
    >>> dff = DFF(8, spatial_dims=2)
    >>> x, skip = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)
    >>> torch.allclose(dff(x, skip), dff_reference(dff, x, skip), atol=1e-6)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fusionseg.fusion.dff import DFF
from fusionseg.fusion.tif import TIF, Attention, Transformer
from fusionseg.kernels.attention import explicit_attention

__all__ = ["attention_reference", "dff_reference", "tif_paired_reference", "tif_reference", "transformer_reference"]


def dff_reference(module: DFF, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """DFF steps 1–5 with the module's convolutions: (B, d, *S), (B, d, *S) → (B, d, *S)."""
    u = torch.cat([x, skip], 1)  # step 1
    a = module.conv_atten(u.mean(dim=tuple(range(2, u.ndim)), keepdim=True))  # step 2 (conv + sigmoid)
    v = module.conv_redu(u * a)  # step 3
    s = torch.sigmoid(module.conv1(x) + module.conv2(skip))  # step 4
    return v * s  # step 5


def attention_reference(module: Attention, t: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention with an explicit (B, heads, N, N) softmax matrix (no dropout)."""
    b, n, _ = t.shape
    h, dh = module.heads, module.dim_head
    q, k, v = (z.reshape(b, n, h, dh).transpose(1, 2) for z in module.to_qkv(t).chunk(3, dim=-1))
    out = explicit_attention(q, k, v, module.scale).transpose(1, 2).reshape(b, n, h * dh)
    return module.to_out(out)


def transformer_reference(module: Transformer, t: torch.Tensor) -> torch.Tensor:
    """Pre-norm layers ``t = t + Attn(LN(t)); t = t + FFN(LN(t))`` on (B, N, dim) tokens."""
    for attn, ff in module.layers:
        t = t + attention_reference(attn.fn, attn.norm(t))
        t = t + ff.fn(ff.norm(t))
    return t


def tif_paired_reference(module: TIF, e: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TIF steps 1–4: (e (B, dim_l, *S_e), r (B, dim_s, *S_r)) → (e', r') in NC* layout."""
    te = e.reshape(e.shape[0], e.shape[1], -1).permute(0, 2, 1)  # step 1: (B, N_e, dim_l)
    tr = r.reshape(r.shape[0], r.shape[1], -1).permute(0, 2, 1)
    g_e = module.linear_l(module.norm_l(te).mean(1)).unsqueeze(1)  # step 2: (B, 1, dim_s)
    g_r = module.linear_s(module.norm_s(tr).mean(1)).unsqueeze(1)  # (B, 1, dim_l)
    r_out = transformer_reference(module.transformer_s, torch.cat([g_e, tr], 1))[:, 1:]  # step 3
    e_out = transformer_reference(module.transformer_l, torch.cat([g_r, te], 1))[:, 1:]
    e_out = e_out.permute(0, 2, 1).reshape(e.shape)  # step 4
    r_out = r_out.permute(0, 2, 1).reshape(r.shape)
    return e_out, r_out


def tif_reference(module: TIF, e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Fused TIF: ``e' + nearest_resize(linear_s(r'))`` at e's shape (``linear_s`` only when widths differ)."""
    e_out, r_out = tif_paired_reference(module, e, r)
    if module.dim_s != module.dim_l:
        r_out = F.linear(r_out.movedim(1, -1), module.linear_s.weight, module.linear_s.bias).movedim(-1, 1)
    if r_out.shape[2:] != e_out.shape[2:]:
        r_out = F.interpolate(r_out, size=e_out.shape[2:], mode="nearest")
    return e_out + r_out
