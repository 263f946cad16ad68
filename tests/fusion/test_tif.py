"""TIF: paired and fused forms against the plain path (``reference_ops``: explicit N×N attention), gradients, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fusionseg.kernels.attention as attention_kernels
from fusionseg.fusion import TIF
from fusionseg.fusion.tif import add_resized
from fusionseg.kernels import reference_ops, set_reference_ops
from fusionseg.layers import to_channels_last

SMALL = dict(heads_s=2, dim_head_s=8, mlp_s=24, heads_l=1, dim_head_l=16, mlp_l=32)

# (dim_s, dim_l, spatial_dims, e shape, r shape, extra kwargs)
CASES = [
    pytest.param(16, 16, 2, (2, 16, 8, 8), (2, 16, 8, 8), SMALL, id="2d-same"),
    pytest.param(12, 16, 2, (1, 16, 8, 6), (1, 12, 4, 3), SMALL, id="2d-x2-widths"),
    pytest.param(12, 16, 2, (1, 16, 6, 6), (1, 12, 4, 4), SMALL, id="2d-non-integer-ratio"),
    pytest.param(96, 128, 2, (1, 128, 8, 8), (1, 96, 4, 4), {}, id="2d-official"),
    pytest.param(8, 8, 3, (1, 8, 3, 4, 5), (1, 8, 3, 4, 5), SMALL, id="3d-same"),
    pytest.param(8, 16, 3, (2, 16, 4, 4, 4), (2, 8, 2, 2, 2), SMALL, id="3d-x2-widths"),
]


def _make(dim_s, dim_l, spatial_dims, kwargs) -> TIF:
    tif = TIF(dim_s, dim_l, spatial_dims=spatial_dims, **kwargs)
    with torch.no_grad():  # non-trivial norms and biases so every parameter matters
        for name, p in tif.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.3)
    return tif


def _plain(tif: TIF, e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """TIF's plain fused form: explicit N×N attention matrices and ``F.interpolate``."""
    with reference_ops(tif):
        return tif(e, r)


def _plain_paired(tif: TIF, e: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with reference_ops(tif):
        return tif.forward_paired(e, r)


def _inputs(e_shape, r_shape, channels_last, requires_grad=False):
    e, r = torch.randn(e_shape), torch.randn(r_shape)
    if channels_last:
        e, r = to_channels_last(e), to_channels_last(r)
    return e.requires_grad_(requires_grad), r.requires_grad_(requires_grad)


@pytest.mark.parametrize("channels_last", [False, True], ids=["ncs", "channels_last"])
@pytest.mark.parametrize(("dim_s", "dim_l", "spatial_dims", "e_shape", "r_shape", "kwargs"), CASES)
def test_forward_matches_plain_path(dim_s, dim_l, spatial_dims, e_shape, r_shape, kwargs, channels_last):
    tif = _make(dim_s, dim_l, spatial_dims, kwargs)
    e, r = _inputs(e_shape, r_shape, channels_last)
    e_out, r_out = tif.forward_paired(e, r)
    e_ref, r_ref = _plain_paired(tif, e, r)
    assert e_out.shape == e_shape and r_out.shape == r_shape
    torch.testing.assert_close(e_out, e_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r_out, r_ref, atol=1e-5, rtol=1e-5)
    fused = tif(e, r)
    assert fused.shape == e_shape
    torch.testing.assert_close(fused, _plain(tif, e, r), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("query_chunk", [attention_kernels.QUERY_CHUNK, 16], ids=["default-chunk", "chunk16"])
@pytest.mark.parametrize(("dim_s", "dim_l", "spatial_dims", "e_shape", "r_shape", "kwargs"), CASES)
def test_backward_matches_plain_path(dim_s, dim_l, spatial_dims, e_shape, r_shape, kwargs, query_chunk, monkeypatch):
    monkeypatch.setattr(attention_kernels, "QUERY_CHUNK", query_chunk)  # 16 → chunked CPU attention backward
    tif = _make(dim_s, dim_l, spatial_dims, kwargs)
    e, r = _inputs(e_shape, r_shape, channels_last=False, requires_grad=True)
    grad_out = torch.randn(e_shape)
    wrt = [e, r, *tif.parameters()]
    fast = torch.autograd.grad(tif(e, r), wrt, grad_out)
    plain = torch.autograd.grad(_plain(tif, e, r), wrt, grad_out)
    names = ["e", "r", *(n for n, _ in tif.named_parameters())]
    for name, g_fast, g_plain in zip(names, fast, plain):
        torch.testing.assert_close(g_fast, g_plain, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "explicit"])
def test_attention_module_is_the_softmax_formula(reference):
    attn = set_reference_ops(TIF(16, 16, **SMALL).transformer_s.layers[0][0].fn, reference)
    t = torch.randn(2, 30, 16)
    b, n, h, dh = 2, 30, attn.heads, attn.dim_head
    q, k, v = (z.reshape(b, n, h, dh).transpose(1, 2) for z in attn.to_qkv(t).chunk(3, dim=-1))
    heads = ((q @ k.transpose(-2, -1)) * dh**-0.5).softmax(-1) @ v  # (B, h, N, dh)
    expected = attn.to_out(heads.transpose(1, 2).reshape(b, n, h * dh))
    torch.testing.assert_close(attn(t), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("dim_s", "dim_l", "spatial_dims", "e_shape", "r_shape", "kwargs"), CASES[:2] + CASES[-1:])
def test_reference_ops_switch_gives_same_outputs_and_gradients(dim_s, dim_l, spatial_dims, e_shape, r_shape, kwargs):
    tif = _make(dim_s, dim_l, spatial_dims, kwargs)
    e, r = _inputs(e_shape, r_shape, channels_last=False, requires_grad=True)
    wrt = [e, r, *tif.parameters()]
    runs = []
    for reference in (False, True):
        set_reference_ops(tif, reference)
        assert tif.reference_ops is reference
        assert all(layer[0].fn.reference_ops is reference for layer in tif.transformer_l.layers)
        out = tif(e, r)
        runs.append((out, torch.autograd.grad(out.square().sum(), wrt)))
    torch.testing.assert_close(runs[0][0], runs[1][0], atol=1e-5, rtol=1e-5)
    for g_fast, g_ref in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(g_fast, g_ref, atol=1e-4, rtol=1e-4)


def test_dropout_in_reference_attention_is_active_only_in_training():
    tif = set_reference_ops(TIF(16, 16, spatial_dims=2, dropout=0.5, **SMALL))
    e, r = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4)
    assert not torch.equal(tif(e, r), tif(e, r))
    tif.eval()
    with reference_ops(tif, False):
        fast = tif(e, r)
    torch.testing.assert_close(tif(e, r), fast, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("e_size", "r_size"),
    [((8, 6), (4, 3)), ((8, 8), (8, 8)), ((6, 6), (4, 4)), ((4, 4, 6), (2, 1, 3)), ((3, 3), (6, 6))],
)
def test_add_resized_is_nearest_interpolation(e_size, r_size):
    x, y = torch.randn(2, 3, *e_size), to_channels_last(torch.randn(2, 3, *r_size))
    torch.testing.assert_close(add_resized(x, y), x + F.interpolate(y, size=e_size, mode="nearest"), atol=0, rtol=0)


def test_outputs_depend_on_the_other_branch():
    # The global token carries information across branches: changing r changes e' everywhere.
    tif = _make(12, 16, 2, SMALL).eval()
    e, r = torch.randn(1, 16, 6, 6), torch.randn(1, 12, 3, 3)
    e1, _ = tif.forward_paired(e, r)
    e2, _ = tif.forward_paired(e, r + torch.randn_like(r))  # not a shift: LayerNorm ignores those
    assert ((e1 - e2).abs() > 1e-6).all()


def test_dropout_is_active_only_in_training():
    tif = TIF(16, 16, spatial_dims=2, dropout=0.5, **SMALL)
    e, r = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4)
    assert not torch.equal(tif(e, r), tif(e, r))
    tif.eval()
    torch.testing.assert_close(tif(e, r), _plain(tif, e, r), atol=1e-5, rtol=1e-5)


def test_parameter_count_from_the_layer_list():
    def transformer(dim, heads, dim_head, mlp):
        inner = heads * dim_head
        out_proj = 0 if (heads == 1 and dim_head == dim) else inner * dim + dim
        return 2 * dim + dim * 3 * inner + out_proj + 2 * dim + (dim * mlp + mlp) + (mlp * dim + dim)

    def tif_count(dim_s, dim_l):
        norms = 2 * dim_s + 2 * dim_l
        linears = (dim_s * dim_l + dim_l) + (dim_l * dim_s + dim_s)
        return transformer(dim_s, 3, 32, 128) + transformer(dim_l, 1, 64, 256) + norms + linears

    assert tif_count(96, 128) == 186_720
    for dim_s, dim_l in [(96, 128), (192, 256), (64, 64)]:
        assert sum(p.numel() for p in TIF(dim_s, dim_l).parameters()) == tif_count(dim_s, dim_l)
    assert "transformer_l.layers.0.0.fn.to_out.0.weight" not in TIF(64, 64).state_dict()  # identity out-proj
    assert TIF(8, 8).spatial_dims is None  # no convolutions: 2D or 3D from the input, as the seed's TIF(dim_s, dim_l)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_state_dict_round_trip(spatial_dims):
    a, b = _make(8, 16, spatial_dims, SMALL), TIF(8, 16, spatial_dims=spatial_dims, **SMALL)
    b.load_state_dict(a.state_dict(), strict=True)
    e, r = torch.randn((2, 16) + (4,) * spatial_dims), torch.randn((2, 8) + (2,) * spatial_dims)
    torch.testing.assert_close(a(e, r), b(e, r), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(dim_s=0, dim_l=8), "dim_s must be a positive int"),
        (dict(dim_s=8, dim_l=-1), "dim_l must be a positive int"),
        (dict(dim_s=8, dim_l=8, heads_s=0), "heads_s must be a positive int"),
        (dict(dim_s=8, dim_l=8, dim_head_l=2.5), "dim_head_l must be a positive int"),
        (dict(dim_s=8, dim_l=8, depth=0), "depth must be a positive int"),
        (dict(dim_s=8, dim_l=8, dropout=1.0), "dropout must be in"),
        (dict(dim_s=8, dim_l=8, spatial_dims=4), "spatial_dims must be one of"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TIF(**kwargs)


@pytest.mark.parametrize(
    ("spatial_dims", "e_shape", "r_shape"),
    [
        (2, (1, 16, 8, 8), (1, 16, 4, 4)),  # r has dim_l channels instead of dim_s
        (2, (1, 8, 8, 8), (1, 8, 4, 4)),  # e has dim_s channels instead of dim_l
        (2, (2, 16, 8, 8), (1, 8, 4, 4)),  # batch mismatch
        (3, (1, 16, 8, 8), (1, 8, 4, 4)),  # 2D tensors into a 3D module
        (None, (1, 16, 8), (1, 8, 4)),  # 1D tensors
        (None, (1, 16, 8, 8), (1, 8, 4, 4, 4)),  # e 2D, r 3D
    ],
)
def test_bad_inputs_name_both_shapes(spatial_dims, e_shape, r_shape):
    tif = TIF(8, 16, spatial_dims=spatial_dims, **SMALL)
    for call in (tif, tif.forward_paired):
        with pytest.raises(ValueError) as info:
            call(torch.randn(e_shape), torch.randn(r_shape))
        assert str(tuple(e_shape)) in str(info.value) and str(tuple(r_shape)) in str(info.value)
