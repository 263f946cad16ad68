"""Attention kernels: the chunked CPU flash backward and the explicit N×N form against plain softmax maths."""

from __future__ import annotations

import pytest
import torch

import fusionseg.kernels.attention as attention_kernels
from fusionseg.kernels.attention import explicit_attention, scaled_dot_product_attention


@pytest.mark.parametrize(
    ("shape", "query_chunk"),
    [((2, 3, 70, 8), 16), ((1, 1, 64, 16), 16), ((1, 2, 40, 8), 1024), ((2, 1, 33, 4), 8)],
)
def test_attention_gradients_match_explicit_softmax(shape, query_chunk, monkeypatch):
    monkeypatch.setattr(attention_kernels, "QUERY_CHUNK", query_chunk)
    q, k, v = (torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(shape, dtype=torch.float64)
    out = scaled_dot_product_attention(q, k, v, scale=0.3)
    explicit = torch.softmax(q @ k.transpose(-1, -2) * 0.3, -1) @ v
    torch.testing.assert_close(out, explicit, atol=1e-12, rtol=1e-10)
    for g_fast, g_plain in zip(
        torch.autograd.grad(out, [q, k, v], grad_out), torch.autograd.grad(explicit, [q, k, v], grad_out)
    ):
        torch.testing.assert_close(g_fast, g_plain, atol=1e-12, rtol=1e-10)


def test_default_scale_and_inference_use_pytorch_sdpa():
    q, k, v = (torch.randn(2, 2, 9, 4) for _ in range(3))
    expected = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v  # dh = 4 → scale 1/2
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), expected, atol=1e-6, rtol=1e-5)


def test_explicit_attention_scale_bias_and_dropout():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 4, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(1, 3, 10, 10, dtype=torch.float64)
    logits = q @ k.transpose(-1, -2)
    torch.testing.assert_close(explicit_attention(q, k, v, 0.5, bias), torch.softmax(logits * 0.5 + bias, -1) @ v)
    torch.testing.assert_close(explicit_attention(q, k, v), torch.softmax(logits, -1) @ v)  # scale None: unscaled
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.5)
    torch.testing.assert_close(explicit_attention(q, k, v, 0.5, bias), sdpa)
    dropped = explicit_attention(q, k, v, 0.5, dropout_p=0.9)
    assert not torch.allclose(dropped, explicit_attention(q, k, v, 0.5))
