"""Swin v1 encoder: window maths against the original 2D formulation, SDPA = explicit, 2D/3D shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusionseg.kernels import set_reference_ops
from fusionseg.nets.swin import (
    PatchMerging,
    SwinBlock,
    SwinEncoder,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

# --- the original 2D formulation (Swin v1 segmentation backbone), written out as a reference ---------


def ref_window_partition(x, ws):
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def ref_index(ws):
    coords = torch.stack(torch.meshgrid([torch.arange(ws), torch.arange(ws)], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    return rel.sum(-1)


def ref_mask(hp, wp, ws, shift):
    img = torch.zeros((1, hp, wp, 1))
    cnt = 0
    for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, h, w, :] = cnt
            cnt += 1
    mw = ref_window_partition(img, ws).view(-1, ws * ws)
    m = mw.unsqueeze(1) - mw.unsqueeze(2)
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


def ref_block(blk: SwinBlock, x: torch.Tensor, h: int, w: int, mask) -> torch.Tensor:
    """The original SwinTransformerBlock.forward on (B, H·W, C) tokens with explicit attention."""
    b, _, c = x.shape
    ws, shift = blk.window_size[0], blk.shift_size[0]
    attn = blk.attn
    shortcut = x
    x = blk.norm1(x).view(b, h, w, c)
    pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    hp, wp = x.shape[1:3]
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    xw = ref_window_partition(x, ws).view(-1, ws * ws, c)
    bw, n, _ = xw.shape
    qkv = attn.qkv(xw).reshape(bw, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * attn.scale, qkv[1], qkv[2]
    a = q @ k.transpose(-2, -1)
    bias = attn.relative_position_bias_table[ref_index(ws).view(-1)].view(n, n, -1).permute(2, 0, 1)
    a = a + bias.unsqueeze(0)
    if shift:
        nw = mask.shape[0]
        a = a.view(bw // nw, nw, attn.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        a = a.view(-1, attn.num_heads, n, n)
    xw = (a.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c)
    xw = attn.proj(xw).view(-1, ws, ws, c)
    x = xw.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    x = x[:, :h, :w, :].reshape(b, h * w, c)
    x = shortcut + x
    return x + blk.mlp(blk.norm2(x))


# --- tests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial", [(14, 21), (7, 14, 7)])
def test_window_partition_round_trip(spatial):
    window = (7,) * len(spatial)
    x = torch.randn(2, *spatial, 5)
    w = window_partition(x, window)
    assert w.shape == (2 * (torch.tensor(spatial) // 7).prod().item(), 7 ** len(spatial), 5)
    assert torch.equal(window_reverse(w, window, spatial), x)


def test_window_partition_matches_original_2d():
    x = torch.randn(2, 14, 21, 3)
    assert torch.equal(window_partition(x, (7, 7)), ref_window_partition(x, 7).view(-1, 49, 3))


def test_relative_position_index_matches_original_and_covers_3d_table():
    assert torch.equal(relative_position_index((7, 7)), ref_index(7))
    idx3 = relative_position_index((3, 4, 5))
    assert idx3.shape == (60, 60)
    assert idx3.min() == 0 and idx3.max() == 5 * 7 * 9 - 1
    assert len(idx3.unique()) == 5 * 7 * 9  # every relative offset has its own entry


def test_shifted_mask_matches_original():
    assert torch.equal(shifted_window_mask((14, 21), (7, 7), (3, 3)), ref_mask(14, 21, 7, 3))
    m3 = shifted_window_mask((4, 8, 8), (2, 4, 4), (1, 2, 2))
    assert m3.shape == (2 * 2 * 2, 32, 32) and set(m3.unique().tolist()) == {0.0, -100.0}


@pytest.mark.parametrize("shift", [0, 3])
@pytest.mark.parametrize("size", [(14, 14), (10, 9)])  # 10×9 exercises the zero padding
def test_block_matches_original_formulation(shift, size):
    torch.manual_seed(0)
    blk = SwinBlock(16, num_heads=2, window_size=(7, 7), shift_size=(shift, shift)).eval()
    with torch.no_grad():
        blk.attn.relative_position_bias_table.normal_()
    h, w = size
    x = torch.randn(2, h, w, 16)
    hp, wp = -(-h // 7) * 7, -(-w // 7) * 7
    mask = shifted_window_mask((hp, wp), (7, 7), (3, 3))
    ours = blk(x, mask)
    ref = ref_block(blk, x.view(2, h * w, 16), h, w, ref_mask(hp, wp, 7, 3))
    torch.testing.assert_close(ours.view(2, h * w, 16), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window,with_mask", [((7, 7), False), ((7, 7), True), ((2, 3, 3), True)])
def test_window_attention_sdpa_equals_explicit(window, with_mask):
    torch.manual_seed(0)
    sdpa = WindowAttention(12, window, num_heads=3)
    explicit = set_reference_ops(WindowAttention(12, window, num_heads=3))
    explicit.load_state_dict(sdpa.state_dict())
    with torch.no_grad():
        sdpa.relative_position_bias_table.normal_()
        explicit.relative_position_bias_table.copy_(sdpa.relative_position_bias_table)
    n = torch.tensor(window).prod().item()
    nw = 4
    mask = shifted_window_mask([2 * w for w in window[:2]] + list(window[2:]), window, [w // 2 for w in window])
    mask = mask[:nw] if with_mask else None
    x = torch.randn(2 * nw, n, 12, requires_grad=True)
    outs, grads = [], []
    for m in (sdpa, explicit):
        y = m(x, mask)
        g = torch.autograd.grad(y.square().sum(), [x, m.relative_position_bias_table, m.qkv.weight])
        outs.append(y)
        grads.append(g)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert grads[0][1].abs().sum() > 0  # the bias table learns through attn_mask


def test_patch_merging_order_matches_original_2d():
    torch.manual_seed(0)
    pm = PatchMerging(4, spatial_dims=2)
    x = torch.randn(2, 6, 8, 4)
    ref_in = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    torch.testing.assert_close(pm(x), pm.reduction(pm.norm(ref_in)))
    assert PatchMerging(4, spatial_dims=3)(torch.randn(1, 4, 5, 6, 4)).shape == (1, 2, 3, 3, 8)  # odd sizes pad


@pytest.mark.parametrize(
    "spatial_dims,size,patch,expected",
    [
        (2, (64, 64), 4, [(16, 16), (8, 8), (4, 4), (2, 2)]),
        (3, (32, 32, 32), 8, [(4, 4, 4), (2, 2, 2), (1, 1, 1), (1, 1, 1)]),
    ],
)
def test_encoder_shapes_backward_and_state_dict(spatial_dims, size, patch, expected):
    torch.manual_seed(0)
    kw = dict(embed_dim=8, depths=(2, 1, 1, 1), num_heads=(1, 1, 2, 2), patch_size=patch, spatial_dims=spatial_dims)
    enc = SwinEncoder(2, window_size=4 if spatial_dims == 3 else 7, **kw)
    feats = enc(torch.randn(2, 2, *size))
    assert [tuple(f.shape[2:]) for f in feats] == expected
    assert [f.shape[1] for f in feats] == [8, 16, 32, 64]
    sum(f.square().mean() for f in feats).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())
    assert enc.layers[0].blocks[0].attn.relative_position_bias_table.grad.abs().sum() > 0
    clone = SwinEncoder(2, window_size=4 if spatial_dims == 3 else 7, **kw)
    clone.load_state_dict(enc.state_dict(), strict=True)
    enc.eval(), clone.eval()
    x = torch.randn(1, 2, *size)
    torch.testing.assert_close(enc(x)[-1], clone(x)[-1])


def test_encoder_checkpointing_gives_same_result():
    torch.manual_seed(0)
    kw = dict(embed_dim=8, depths=(2, 2, 1, 1), num_heads=(1, 1, 2, 2), drop_path_rate=0.0)
    a, b = SwinEncoder(3, spatial_dims=2, **kw), SwinEncoder(3, spatial_dims=2, use_checkpoint=True, **kw)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya[1], yb[1])
    ga = torch.autograd.grad(ya[1].sum(), a.patch_embed.proj.weight)[0]
    gb = torch.autograd.grad(yb[1].sum(), b.patch_embed.proj.weight)[0]
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(depths=(2, 2), num_heads=(1,)), "equal length"),
        (dict(spatial_dims=1), "spatial_dims"),
        (dict(window_size=(7, 7)), "window_size"),  # 3D by default: one window size per dim
        (dict(window_size=(7, 7, 7), spatial_dims=2), "window_size"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
        (dict(embed_dim=10, num_heads=(3, 3, 3, 3)), "multiple of num_heads"),
        (dict(patch_size=0), "patch_size"),
    ],
)
def test_encoder_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SwinEncoder(**kwargs)


def test_block_bad_shift():
    with pytest.raises(ValueError, match="shift"):
        SwinBlock(8, 1, window_size=(7, 7), shift_size=(7, 0))


def test_defaults_are_3d():
    enc = SwinEncoder(1, 8, (1, 1), (1, 1), patch_size=2, window_size=2)
    assert enc.spatial_dims == 3 and enc.patch_embed.proj.weight.shape == (8, 1, 2, 2, 2)
    assert [f.shape for f in enc(torch.randn(1, 1, 4, 4, 4))] == [(1, 8, 2, 2, 2), (1, 16, 1, 1, 1)]
