"""Attention kernels on (B, heads, N, dh) tensors: exact fast attention, and the explicit N×N form.

- :func:`scaled_dot_product_attention`: ``F.scaled_dot_product_attention`` with a query-chunked
  CPU flash backward (:class:`_CPUFlashAttention`), O(N) memory.
- :func:`explicit_attention`: ``softmax(q·kᵀ·scale + bias)·v`` with the (B, heads, N, N) matrix
  materialised — the original papers' formulation, used by the reference implementations.

Example:
    >>> q, k, v = (torch.randn(1, 2, 50, 8) for _ in range(3))
    >>> torch.allclose(scaled_dot_product_attention(q, k, v), explicit_attention(q, k, v, 8**-0.5), atol=1e-6)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["QUERY_CHUNK", "explicit_attention", "scaled_dot_product_attention"]

# Queries per chunk in the CPU attention backward (see _CPUFlashAttention).
QUERY_CHUNK = 1024
# The CPU flash-attention ops (private ATen API); without them the PyTorch function is used as is.
_HAS_CPU_FLASH = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")


class _CPUFlashAttention(torch.autograd.Function):
    """Exact attention on CPU: flash-attention forward, query-chunked flash-attention backward.

    PyTorch's CPU flash backward parallelises over batch·heads only and slows down sharply on long
    query sequences (one head of 16k tokens: ~40× its forward time, several times slower than
    the explicit N×N formulation). The backward here runs the same kernel on chunks of
    ``QUERY_CHUNK`` queries presented as extra heads — K and V broadcast with stride 0, so not
    copied — and sums the per-chunk dK, dV: the same maths with chunk·heads-way parallelism, in
    O(N) memory (the log-sum-exp saved by the forward replaces the N×N matrix).
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        b, h, n, _ = q.shape
        chunks = n // QUERY_CHUNK
        if chunks < 2:
            grad_q, grad_k, grad_v = backward(grad_out, q, k, v, out, lse, 0.0, False, scale=ctx.scale)
            return grad_q, grad_k, grad_v, None
        m = chunks * QUERY_CHUNK  # queries in whole chunks; the rest goes through one more call

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, h, N, ...) → (B·h, chunks, QUERY_CHUNK, ...)
            return t[:, :, :m].reshape(b * h, chunks, QUERY_CHUNK, *t.shape[3:])

        def broadcast(t: torch.Tensor) -> torch.Tensor:  # (B, h, N, c) → (B·h, chunks, N, c), stride 0
            return t.reshape(b * h, 1, n, t.shape[-1]).expand(-1, chunks, -1, -1)

        grad_q, grad_k, grad_v = backward(
            split(grad_out), split(q), broadcast(k), broadcast(v), split(out), split(lse), 0.0, False, scale=ctx.scale
        )
        grad_q = grad_q.reshape(b, h, m, -1)
        grad_k = grad_k.sum(1).view(b, h, n, -1)
        grad_v = grad_v.sum(1).view(b, h, n, -1)
        if m < n:
            rest = slice(m, None)
            grad_q_rest, grad_k_rest, grad_v_rest = backward(
                grad_out[:, :, rest], q[:, :, rest], k, v, out[:, :, rest], lse[:, :, rest], 0.0, False, scale=ctx.scale
            )
            grad_q = torch.cat([grad_q, grad_q_rest], 2)
            grad_k += grad_k_rest
            grad_v += grad_v_rest
        return grad_q, grad_k, grad_v, None


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, scale: float | None = None
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` on (B, heads, N, dh) tensors, with a fast exact CPU backward.

    When gradients are needed on CPU (no dropout, eager mode) it runs :class:`_CPUFlashAttention`;
    everywhere else (GPU, inference, dropout, tracing/export) the PyTorch function itself.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if (
        needs_grad
        and _HAS_CPU_FLASH
        and dropout_p == 0.0
        and q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.float64)
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
    ):
        return _CPUFlashAttention.apply(q, k, v, scale)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``softmax(q·kᵀ·scale + bias)·v`` with the (B, heads, N, N) weights materialised; (B, heads, N, dv) out.

    ``scale=None`` multiplies by nothing (for callers that scale q first, as Swin does); ``bias`` is an
    additive logit bias broadcastable to (B, heads, N, N); ``dropout_p`` drops attention weights.
    """
    logits = q @ k.transpose(-2, -1)
    if scale is not None:
        logits = logits * scale
    if bias is not None:
        logits = logits + bias
    weights = logits.softmax(-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v
