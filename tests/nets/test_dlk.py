"""DLK layer / module / block: shapes, spec maths against a literal reference, fast = plain, backward, arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fusionseg.nets.dlk as dlk
from fusionseg.layers import to_channels_last
from fusionseg.nets.dlk import (
    DLKBlock,
    DLKLayer,
    DLKMlp,
    DLKModule,
    conv_few_channels,
    depthwise,
    mlp_in_slabs,
    pointwise,
    set_fast_path,
    upsample2x,
)

CASES = [(2, 2, (12, 10)), (2, 1, (12, 10)), (3, 2, (6, 7, 5)), (3, 1, (6, 7, 5))]  # spatial_dims, version, size


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere, layer scale near 1, so every branch matters in comparisons."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if name.endswith("layer_scale") else torch.randn_like(p) * 0.3)
    return module


def _conv(x, conv, **kw):
    fn = F.conv3d if x.ndim == 5 else F.conv2d
    return fn(x, conv.weight, conv.bias, **kw)


def reference_dlk_layer(layer: DLKLayer, x: torch.Tensor) -> torch.Tensor:
    """Spec "DLK layer", written out step by step with functional ops on NC* tensors."""
    p = _conv(x, layer.channel_proj) if layer.version == 2 else x
    c = p.shape[1]
    a1 = _conv(p, layer.att_conv1, padding=2, groups=c)
    a2 = _conv(a1, layer.att_conv2, padding=9, dilation=3, groups=c)
    u = torch.cat([a1, a2], 1)
    m = torch.cat([u.mean(1, keepdim=True), u.max(1, keepdim=True).values], 1)
    w = torch.sigmoid(_conv(m, layer.spatial_se[0], padding=3))
    if layer.version == 1:
        return a1 * w[:, :1] + a2 * w[:, 1:] + x
    u = u * w[:, :1] + u * w[:, 1:]
    pooled = u.mean(dim=tuple(range(2, u.ndim)), keepdim=True)
    return u * torch.sigmoid(_conv(pooled, layer.conv_atten[0])) + x


@pytest.mark.parametrize("spatial_dims,version,size", CASES)
@pytest.mark.parametrize("fast", [False, True])
def test_dlk_layer_matches_spec_reference(spatial_dims, version, size, fast):
    layer = set_fast_path(_randomize(DLKLayer(8, spatial_dims, version)), fast)
    x = torch.randn(2, 8, *size)
    if fast:
        x = to_channels_last(x)
    out = layer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, reference_dlk_layer(layer, x.contiguous()), rtol=1e-4, atol=1e-5)


def test_dlk_layer_v2_weights_both_scale_all_of_u():
    """The official quirk: u·w0 + u·w1 (not [a1·w0, a2·w1]) — a different formula must give other numbers."""
    layer = _randomize(DLKLayer(4, 2, 2)).eval()
    x = torch.randn(1, 4, 8, 8)
    p = _conv(x, layer.channel_proj)
    a1 = _conv(p, layer.att_conv1, padding=2, groups=2)
    a2 = _conv(a1, layer.att_conv2, padding=9, dilation=3, groups=2)
    u = torch.cat([a1, a2], 1)
    w = torch.sigmoid(
        _conv(torch.cat([u.mean(1, keepdim=True), u.amax(1, keepdim=True)], 1), layer.spatial_se[0], padding=3)
    )
    split = torch.cat([a1 * w[:, :1], a2 * w[:, 1:]], 1)
    wrong = split * torch.sigmoid(_conv(split.mean((2, 3), keepdim=True), layer.conv_atten[0])) + x
    assert (layer(x) - wrong).abs().max() > 1e-3


@pytest.mark.parametrize("spatial_dims,version,size", CASES)
def test_block_fast_equals_plain_forward_and_backward(spatial_dims, version, size):
    block = _randomize(DLKBlock(8, spatial_dims, version))
    x = torch.randn(2, 8, *size)
    outs, grads = [], []
    for fast in (False, True):
        set_fast_path(block, fast)
        block.zero_grad()
        xi = (to_channels_last(x) if fast else x.clone()).requires_grad_()
        out = block(xi)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        outs.append(out)
        grads.append([xi.grad] + [p.grad.clone() for p in block.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for g_fast, g_plain in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_fast, g_plain, rtol=1e-3, atol=1e-4)


def test_block_formula_shares_norm_and_layer_scale():
    block = _randomize(DLKBlock(6, 2)).eval()
    x = torch.randn(1, 6, 8, 8)
    g = block.layer_scale.view(-1, 1, 1)
    y = x + g * block.attn(block.norm_layer(x))
    z = y + g * block.mlp(block.norm_layer(y))
    torch.testing.assert_close(block(x), z, rtol=1e-5, atol=1e-6)
    assert block.layer_scale.shape == (6,) and torch.allclose(DLKBlock(6, 2).layer_scale, torch.full((6,), 1e-6))


def test_module_and_mlp_formulas():
    module = _randomize(DLKModule(6, 2)).eval()
    mlp = _randomize(DLKMlp(6, 24, 2)).eval()
    x = torch.randn(1, 6, 8, 8)
    expected = _conv(module.spatial_gating_unit(F.gelu(_conv(x, module.proj_1))), module.proj_2) + x
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-6)
    hidden = F.gelu(_conv(_conv(x, mlp.fc1), mlp.dwconv, padding=1, groups=24))
    torch.testing.assert_close(mlp(x), _conv(hidden, mlp.fc2), rtol=1e-5, atol=1e-6)


def test_pointwise_is_a_1x1_conv_and_channels_last():
    conv = torch.nn.Conv3d(5, 7, 1)
    x = torch.randn(2, 5, 3, 4, 6)
    y = pointwise(to_channels_last(x), conv)
    torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-6)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("kernel,dilation,groups", [(3, 1, 5), (7, 3, 5), (7, 1, 1)])
def test_same_conv_fast_backward_equals_builtin(kernel, dilation, groups):
    pad = dilation * (kernel - 1) // 2
    conv = torch.nn.Conv3d(5, 5, kernel, padding=pad, dilation=dilation, groups=groups)
    x = torch.randn(2, 5, 7, 6, 5, requires_grad=True)
    grad = torch.randn(2, 5, 7, 6, 5)
    y = depthwise(to_channels_last(x), conv)
    torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-6)
    fast = torch.autograd.grad(y, [x, conv.weight, conv.bias], grad)
    ref = torch.autograd.grad(conv(x), [x, conv.weight, conv.bias], grad)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size,slab_voxels", [((11, 6, 5), 60), ((9, 4, 3), 12), ((13, 7), 14), ((5, 4), 4)])
@pytest.mark.parametrize("residual", [False, True])
def test_mlp_in_slabs_equals_whole_tensor_mlp(monkeypatch, size, slab_voxels, residual):
    # slabs of 2, 1, 2 and 1 planes: first and last slab touch the volume faces, the middle ones need both halos
    monkeypatch.setattr(dlk, "SLAB_VOXELS", slab_voxels)
    mlp = _randomize(DLKMlp(3, 12, spatial_dims=len(size)))
    x = to_channels_last(torch.randn(2, 3, *size))
    with torch.no_grad():
        y = mlp_in_slabs(x, mlp.fc1.weight.flatten(1), mlp.fc1.bias, mlp.dwconv, mlp.fc2, residual=residual)
        ref = _conv(F.gelu(_conv(_conv(x, mlp.fc1), mlp.dwconv, padding=1, groups=12)), mlp.fc2)
        assert torch.allclose(y, ref + x if residual else ref, atol=1e-5)
        assert torch.allclose(mlp(x), ref, atol=1e-5)  # the module takes the slab path without gradients
    # not applicable: gradients needed, NC* layout, or a single slab
    assert mlp_in_slabs(x, mlp.fc1.weight.flatten(1), mlp.fc1.bias, mlp.dwconv, mlp.fc2) is None
    with torch.no_grad():
        assert mlp_in_slabs(x.contiguous(), mlp.fc1.weight.flatten(1), mlp.fc1.bias, mlp.dwconv, mlp.fc2) is None
        monkeypatch.setattr(dlk, "SLAB_VOXELS", 10**9)
        assert mlp_in_slabs(x, mlp.fc1.weight.flatten(1), mlp.fc1.bias, mlp.dwconv, mlp.fc2) is None


@pytest.mark.parametrize(
    "c_in,kernel,stride,padding,size",
    [(1, 3, 1, 1, (6, 5, 7)), (1, 7, 2, 3, (8, 6, 5)), (2, 5, 2, 2, (7, 6, 9)), (4, 3, 2, 1, (7, 9))],
)
def test_conv_few_channels_equals_builtin_conv(c_in, kernel, stride, padding, size):
    torch.manual_seed(0)
    conv = (torch.nn.Conv3d if len(size) == 3 else torch.nn.Conv2d)(c_in, 5, kernel, stride, padding)
    x = torch.randn(2, c_in, *size)
    with torch.no_grad():
        y = conv_few_channels(conv, x, conv.weight, conv.bias)
        ref = conv(x)
    assert y.shape == ref.shape and y.movedim(1, -1).is_contiguous()
    assert torch.allclose(y, ref, atol=1e-5)
    assert conv_few_channels(conv, x, conv.weight, conv.bias) is None  # training: the builtin (less memory)
    wide = torch.nn.Conv2d(8, 5, 3, padding=1)  # many input channels: the builtin (oneDNN) is better
    with torch.no_grad():
        assert conv_few_channels(wide, torch.randn(1, 8, 5, 5), wide.weight, wide.bias) is None


@pytest.mark.parametrize("size", [(3, 5), (3, 2, 4)])
def test_upsample2x_equals_transposed_conv(size):
    conv_t = (torch.nn.ConvTranspose2d if len(size) == 2 else torch.nn.ConvTranspose3d)(6, 4, 2, stride=2)
    x = torch.randn(2, 6, *size, requires_grad=True)
    y = upsample2x(to_channels_last(x), conv_t)
    ref = conv_t(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    assert y.shape == (2, 4, *(2 * s for s in size)) and y.movedim(1, -1).is_contiguous()
    grad = torch.randn_like(ref)
    g_fast = torch.autograd.grad(y, [x, conv_t.weight], grad)
    g_ref = torch.autograd.grad(ref, [x, conv_t.weight], grad)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_official_parameter_names_v2_and_v1():
    v2 = {k: tuple(v.shape) for k, v in DLKBlock(48, 3, 2).state_dict().items()}
    assert v2["attn.spatial_gating_unit.channel_proj.weight"] == (24, 48, 1, 1, 1)
    assert v2["attn.spatial_gating_unit.att_conv2.weight"] == (24, 1, 7, 7, 7)
    assert v2["attn.spatial_gating_unit.spatial_se.0.weight"] == (2, 2, 7, 7, 7)
    assert v2["attn.spatial_gating_unit.conv_atten.0.weight"] == (48, 48, 1, 1, 1)
    assert v2["mlp.dwconv.weight"] == (192, 1, 3, 3, 3) and v2["layer_scale"] == (48,)
    assert len(v2) == 21
    v1 = {k: tuple(v.shape) for k, v in DLKBlock(48, 3, 1).state_dict().items()}
    assert v1["attn.spatial_gating_unit.att_conv1.weight"] == (48, 1, 5, 5, 5)
    assert not any("channel_proj" in k or "conv_atten" in k for k in v1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dim": 7, "version": 2}, "even"),
        ({"dim": 8, "version": 3}, "version"),
        ({"dim": 0}, "positive"),
        ({"dim": 8, "spatial_dims": 4}, "spatial_dims"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DLKLayer(**kwargs)
