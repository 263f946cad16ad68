"""DLK layer / module / block: shapes, the paper's maths against a literal reference, fast = reference, arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusionseg.kernels import reference_ops_default, set_reference_ops
from fusionseg.layers import to_channels_last
from fusionseg.nets.dlk import DLKBlock, DLKLayer, DLKMlp, DLKModule

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
    """The DLK layer (see :class:`DLKLayer`), written out step by step with functional ops on NC* tensors."""
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
def test_dlk_layer_matches_literal_reference(spatial_dims, version, size, fast):
    layer = set_reference_ops(_randomize(DLKLayer(8, spatial_dims, version)), not fast)
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
def test_block_fast_equals_reference_forward_and_backward(spatial_dims, version, size):
    block = _randomize(DLKBlock(8, spatial_dims, version))
    flags = [m.reference_ops for m in block.modules() if hasattr(m, "reference_ops")]
    assert flags == [reference_ops_default()] * 4 and not reference_ops_default()
    x = torch.randn(2, 8, *size)
    outs, grads = [], []
    for fast in (False, True):
        set_reference_ops(block, not fast)
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


@pytest.mark.parametrize("reference", [False, True])
def test_module_and_mlp_formulas(reference):
    module = set_reference_ops(_randomize(DLKModule(6, 2)).eval(), reference)
    mlp = set_reference_ops(_randomize(DLKMlp(6, 24, 2)).eval(), reference)
    x = torch.randn(1, 6, 8, 8)
    expected = _conv(module.spatial_gating_unit(F.gelu(_conv(x, module.proj_1))), module.proj_2) + x
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-6)
    hidden = F.gelu(_conv(_conv(x, mlp.fc1), mlp.dwconv, padding=1, groups=24))
    torch.testing.assert_close(mlp(x), _conv(hidden, mlp.fc2), rtol=1e-5, atol=1e-6)


def test_mlp_takes_the_slab_path_without_gradients(monkeypatch):
    import fusionseg.kernels.mlp as mlp_kernels

    monkeypatch.setattr(mlp_kernels, "SLAB_VOXELS", 20)  # 1-plane slabs at 4×5
    mlp = _randomize(DLKMlp(3, 12, spatial_dims=3))
    x = to_channels_last(torch.randn(2, 3, 7, 4, 5))
    with torch.no_grad():
        fast = mlp(x)
        assert fast.is_contiguous(memory_format=torch.channels_last_3d)
        reference = set_reference_ops(mlp)(x)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


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
