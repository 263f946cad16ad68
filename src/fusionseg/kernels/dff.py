"""Fused Dynamic Feature Fusion: ``W_r·(concat(x, skip) ⊙ a) ⊙ σ(w_1·x + w_2·skip + b)`` without the concat.

With ``u = concat(x, skip)`` (B, 2d, *S), the channel gate ``a = σ(W_a·mean_S(u))`` is per
(sample, channel), so ``W_r·(u ⊙ a)`` is the per-sample matrix ``W_r·diag(a)`` applied to u; split into
its x and skip halves it never needs the concat or the gated copy, and the spatial-gate logit
``w_1·x + w_2·skip`` is one more output row of the same batched matmul. The work is done in the
inputs' own layout (NC* or channels-last, no layout copies). When gradients are needed a custom
autograd Function (:class:`_DFFFunction`) recomputes that matmul in the backward instead of keeping
its (B, d+1, *S) result.

Example:
    >>> d = 4
    >>> x, skip = torch.randn(2, d, 5, 5), torch.randn(2, d, 5, 5)
    >>> w_atten, w_redu = torch.randn(2 * d, 2 * d), torch.randn(d, 2 * d)
    >>> w1, b1, w2, b2 = torch.randn(1, d), torch.zeros(1), torch.randn(1, d), torch.zeros(1)
    >>> dff(x, skip, w_atten, w_redu, w1, b1, w2, b2).shape
    torch.Size([2, 4, 5, 5])
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from fusionseg.layers import is_channels_last

__all__ = ["dff"]


class _Features:
    """(B, C, *S) tensors as 3-D matrices in their own layout, and the few products DFF needs.

    NC* input is viewed as (B, C, N) and weights act from the left; channels-last input as
    (B, N, C) with weights acting from the right — no layout copies either way.
    """

    def __init__(self, channels_last: bool) -> None:
        self.channels_last = channels_last
        self.channel_dim = 2 if channels_last else 1
        self.token_dim = 1 if channels_last else 2

    def view(self, t: torch.Tensor) -> torch.Tensor:
        b, c = t.shape[:2]
        return t.movedim(1, -1).reshape(b, -1, c) if self.channels_last else t.reshape(b, c, -1)

    def unview(self, t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return t.view(shape[0], *shape[2:], shape[1]).movedim(-1, 1) if self.channels_last else t.view(shape)

    def channels(self, t: torch.Tensor, index: slice | int) -> torch.Tensor:
        return t[..., index] if self.channels_last else t[:, index]

    def apply(self, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weights w (B, O, C) applied to features t → features with O channels."""
        return torch.bmm(t, w.transpose(1, 2)) if self.channels_last else torch.bmm(w, t)

    def apply_add_(self, out: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return out.baddbmm_(t, w.transpose(1, 2)) if self.channels_last else out.baddbmm_(w, t)

    def apply_transposed(self, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``w^T`` (B, C, O) applied to features t with O channels."""
        return torch.bmm(t, w) if self.channels_last else torch.bmm(w.transpose(1, 2), t)

    def outer(self, g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sum over positions of g ⊗ t → (B, O, C): the gradient of per-sample weights."""
        return torch.bmm(g.transpose(1, 2), t) if self.channels_last else torch.bmm(g, t.transpose(1, 2))


def _dff_weights(gate, w_redu, w1, w2, d):
    """Per-sample weights (B, d+1, d) for x and skip: rows ``W_r·diag(a)`` then the spatial-gate row."""
    b = gate.shape[0]
    w_x = torch.cat([w_redu[:, :d].expand(b, d, d) * gate[:, None, :d], w1.expand(b, 1, d)], 1)
    w_s = torch.cat([w_redu[:, d:].expand(b, d, d) * gate[:, None, d:], w2.expand(b, 1, d)], 1)
    return w_x, w_s


def _dff_pre_activation(f, xs, ss, w_x, w_s):
    """``[W_r·(u⊙a); w_1·x + w_2·skip]`` as one (d+1)-channel feature matrix."""
    y = f.apply(w_s, ss)
    return f.apply_add_(y, w_x, xs)


class _DFFFunction(torch.autograd.Function):
    """DFF forward with a hand-written backward that keeps only (B, 2d) gates and the (B, N) spatial gate.

    Autograd would keep the (B, d+1, N) pre-activation for the backward; here it is recomputed
    (one batched matmul) and its buffer reused for the gradient, so training holds one
    feature-sized tensor less per DFF and the backward makes fewer passes over memory.
    """

    @staticmethod
    def forward(ctx, x, skip, w_atten, w_redu, w1, b1, w2, b2):
        f = _Features(is_channels_last(x) and is_channels_last(skip))
        d = x.shape[1]
        xs, ss = f.view(x), f.view(skip)
        means = torch.cat([xs.mean(f.token_dim), ss.mean(f.token_dim)], 1)  # (B, 2d)
        gate = torch.sigmoid(means @ w_atten.t())  # channel gate a
        w_x, w_s = _dff_weights(gate, w_redu, w1, w2, d)
        y = _dff_pre_activation(f, xs, ss, w_x, w_s)
        spatial = torch.sigmoid(f.channels(y, slice(d, d + 1)) + (b1 + b2))  # spatial gate, (B, 1, N) or (B, N, 1)
        out = f.channels(y, slice(0, d)) * spatial
        ctx.features = f
        ctx.save_for_backward(x, skip, w_atten, w_redu, w1, w2, means, gate, spatial)
        return f.unview(out, x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, skip, w_atten, w_redu, w1, w2, means, gate, spatial = ctx.saved_tensors
        f: _Features = ctx.features
        d = x.shape[1]
        xs, ss = f.view(x), f.view(skip)
        g = f.view(grad_out)
        w_x, w_s = _dff_weights(gate, w_redu, w1, w2, d)
        # grad_y = [g ⊙ s ; Σ_c(g ⊙ v) · s(1 - s)], built in the recomputed pre-activation's buffer.
        grad_y = _dff_pre_activation(f, xs, ss, w_x, w_s)
        grad_v = f.channels(grad_y, slice(0, d))
        grad_z = grad_v.mul_(g).sum(f.channel_dim, keepdim=True).mul_(spatial * (1 - spatial))
        torch.mul(g, spatial, out=grad_v)
        f.channels(grad_y, slice(d, d + 1)).copy_(grad_z)
        grad_w_x, grad_w_s = f.outer(grad_y, xs), f.outer(grad_y, ss)  # (B, d+1, d)
        grad_xs, grad_ss = f.apply_transposed(w_x, grad_y), f.apply_transposed(w_s, grad_y)
        # Back through the per-sample weights to W_r, the channel gate, W_a and the means.
        grad_w_redu = torch.cat(
            [(grad_w_x[:, :d] * gate[:, None, :d]).sum(0), (grad_w_s[:, :d] * gate[:, None, d:]).sum(0)], 1
        )
        grad_gate = torch.cat([(grad_w_x[:, :d] * w_redu[:, :d]).sum(1), (grad_w_s[:, :d] * w_redu[:, d:]).sum(1)], 1)
        grad_logits = grad_gate * gate * (1 - gate)
        grad_w_atten = grad_logits.t() @ means
        grad_means = (grad_logits @ w_atten) / xs.shape[f.token_dim]
        grad_xs.add_(grad_means[:, :d].unsqueeze(f.token_dim))
        grad_ss.add_(grad_means[:, d:].unsqueeze(f.token_dim))
        grad_bias = grad_z.sum().reshape(1)
        return (
            f.unview(grad_xs, x.shape),
            f.unview(grad_ss, skip.shape),
            grad_w_atten,
            grad_w_redu,
            grad_w_x[:, d:].sum(0),
            grad_bias,
            grad_w_s[:, d:].sum(0),
            grad_bias.clone(),
        )


def _dff(x, skip, w_atten, w_redu, w1, b1, w2, b2):
    """DFF on (B, d, *S) x and skip with flattened weights; a custom backward when gradients are needed."""
    tensors = (x, skip, w_atten, w_redu, w1, b1, w2, b2)
    if (
        torch.is_grad_enabled()
        and any(t.requires_grad for t in tensors)
        and not torch.jit.is_scripting()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    ):
        return _DFFFunction.apply(*tensors)
    f = _Features(is_channels_last(x) and is_channels_last(skip))
    d = x.shape[1]
    xs, ss = f.view(x), f.view(skip)
    gate = torch.sigmoid(torch.cat([xs.mean(f.token_dim), ss.mean(f.token_dim)], 1) @ w_atten.t())
    w_x, w_s = _dff_weights(gate, w_redu, w1, w2, d)
    y = _dff_pre_activation(f, xs, ss, w_x, w_s)
    out = f.channels(y, slice(0, d)) * torch.sigmoid(f.channels(y, slice(d, d + 1)) + (b1 + b2))
    return f.unview(out, x.shape)


def dff(
    x: torch.Tensor,
    skip: torch.Tensor,
    w_atten: torch.Tensor,
    w_redu: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
) -> torch.Tensor:
    """DFF of x, skip (B, d, *S) → (B, d, *S) in the inputs' layout, from flattened 1×1-conv weights.

    ``w_atten`` (2d, 2d) = W_a, ``w_redu`` (d, 2d) = W_r, ``w1``/``w2`` (1, d) and ``b1``/``b2`` (1,) the
    spatial-gate convs. Under autocast every product runs in the autocast dtype (the in-place
    ``baddbmm_`` needs one dtype).
    """
    tensors = (x, skip, w_atten, w_redu, w1, b1, w2, b2)
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            return _dff(*(t.to(dtype) for t in tensors))
    return _dff(*tensors)
