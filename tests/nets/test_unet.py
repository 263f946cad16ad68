"""Fusion U-Net ("unet"): 2D/3D × fusions, forward/backward, deep supervision, state_dict, config, bad args."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusionseg.errors import InputError
from fusionseg.fusion import TIF, ConcatFusion
from fusionseg.layers import to_channels_last
from fusionseg.nets import create_model

FEATURES = (4, 8, 16)
SIZES = {2: (16, 24), 3: (8, 12, 8)}
CASES = [(dims, fusion) for dims in (2, 3) for fusion in ("concat", "add", "dff", "tif")]


def _model(dims, fusion, **kw):
    kw = {"in_channels": 2, "out_channels": 3, "spatial_dims": dims, "features": FEATURES, "fusion": fusion} | kw
    return create_model("unet", **kw)


@pytest.mark.parametrize(("dims", "fusion"), CASES)
def test_forward_backward(dims, fusion):
    net = _model(dims, fusion)
    x = torch.randn(2, 2, *SIZES[dims])
    y = net(x)
    assert y.shape == (2, 3, *SIZES[dims]) and torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert net.size_multiple == 4


@pytest.mark.parametrize(("dims", "fusion"), CASES)
def test_state_dict_roundtrip_and_config(dims, fusion):
    net = _model(dims, fusion, deep_supervision=True).eval()
    cfg = net.config
    assert cfg["name"] == "unet" and cfg["kwargs"]["fusion"] == fusion and cfg["kwargs"]["features"] == list(FEATURES)
    clone = create_model(cfg["name"], **cfg["kwargs"]).eval()
    clone.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(1, 2, *SIZES[dims])
    for a, b in zip(net(x), clone(x)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dims", [2, 3])
def test_deep_supervision_outputs_full_resolution_first(dims):
    net = _model(dims, "dff", deep_supervision=True)
    outs = net(torch.randn(1, 2, *SIZES[dims]))
    assert isinstance(outs, tuple) and len(outs) == 2
    assert outs[0].shape[2:] == SIZES[dims] and outs[1].shape[2:] == tuple(s // 2 for s in SIZES[dims])
    net.eval()
    assert isinstance(net(torch.randn(1, 2, *SIZES[dims])), tuple)  # same in eval mode


def test_fusion_levels_choose_modules():
    net = _model(2, "tif")
    assert isinstance(net.fusions[1], TIF) and isinstance(net.fusions[0], ConcatFusion)  # default: deepest only
    assert net.fusion_levels == (1,) and "fusion_levels" not in net.config["kwargs"]  # config: the kwargs given
    everywhere = _model(2, "tif", fusion_levels=(0, 1))
    assert all(isinstance(f, TIF) for f in everywhere.fusions)
    dff = _model(2, "dff", fusion_levels=[0])
    assert type(dff.fusions[0]).__name__ == "DFF" and isinstance(dff.fusions[1], ConcatFusion)


def test_concat_parity_with_plain_unet():
    """fusion="concat" equals a plain U-Net written with explicit cat(up, skip) → 1×1 conv → block."""
    net = _model(2, "concat", features=(4, 8)).eval()
    x = torch.randn(2, 2, 8, 12)
    s0 = net.encoder[0](x)
    s1 = net.encoder[1](s0)
    up = net.upsample[0](s1)
    proj = net.fusions[0].proj
    fused = F.conv2d(torch.cat([up, s0], 1), proj.weight, proj.bias)
    ref = net.heads[0](net.decoder[0](fused))
    torch.testing.assert_close(net(x), ref)


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_input_matches(dims):
    net = _model(dims, "dff").eval()
    x = torch.randn(2, 2, *SIZES[dims])
    torch.testing.assert_close(net(to_channels_last(x)), net(x), atol=1e-5, rtol=1e-4)


def test_batch_norm_variant():
    net = _model(3, "add", norm="batch")
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    assert net(torch.randn(2, 2, *SIZES[3])).shape == (2, 3, *SIZES[3])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spatial_dims": 1}, "spatial_dims must be one of"),
        ({"fusion": "sum"}, "unknown fusion 'sum'"),
        ({"features": (8,)}, "features must be >= 2 positive ints"),
        ({"features": (8, 0)}, "features must be >= 2 positive ints"),
        ({"fusion_levels": (2,)}, r"fusion_levels must be levels in 0\.\.1"),
        ({"norm": "group"}, 'norm must be "instance" or "batch"'),
        ({"in_channels": 0}, "in_channels must be a positive int"),
        ({"out_channels": 1.5}, "out_channels must be a positive int"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _model(kwargs.pop("spatial_dims", 2), kwargs.pop("fusion", "concat"), **kwargs)


def test_bad_inputs_name_the_fix():
    net = _model(2, "concat")
    with pytest.raises(InputError, match=r"multiple of 4; got \(18, 24\), nearest valid size \(20, 24\)"):
        net(torch.randn(1, 2, 18, 24))
    with pytest.raises(InputError, match=r"expects input \(B, 2, H, W\) for in_channels=2, spatial_dims=2"):
        net(torch.randn(1, 3, 16, 16))


def test_defaults_are_3d_and_the_block_has_its_own_name():
    from fusionseg.nets.unet import FusionUNet, UNetConvBlock

    net = create_model("unet", features=(4, 8))
    assert (net.in_channels, net.out_channels, net.spatial_dims) == (1, 2, 3)
    assert isinstance(net, FusionUNet) and all(isinstance(b, UNetConvBlock) for b in net.encoder)
    assert net.config == {"name": "unet", "kwargs": {"features": [4, 8]}}
