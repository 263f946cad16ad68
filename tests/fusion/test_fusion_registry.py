"""Baseline fusions (concat, add) and the fusion registry: every entry in 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from fusionseg.fusion import DFF, TIF, AddFusion, ConcatFusion, create_fusion, list_fusions, register_fusion
from fusionseg.fusion import registry as registry_module

SHAPES = {2: (2, 8, 6, 5), 3: (1, 8, 4, 3, 5)}


def test_list_fusions():
    assert list_fusions() == ["add", "concat", "dff", "tif"]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize(
    ("name", "cls"), [("dff", DFF), ("tif", TIF), ("concat", ConcatFusion), ("add", AddFusion), ("DFF", DFF)]
)
def test_create_fusion_forward_backward(name, cls, spatial_dims):
    fusion = create_fusion(name, 8, spatial_dims=spatial_dims)
    assert isinstance(fusion, cls) and fusion.spatial_dims == spatial_dims
    x = torch.randn(SHAPES[spatial_dims], requires_grad=True)
    skip = torch.randn(SHAPES[spatial_dims], requires_grad=True)
    out = fusion(x, skip)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad.abs().sum() > 0 and skip.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fusion.parameters())


def test_concat_is_a_projection_of_both_inputs():
    fusion = ConcatFusion(4, spatial_dims=2)
    x, skip = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    w, b = fusion.proj.weight.flatten(1), fusion.proj.bias
    expected = torch.einsum("oc,bchw->bohw", w[:, :4], x) + torch.einsum("oc,bchw->bohw", w[:, 4:], skip)
    torch.testing.assert_close(fusion(x, skip), expected + b[:, None, None], atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in fusion.parameters()) == 2 * 4 * 4 + 4


def test_add_fusion():
    x, skip = torch.randn(SHAPES[3]), torch.randn(SHAPES[3])
    torch.testing.assert_close(AddFusion(8, 3)(x, skip), x + skip, atol=0, rtol=0)
    assert not list(AddFusion(8, 3).parameters())


@pytest.mark.parametrize("name", ["concat", "add"])
def test_state_dict_round_trip(name):
    a, b = create_fusion(name, 8, 2), create_fusion(name, 8, 2)
    b.load_state_dict(a.state_dict(), strict=True)
    x, skip = torch.randn(SHAPES[2]), torch.randn(SHAPES[2])
    torch.testing.assert_close(a(x, skip), b(x, skip), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["concat", "add", "dff", "tif"])
def test_mismatched_inputs_name_both_shapes(name):
    fusion = create_fusion(name, 8, spatial_dims=2)
    with pytest.raises(ValueError) as info:
        fusion(torch.randn(1, 8, 6, 6), torch.randn(1, 4, 6, 6))
    assert "(1, 8, 6, 6)" in str(info.value) and "(1, 4, 6, 6)" in str(info.value)


@pytest.mark.parametrize("cls", [ConcatFusion, AddFusion])
def test_bad_constructor_arguments(cls):
    with pytest.raises(ValueError, match="dim must be a positive int"):
        cls(0)
    with pytest.raises(ValueError, match="spatial_dims must be one of"):
        cls(8, spatial_dims=5)


def test_unknown_and_duplicate_names(monkeypatch):
    with pytest.raises(ValueError, match="unknown fusion 'nope'; choose one of add, concat, dff, tif"):
        create_fusion("nope", 8)
    with pytest.raises(ValueError, match="already registered"):
        register_fusion("dff", DFF)
    monkeypatch.setattr(registry_module, "_FUSIONS", dict(registry_module._FUSIONS))
    register_fusion("mine", lambda dim, spatial_dims=3: AddFusion(dim, spatial_dims))
    assert "mine" in list_fusions()
    assert isinstance(create_fusion("Mine", 4, 2), AddFusion)


def test_default_levels_come_from_the_fusion_class(monkeypatch):
    assert registry_module.default_fusion_levels("tif", [2, 0, 1]) == (2,)  # TIF.default_skip_levels = "deepest"
    assert registry_module.default_fusion_levels("DFF", [2, 0, 1]) == (0, 1, 2)
    monkeypatch.setattr(registry_module, "_FUSIONS", dict(registry_module._FUSIONS))

    class Costly(AddFusion):
        default_skip_levels = "deepest"

    register_fusion("costly", Costly)
    register_fusion("plain", lambda dim, spatial_dims=3: AddFusion(dim, spatial_dims))
    assert registry_module.default_fusion_levels("costly", range(4)) == (3,)
    assert registry_module.default_fusion_levels("plain", range(4)) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="unknown fusion"):
        registry_module.default_fusion_levels("nope", [0])
