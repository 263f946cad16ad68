"""Adapters: nnU-Net's ``decoder.deep_supervision`` switch on D-Net / DS-TransUNet, outputs, state_dict names."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (install it as docs/nnunet.md says)")

from fusionseg.nets import create_model
from fusionseg.nnunet.adapters import (
    DNetForNnUNet,
    DSTransUNetForNnUNet,
    adapt_for_nnunet,
    build_fusionseg_network,
    deep_supervision_scales,
)

CASES = [  # name, spatial dims, input size, number of deep-supervision outputs
    ("dnet_small", 3, (32, 32, 32), 5),
    ("dnet_small", 2, (64, 32), 5),
    ("ds_transunet_small", 2, (64, 64), 3),
]


@pytest.mark.parametrize(("name", "dims", "size", "outputs"), CASES)
def test_outputs_follow_decoder_switch_full_resolution_first(name, dims, size, outputs):
    net = build_fusionseg_network(name, in_channels=2, out_channels=3, spatial_dims=dims).eval()
    x = torch.randn(1, 2, *size)
    with torch.no_grad():
        out = net(x)
        scales = deep_supervision_scales(name, dims)
        assert isinstance(out, tuple) and len(out) == outputs == len(scales)
        # nnU-Net downsamples the target to round(size * scale) per output: the shapes must match
        assert [tuple(o.shape) for o in out] == [(1, 3, *(round(s * f) for s, f in zip(size, sc))) for sc in scales]
        net.decoder.deep_supervision = False  # what nnUNetTrainer.set_deep_supervision_enabled(False) does
        single = net(x)
        assert net.deep_supervision is False
        assert isinstance(single, torch.Tensor) and single.shape == (1, 3, *size)
        torch.testing.assert_close(single, out[0])  # the switch drops heads, it does not change the main output
        net.deep_supervision = True  # the network's own flag is the same switch
        assert net.decoder.deep_supervision is True and len(net(x)) == outputs


@pytest.mark.parametrize(("name", "dims", "size", "outputs"), CASES)
def test_state_dict_and_outputs_equal_fusionseg_model(name, dims, size, outputs):
    net = build_fusionseg_network(name, in_channels=1, out_channels=2, spatial_dims=dims, deep_supervision=False)
    assert net.config == {
        "name": name,
        "kwargs": {"in_channels": 1, "out_channels": 2, "spatial_dims": dims, "deep_supervision": False},
    }
    reference = create_model(name, **net.config["kwargs"])
    adapted, plain = net.state_dict(), reference.state_dict()
    assert list(adapted) == list(plain)
    assert all(adapted[k].shape == plain[k].shape for k in plain)
    reference.load_state_dict(adapted, strict=True)  # what fusionseg import-weights / predict rely on
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), reference.eval()(x))


def test_full_dnet_keeps_official_parameter_names():
    net = build_fusionseg_network("dnet", in_channels=1, out_channels=4, spatial_dims=3)
    reference = create_model("dnet", in_channels=1, out_channels=4)
    assert list(net.state_dict()) == list(reference.state_dict())
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in reference.parameters())


def test_backward_reaches_every_parameter_through_all_heads():
    net = build_fusionseg_network("dnet_small", in_channels=1, out_channels=2, spatial_dims=3)
    loss = sum(o.float().square().mean() for o in net(torch.randn(2, 1, 32, 32, 32)))
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


def test_adapters_are_subclasses_and_the_switch_has_no_parameters():
    dnet = build_fusionseg_network("dnet_small", 1, 2, 3)
    dstu = build_fusionseg_network("ds_transunet_small", 1, 2, 2)
    assert isinstance(dnet, DNetForNnUNet) and isinstance(dstu, DSTransUNetForNnUNet)
    assert list(dstu.decoder.parameters()) == [] and list(dstu.decoder.buffers()) == []
    # direct construction works as well as the class swap
    direct = DNetForNnUNet(1, 2, dims=(8, 16, 32, 64, 128), deep_supervision=False)
    assert direct.decoder.deep_supervision is False and "_initial_deep_supervision" not in direct.__dict__


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="no nnU-Net adapter for 'unet'"):
        build_fusionseg_network("unet", 1, 2, 3)
    with pytest.raises(ValueError, match="no nnU-Net adapter for FusionUNet; adapt one of DNet, DSTransUNet"):
        adapt_for_nnunet(create_model("unet", in_channels=1, out_channels=2, spatial_dims=2))
