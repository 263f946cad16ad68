"""``fusionseg.plug.plug_fusion`` on MONAI BasicUNet / DynUNet / SwinUNETR and nnU-Net PlainConvUNet /
ResidualEncoderUNet, 2D and 3D, with every fusion: shapes, gradients, parity with the original network,
state_dict round trip, levels, width mismatches, errors, TorchScript/ONNX export and DDP."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from extras import NEEDS_DNA, require
from fusionseg.fusion import DFF, TIF
from fusionseg.plug import describe_plug, plug_fusion

monai_nets = pytest.importorskip("monai.networks.nets")


def _dna_unet():
    """dynamic-network-architectures' ``unet`` module; the test skips (naming the extra) without it."""
    return require("dynamic_network_architectures.architectures.unet", NEEDS_DNA)


pytestmark = pytest.mark.usefixtures("one_thread")

FUSIONS = ("concat", "add", "dff", "tif")
DIMS = (2, 3)


def _conv(d):
    return nn.Conv2d if d == 2 else nn.Conv3d


def _inorm(d):
    return nn.InstanceNorm2d if d == 2 else nn.InstanceNorm3d


def basicunet(d, features=(8, 8, 16, 32, 64, 8), **kw):
    return monai_nets.BasicUNet(spatial_dims=d, in_channels=1, out_channels=2, features=features, **kw)


def dynunet(d, **kw):
    return monai_nets.DynUNet(d, 1, 2, [3] * 4, [1, 2, 2, 2], [2, 2, 2], filters=[4, 8, 8, 16], **kw)


def swinunetr(d):  # batch norm: the 32-voxel inputs leave one voxel at the bottleneck
    return monai_nets.SwinUNETR(
        1, 2, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), spatial_dims=d, norm_name="batch"
    )


def plain(d, **kw):
    return _dna_unet().PlainConvUNet(
        1, 4, [4, 8, 8, 16], _conv(d), 3, [1, 2, 2, 2], 1, 2, 1, True, _inorm(d), {"affine": True},
        nonlin=nn.LeakyReLU, **kw,
    )  # fmt: skip


def resenc(d, **kw):
    return _dna_unet().ResidualEncoderUNet(
        1, 4, [4, 8, 8, 16], _conv(d), 3, [1, 2, 2, 2], [1, 1, 1, 1], 2, 1, True, _inorm(d), {"affine": True},
        nonlin=nn.LeakyReLU, **kw,
    )  # fmt: skip


# name → (builder(spatial_dims), input size, number of skips)
NETWORKS = {
    "BasicUNet": (basicunet, 32, 4),
    "DynUNet": (dynunet, 16, 3),
    "SwinUNETR": (swinunetr, 32, 5),
    "PlainConvUNet": (plain, 16, 3),
    "ResidualEncoderUNet": (resenc, 16, 3),
}
CASES = [(n, d) for n in NETWORKS for d in DIMS]


def _build(name: str, d: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return NETWORKS[name][0](d)


def _input(name: str, d: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, *[NETWORKS[name][1]] * d, generator=g)


def _fused_modules(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, DFF | TIF)]


# ------------------------------------------------------------------------------------------ every network × fusion


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize(("name", "dims"), CASES)
def test_forward_backward_reaches_every_fusion_parameter(name, dims, fusion):
    net = plug_fusion(_build(name, dims), fusion)
    x = _input(name, dims)
    out = net(x)
    assert out.shape == (2, 2, *x.shape[2:])
    out.square().mean().backward()
    record = net.fusion_plug
    skips = NETWORKS[name][2]
    expected_levels = {"concat": tuple(range(skips)), "tif": (skips - 1,)}.get(fusion, tuple(range(skips)))
    assert record.levels == expected_levels and record.num_sites == skips
    fusion_params = [(n, p) for n, p in net.named_parameters() if ".fusion." in n or n.startswith("fusion.")]
    if fusion in ("dff", "tif"):
        assert len(_fused_modules(net)) == len(expected_levels)
        assert sum(p.numel() for _, p in fusion_params) == sum(c.fusion_params for c in record.changes) > 0
    else:
        assert fusion_params == []
    for n, p in fusion_params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert all("seg_layers" in n for n in unused)  # all connected but nnU-Net's idle deep-supervision heads


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_concat_leaves_the_network_bit_identical(name, dims):
    reference, net = _build(name, dims), _build(name, dims)
    keys = list(net.state_dict())
    assert plug_fusion(net, "concat") is net
    assert list(net.state_dict()) == keys and net.fusion_plug.params_before == net.fusion_plug.params_after
    x = _input(name, dims)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), reference.eval()(x))
    assert "network unchanged" in describe_plug(net)


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_add_equals_the_original_with_duplicated_reader_weights(name, dims):
    """``conv(up + skip)`` with W equals ``conv(cat(up, skip))`` with [W, W]: the plugged forward is exactly the
    original one with the concatenation replaced (every block, the residual shortcut, pads, stage order)."""
    original = _build(name, dims).double().eval()
    plugged = plug_fusion(copy.deepcopy(original), "add")
    assert not any(c.upsampler for c in plugged.fusion_plug.changes)  # widths match in these configurations
    state = {}
    for key, value in plugged.state_dict().items():
        target = original.state_dict()[key]
        if value.shape != target.shape:  # a reader conv: C inputs now, 2C before
            assert target.shape[1] == 2 * value.shape[1], key
            value = torch.cat([value, value], 1)
        state[key] = value
    original.load_state_dict(state)
    x = _input(name, dims).double()
    with torch.no_grad():
        torch.testing.assert_close(plugged(x), original(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fusion", ["dff", "tif"])
@pytest.mark.parametrize(("name", "dims"), CASES)
def test_state_dict_round_trip_and_untouched_keys(name, dims, fusion):
    net = _build(name, dims)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    deepest_two = [NETWORKS[name][2] - 2, NETWORKS[name][2] - 1]  # TIF is O(N²) in the voxels of a skip
    plug_fusion(net, fusion, levels=deepest_two)
    after = net.state_dict()
    assert set(before) <= set(after)  # every key kept (readers keep their names with C instead of 2C inputs)
    rebuilt = {k.removesuffix(".weight") for k in before if after[k].shape != before[k].shape}  # the reader convs
    assert rebuilt and {c.name for c in net.fusion_plug.changes} <= {r.split(".conv")[0] for r in rebuilt}
    for key in (k for k in before if k.rsplit(".", 1)[0] not in rebuilt):
        assert torch.equal(after[key], before[key]), key
    new = set(after) - set(before)
    assert new and all(".fusion." in k for k in new)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = plug_fusion(_build(name, dims, seed=7), fusion, levels=deepest_two)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = _input(name, dims)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), net.eval()(x))


# ------------------------------------------------------------------------------------------ levels, widths, reports


def test_levels_choose_the_fused_blocks():
    net = plug_fusion(basicunet(2), "dff", levels=[0, 2])
    assert [type(getattr(net, f"upcat_{k}")).__name__ for k in (1, 2, 3, 4)] == ["FusedUpCat", "UpCat"] * 2
    assert [c.name for c in net.fusion_plug.changes] == ["upcat_1", "upcat_3"]
    assert net.upcat_1.fusion.dim == 8 and net.upcat_3.fusion.dim == 16
    dyn = plug_fusion(dynunet(2), "dff", levels=[2])
    assert type(dyn.upsamples[0]).__name__ == "FusedUnetUpBlock" and type(dyn.upsamples[2]).__name__ == "UnetUpBlock"
    assert dyn.skip_layers.next_layer.next_layer.upsample is dyn.upsamples[0]  # DynUNet's shared references
    dec = plug_fusion(plain(3), "tif").decoder  # TIF: deepest skip only = decoder stage 0
    assert list(dec.fusion) == ["0"] and dec.fusion["0"].dim_l == 8


MISMATCHED = (8, 16, 32, 64, 64, 8)  # BasicUNet widths whose top and deepest skips differ from the upsampled widths


@pytest.mark.parametrize("dims", DIMS)
def test_mismatched_widths_rebuild_the_upsampler_like_dnet(dims):
    """BasicUNet's top UpCat upsamples features[1] = 16 channels without halving onto a features[0] = 8 skip;
    its deepest one halves 64 to 32 for a 64-channel skip."""
    torch.manual_seed(0)
    net = basicunet(dims, features=MISMATCHED)
    plug_fusion(net, "dff")
    changes = {c.name: c for c in net.fusion_plug.changes}
    conv_t = f"ConvTranspose{dims}d"
    assert changes["upcat_1"].upsampler == f"{conv_t} 16→8"
    assert changes["upcat_4"].upsampler == f"{conv_t} 32→64"
    assert changes["upcat_2"].upsampler == "" and changes["upcat_3"].upsampler == ""
    assert net.upcat_1.upsample.deconv.out_channels == 8 and net.upcat_1.fusion.dim == 8
    k = 2**dims
    assert changes["upcat_1"].upsampler_params_delta == (16 * 8 * k + 8) - (16 * 16 * k + 16)
    record = net.fusion_plug
    total = sum(c.fusion_params + c.reader_params_delta + c.upsampler_params_delta for c in record.changes)
    assert record.params_after - record.params_before == total
    assert net(torch.randn(1, 1, *[32] * dims)).shape == (1, 2, *[32] * dims)
    text = describe_plug(net)
    assert f"| upcat_1 | 0 | 8 | {6 * 64 + 2 * 8 + 2} |" in text and f"{conv_t} 16→8" in text


def test_pixelshuffle_upsampler_is_rebuilt_with_its_factor():
    net = plug_fusion(basicunet(2, features=MISMATCHED, upsample="pixelshuffle"), "add", levels=[0])
    conv = net.upcat_1.upsample.pixelshuffle.conv_block
    assert conv.out_channels == 8 * 4 and net(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_impossible_widths_raise_one_line_naming_block_widths_and_fix():
    net = basicunet(2, features=MISMATCHED, upsample="nontrainable")
    with pytest.raises(ValueError, match=r"^upcat_1: upsampled width 16 != skip width 8 .*levels without 0$") as err:
        plug_fusion(net, "dff")
    assert "\n" not in str(err.value)
    plugged = plug_fusion(basicunet(2, features=MISMATCHED, upsample="nontrainable"), "dff", [1, 2, 3])
    assert plugged(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)


# ------------------------------------------------------------------------------------------ errors


def test_clear_errors():
    from fusionseg.nets.unet import FusionUNet

    with pytest.raises(ValueError, match=r"does not support FusionUNet; supported networks: MONAI BasicUNet"):
        plug_fusion(FusionUNet(1, 2), "dff")
    with pytest.raises(ValueError, match="does not support Conv2d"):
        plug_fusion(nn.Conv2d(1, 1, 1), "dff")
    with pytest.raises(ValueError, match="unknown fusion 'dfff'; choose one of add, concat, dff, tif"):
        plug_fusion(basicunet(2), "dfff")
    for levels in ([4], [-1], [0, 7], [True], 0, "0"):
        with pytest.raises(ValueError, match="levels"):
            plug_fusion(basicunet(2), "dff", levels=levels)
    with pytest.raises(ValueError, match=r"skip levels \[0, 1, 2, 3\]"):
        plug_fusion(basicunet(2), "dff", levels=[4])
    net = plug_fusion(basicunet(2), "dff")
    with pytest.raises(ValueError, match="already plugged"):
        plug_fusion(net, "tif")
    with pytest.raises(ValueError, match="2D and 3D"):
        plug_fusion(monai_nets.BasicUNet(spatial_dims=1, features=(4, 4, 8, 8, 16, 4)), "dff")
    with pytest.raises(ValueError, match="was not plugged"):
        describe_plug(basicunet(2))


def test_unsupported_nnunet_network_is_named():
    res = _dna_unet().ResidualUNet(1, 3, [4, 8, 8], nn.Conv2d, 3, [1, 2, 2], 1, 2, 1, True, nn.InstanceNorm2d)
    with pytest.raises(ValueError, match="does not support ResidualUNet"):
        plug_fusion(res, "dff")


# ------------------------------------------------------------------------------------------ deep supervision


def test_deep_supervision_outputs_are_kept():
    dyn = plug_fusion(dynunet(3, deep_supervision=True, deep_supr_num=2), "dff").train()
    assert dyn(torch.randn(2, 1, 16, 16, 16)).shape == (2, 3, 2, 16, 16, 16)  # MONAI's stacked heads


def test_nnunet_deep_supervision_outputs_are_kept():
    net = plug_fusion(plain(2, deep_supervision=True), "dff", levels=[0, 2])
    outs = net(torch.randn(2, 1, 16, 16))
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 16), (8, 8), (4, 4)]
    net.decoder.deep_supervision = False  # nnU-Net switches it off for inference
    assert net(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


# ------------------------------------------------------------------------------------------ export and DDP


@pytest.mark.parametrize(("name", "fusion"), [("BasicUNet", "dff"), ("DynUNet", "tif"), ("SwinUNETR", "dff"),
                                              ("PlainConvUNet", "dff"), ("ResidualEncoderUNet", "tif")])  # fmt: skip
def test_torchscript_export_reproduces_eager(name, fusion, tmp_path):
    from fusionseg.deploy.export import export_model

    net = plug_fusion(_build(name, 2), fusion).eval()
    info = export_model(net, _input(name, 2, batch=1), "torchscript", tmp_path / "net.pt")
    assert info["max_abs_diff"] <= 1e-4 and (tmp_path / "net.pt").stat().st_size > 0


@pytest.mark.parametrize(("name", "dims"), [("BasicUNet", 2), ("PlainConvUNet", 3)])
def test_onnx_export_reproduces_eager(name, dims, tmp_path):
    pytest.importorskip("onnxruntime")
    from fusionseg.deploy.export import export_model

    net = plug_fusion(_build(name, dims), "dff").eval()
    info = export_model(net, _input(name, dims, batch=1), "onnx", tmp_path / "net.onnx", onnx_exporter="legacy")
    assert info["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("name", ["BasicUNet", "PlainConvUNet"])
def test_ddp_round_trip(name, tmp_path):
    """One-process gloo group: DDP gradients equal the plain model's; ``module.`` state_dict loads back."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from fusionseg.runtime.distributed import unwrap_model

    net = plug_fusion(_build(name, 2), "dff")
    reference = copy.deepcopy(net)
    x = _input(name, 2)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(net)
        ddp(x).square().mean().backward()
        state = ddp.state_dict()
    finally:
        dist.destroy_process_group()
    reference(x).square().mean().backward()
    for (n, p), q in zip(unwrap_model(ddp).named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)
    assert all(k.startswith("module.") for k in state)
    fresh = plug_fusion(_build(name, 2, seed=3), "dff")
    fresh.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), net.eval()(x))
