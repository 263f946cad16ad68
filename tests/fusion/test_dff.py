"""DFF: shapes, parity of the fused kernel with the plain path (``reference_ops``), gradients, errors, state_dict."""

from __future__ import annotations

import math

import pytest
import torch

from fusionseg.fusion import DFF
from fusionseg.kernels import reference_ops, reference_ops_default, set_reference_ops
from fusionseg.layers import is_channels_last, to_channels_last

# (dim, spatial_dims, input shape)
CASES = [
    (8, 2, (2, 8, 12, 10)),
    (16, 2, (1, 16, 7, 9)),
    (8, 3, (2, 8, 6, 5, 4)),
    (12, 3, (1, 12, 4, 8, 8)),
]


def _inputs(shape, channels_last: bool, requires_grad: bool = False):
    x, skip = torch.randn(shape), torch.randn(shape)
    if channels_last:
        x, skip = to_channels_last(x), to_channels_last(skip)
    return x.requires_grad_(requires_grad), skip.requires_grad_(requires_grad)


def _plain(dff: DFF, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """DFF's plain path: the paper's five steps with the module's convolutions."""
    with reference_ops(dff):
        return dff(x, skip)


def _random_weights(module: torch.nn.Module) -> None:
    # Default init gives small gates; spread the weights so the parity check exercises the maths.
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)


@pytest.mark.parametrize("channels_last", [False, True], ids=["ncs", "channels_last"])
@pytest.mark.parametrize(("dim", "spatial_dims", "shape"), CASES)
def test_forward_matches_plain_path(dim, spatial_dims, shape, channels_last):
    dff = DFF(dim, spatial_dims=spatial_dims)
    _random_weights(dff)
    x, skip = _inputs(shape, channels_last)
    out = dff(x, skip)
    assert out.shape == shape
    assert is_channels_last(out) == channels_last
    torch.testing.assert_close(out, _plain(dff, x, skip), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # inference path (no custom autograd Function)
        no_grad_out = dff(x, skip)
    assert is_channels_last(no_grad_out) == channels_last
    torch.testing.assert_close(no_grad_out, out, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True], ids=["ncs", "channels_last"])
@pytest.mark.parametrize(("dim", "spatial_dims", "shape"), CASES)
def test_backward_matches_plain_path(dim, spatial_dims, shape, channels_last):
    dff = DFF(dim, spatial_dims=spatial_dims)
    _random_weights(dff)
    x, skip = _inputs(shape, channels_last, requires_grad=True)
    grad_out = torch.randn(shape)
    wrt = [x, skip, *dff.parameters()]
    fast = torch.autograd.grad(dff(x, skip), wrt, grad_out)
    plain = torch.autograd.grad(_plain(dff, x, skip), wrt, grad_out)
    names = ["x", "skip", *(n for n, _ in dff.named_parameters())]
    for name, g_fast, g_plain in zip(names, fast, plain):
        torch.testing.assert_close(g_fast, g_plain, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("reference", [False, True], ids=["fused", "plain"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_hand_computed_output(spatial_dims, reference):
    # dim 1, x = [1, 3], skip = [2, 2]: means (2, 2); W_a = diag(ln3/2, 0) → a = (σ(ln 3), σ(0)) = (3/4, 1/2);
    # W_r = [1, 1] → v = 3/4·x + 1/2·skip = [1.75, 3.25]; s = σ(x − skip) = σ([−1, 1]).
    dff = set_reference_ops(DFF(1, spatial_dims), reference)
    with torch.no_grad():
        for p in dff.parameters():
            p.zero_()
        dff.conv_atten[0].weight[0, 0] = math.log(3) / 2
        dff.conv_redu.weight.fill_(1.0)
        dff.conv1.weight.fill_(1.0)
        dff.conv2.weight.fill_(-1.0)
    shape = (1, 1) + (1,) * (spatial_dims - 1) + (2,)
    x, skip = torch.tensor([1.0, 3.0]).view(shape), torch.tensor([2.0, 2.0]).view(shape)
    expected = torch.tensor([1.75 * 0.2689414214, 3.25 * 0.7310585786]).view(shape)
    torch.testing.assert_close(dff(x, skip), expected, atol=1e-6, rtol=1e-6)


def test_reference_ops_switch_leaves_weights_alone():
    dff = DFF(4, spatial_dims=2)
    keys = list(dff.state_dict())
    assert dff.reference_ops is reference_ops_default() is False  # the fused kernel by default
    assert set_reference_ops(dff).reference_ops is True
    assert list(dff.state_dict()) == keys


def test_parameter_count_and_official_names():
    for dim in (1, 8, 48):
        dff = DFF(dim, spatial_dims=3)
        assert sum(p.numel() for p in dff.parameters()) == 6 * dim**2 + 2 * dim + 2
    shapes = {k: tuple(v.shape) for k, v in DFF(4, spatial_dims=3).state_dict().items()}
    assert shapes == {
        "conv_atten.0.weight": (8, 8, 1, 1, 1),
        "conv_redu.weight": (4, 8, 1, 1, 1),
        "conv1.weight": (1, 4, 1, 1, 1),
        "conv1.bias": (1,),
        "conv2.weight": (1, 4, 1, 1, 1),
        "conv2.bias": (1,),
    }
    assert DFF(4, spatial_dims=2).state_dict()["conv_redu.weight"].shape == (4, 8, 1, 1)


def test_gate_uses_global_mean_of_both_inputs():
    # Changing skip only where x is looked at must still change every output voxel through the channel gate.
    dff = DFF(4, spatial_dims=2)
    _random_weights(dff)
    x, skip = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    skip2 = skip.clone()
    skip2[..., 0, 0] += 10.0
    diff = (dff(x, skip) - dff(x, skip2)).abs()
    assert (diff[..., 1:, 1:] > 0).all()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_state_dict_round_trip(spatial_dims):
    a, b = DFF(6, spatial_dims), DFF(6, spatial_dims)
    _random_weights(a)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn((2, 6) + (5,) * spatial_dims)
    torch.testing.assert_close(a(x, x.flip(0)), b(x, x.flip(0)), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(dim=0), "dim must be a positive int"),
        (dict(dim=-3), "dim must be a positive int"),
        (dict(dim=8.0), "dim must be a positive int"),
        (dict(dim=8, spatial_dims=1), "spatial_dims must be one of"),
        (dict(dim=8, spatial_dims=4), "spatial_dims must be one of"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DFF(**kwargs)


@pytest.mark.parametrize(
    ("spatial_dims", "x_shape", "skip_shape"),
    [
        (2, (1, 8, 6, 6), (1, 8, 6, 7)),  # spatial mismatch
        (2, (1, 8, 6, 6), (1, 4, 6, 6)),  # channel mismatch
        (2, (1, 4, 6, 6), (1, 4, 6, 6)),  # both have the wrong channel count
        (2, (2, 8, 6, 6), (1, 8, 6, 6)),  # batch mismatch
        (3, (1, 8, 6, 6), (1, 8, 6, 6)),  # 2D tensors into a 3D module
    ],
)
def test_bad_inputs_name_both_shapes(spatial_dims, x_shape, skip_shape):
    dff = DFF(8, spatial_dims=spatial_dims)
    with pytest.raises(ValueError) as info:
        dff(torch.randn(x_shape), torch.randn(skip_shape))
    assert str(tuple(x_shape)) in str(info.value) and str(tuple(skip_shape)) in str(info.value)


@pytest.mark.parametrize("grad_channels_last", [False, True])
def test_mixed_layouts_match_plain_path(grad_channels_last):
    dff = DFF(8, spatial_dims=3)
    _random_weights(dff)
    x = torch.randn(2, 8, 4, 5, 6).requires_grad_()
    skip = to_channels_last(torch.randn(2, 8, 4, 5, 6)).requires_grad_()
    grad_out = torch.randn(2, 8, 4, 5, 6)
    if grad_channels_last:
        grad_out = to_channels_last(grad_out)
    out = dff(x, skip)
    torch.testing.assert_close(out, _plain(dff, x, skip), atol=1e-5, rtol=1e-5)
    fast = torch.autograd.grad(out, [x, skip], grad_out)
    plain = torch.autograd.grad(_plain(dff, x, skip), [x, skip], grad_out)
    for g_fast, g_plain in zip(fast, plain):
        torch.testing.assert_close(g_fast, g_plain, atol=1e-4, rtol=1e-4)


def test_gradcheck_double_precision():
    dff = DFF(3, spatial_dims=2).double()
    x = torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dff, (x, skip))
    assert torch.autograd.gradcheck(dff, (to_channels_last(x.detach()).requires_grad_(), skip))


@pytest.mark.parametrize("channels_last", [False, True])
def test_dff_bf16_autocast_matches_fp32(channels_last):
    torch.manual_seed(0)
    m = DFF(8, spatial_dims=2)
    x, s = torch.randn(2, 8, 16, 16), torch.randn(2, 8, 16, 16)
    if channels_last:
        x, s = x.to(memory_format=torch.channels_last), s.to(memory_format=torch.channels_last)
    ref = m(x, s)
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, s)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.detach(), atol=5e-2, rtol=5e-2)
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert m.conv_redu.weight.grad is not None
