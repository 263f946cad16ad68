"""D-Net v2 / v1: official sizes and names, shapes 2D/3D, deep supervision, fast = reference paths, bad input.

The shared network table (config round trip, gradients, input errors) is tests/nets/test_models.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fusionseg.kernels.mlp as mlp_kernels
import fusionseg.nets.dlk as dlk
from fusionseg.errors import InputError
from fusionseg.kernels import reference_ops, set_reference_ops
from fusionseg.nets import create_model
from fusionseg.nets.dnet import DNet, DNetV1, bf16_autocast

SPECS = Path(__file__).resolve().parents[2] / ".." / "shared" / "specs"
TINY = (8, 16, 32, 64, 128)

# Self-contained excerpt of the official key list (shared/specs/dnet_v2_state_dict.txt): key → shape, in 1, out 16.
V2_KEYS = {
    "encoder.downsample_layers.0.weight": (48, 1, 7, 7, 7),
    "encoder.downsample_layers.4.weight": (768, 384, 3, 3, 3),
    "encoder.norm_layers.4.bias": (768,),
    "encoder.saliency.channel_proj.weight": (48, 1, 3, 3, 3),
    "encoder.saliency.mlp.dwconv.weight": (192, 1, 3, 3, 3),
    "encoder.saliency.norm_layer.num_batches_tracked": (),
    "encoder.stages.4.1.attn.spatial_gating_unit.channel_proj.weight": (384, 768, 1, 1, 1),
    "decoder.upsample_layers.0.weight": (768, 384, 2, 2, 2),
    "decoder.steps.0.conv_atten.0.weight": (768, 768, 1, 1, 1),
    "decoder.steps.3.conv2.bias": (1,),
    "decoder.seg_layers.0.weight": (16, 384, 1, 1, 1),
    "decoder.seg_layers.3.weight": (16, 48, 1, 1, 1),
    "decoder.stem.weight": (48, 48, 2, 2, 2),
    "decoder.final_fusion.conv_redu.weight": (48, 96, 1, 1, 1),
    "decoder.final_layer.conv2.1.running_var": (48,),
    "decoder.output_layer.weight": (16, 48, 1, 1, 1),
    "decoder.stages.0.1.mlp.fc2.weight": (384, 1536, 1, 1, 1),
}
V1_KEYS = {
    "dnet_down.downsample_layers.1.weight": (96, 48, 2, 2, 2),
    "dnet_down.stages.0.0.attn.spatial_gating_unit.att_conv1.weight": (48, 1, 5, 5, 5),
    "bottleneck.downsample_layer.weight": (768, 384, 2, 2, 2),
    "bottleneck.upsample_layer.weight": (768, 384, 2, 2, 2),
    "bottleneck.stage.1.layer_scale": (768,),
    "dnet_up.steps.0.conv_atten.0.weight": (768, 768, 1, 1, 1),
    "dnet_up.upsample_layers.3.weight": (48, 48, 2, 2, 2),
    "dnet_up.norm_layers.3.weight": (48,),
    "saliency.conv1.0.weight": (48, 1, 3, 3, 3),
    "final_layer.conv2.1.num_batches_tracked": (),
    "dff.conv_redu.weight": (48, 96, 1, 1, 1),
    "output_layer.weight": (16, 48, 1, 1, 1),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _spec_shapes(name: str) -> dict[str, tuple[int, ...]]:
    path = SPECS / name
    if not path.exists():
        pytest.skip(f"{path} not present (shared specs folder missing)")
    shapes = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")
            shapes[key] = tuple(json.loads(shape))
    return shapes


def _random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Layer scale near 1 and non-trivial BatchNorm statistics, so every branch and the BN folding matter."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.uniform_(0.5, 1.0)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize("name,params", [("dnet", 39_279_174), ("dnet_v1", 29_957_318)])
def test_official_parameter_counts(name, params):
    model = create_model(name, in_channels=1, out_channels=16)
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("name,excerpt", [("dnet", V2_KEYS), ("dnet_v1", V1_KEYS)])
def test_official_names_self_contained(name, excerpt):
    ours = {k: tuple(v.shape) for k, v in create_model(name, in_channels=1, out_channels=16).state_dict().items()}
    assert {k: ours.get(k) for k in excerpt} == excerpt


@pytest.mark.parametrize("name,listing", [("dnet", "dnet_v2_state_dict.txt"), ("dnet_v1", "dnet_v1_state_dict.txt")])
def test_strict_load_of_official_key_listing(name, listing):
    shapes = _spec_shapes(listing)
    model = create_model(name, in_channels=1, out_channels=16)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    state = _random_state(shapes)
    assert not model.load_state_dict(state, strict=True).missing_keys
    torch.testing.assert_close(model.state_dict()["decoder.stem.weight" if name == "dnet" else "dff.conv1.weight"],
                               state["decoder.stem.weight" if name == "dnet" else "dff.conv1.weight"])  # fmt: skip


SHAPE_CASES = [
    ("dnet_small", 3, (32, 32, 32), True),
    ("dnet_small", 2, (64, 32), True),
    ("dnet_small", 2, (32, 32), False),
    ("dnet_v1", 3, (32, 32, 32), False),
    ("dnet_v1", 2, (64, 32), True),
]


@pytest.mark.parametrize("name,spatial_dims,size,deep", SHAPE_CASES)
def test_shapes_deep_supervision_order_and_backward(name, spatial_dims, size, deep):
    kwargs = {"dims": TINY} if name == "dnet_v1" else {}
    model = create_model(
        name, in_channels=2, out_channels=3, spatial_dims=spatial_dims, deep_supervision=deep, **kwargs
    )
    x = torch.randn(1, 2, *size, requires_grad=True)
    out = model(x)
    if deep:
        assert isinstance(out, tuple) and len(out) == 5
        assert [tuple(o.shape) for o in out] == [(1, 3, *(s // 2**i for s in size)) for i in range(5)]
        loss = sum(o.square().mean() for o in out)
    else:
        assert isinstance(out, torch.Tensor) and out.shape == (1, 3, *size)
        loss = out.square().mean()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for n, p in model.named_parameters() if "layer_scale" in n)
    model.eval()
    out_eval = model(x.detach())
    assert type(out_eval) is type(out)


@pytest.mark.parametrize("cls,spatial_dims", [(DNet, 3), (DNet, 2), (DNetV1, 3), (DNetV1, 2)])
def test_fast_path_equals_reference_path(cls, spatial_dims):
    size = (32, 32, 32) if spatial_dims == 3 else (64, 32)
    model = _randomize(cls(2, 3, dims=TINY, spatial_dims=spatial_dims, deep_supervision=True)).eval()
    x = torch.randn(2, 2, *size)
    with torch.no_grad():
        fast = model(x)
        set_reference_ops(model, True)
        plain = model(x)
    switched = [m for m in model.modules() if hasattr(m, "reference_ops")]
    assert len(switched) > 10 and all(m.reference_ops for m in switched)
    for f, p in zip(fast, plain):
        assert ((f - p).abs().max() / p.abs().max()).item() <= 1e-4
    assert fast[0].is_contiguous(memory_format=torch.channels_last_3d if spatial_dims == 3 else torch.channels_last)


@pytest.mark.parametrize("cls,spatial_dims", [(DNet, 3), (DNet, 2), (DNetV1, 3)])
def test_inference_slabs_equal_reference_path(monkeypatch, cls, spatial_dims):
    monkeypatch.setattr(mlp_kernels, "SLAB_VOXELS", 1)  # 1-plane MLP slabs, so that tiny inputs take the slab path
    taken = []
    in_slabs = dlk.mlp_in_slabs
    monkeypatch.setattr(dlk, "mlp_in_slabs", lambda *a, **k: taken.append(in_slabs(*a, **k)) or taken[-1])
    size = (32, 32, 32) if spatial_dims == 3 else (64, 32)
    model = _randomize(cls(2, 3, dims=(8, 8, 8, 8, 8), spatial_dims=spatial_dims)).eval()
    x = torch.randn(1, 2, *size)
    with torch.no_grad():
        fast = model(x)
        with reference_ops(model):
            plain = model(x)
    assert any(t is not None for t in taken)
    for f, p in zip(fast, plain):
        assert ((f - p).abs().max() / p.abs().max()).item() <= 1e-4


def test_fast_path_gradients_equal_reference_gradients():
    model = _randomize(DNet(1, 2, dims=TINY, spatial_dims=2)).train()
    x = torch.randn(2, 1, 32, 32)
    grads = []
    for fast in (True, False):
        set_reference_ops(model, not fast)
        model.zero_grad()
        sum(o.square().mean() for o in model(x)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-3, atol=1e-6, msg=n)


@pytest.mark.parametrize(
    "size,nearest", [((33, 64, 64), "(32, 64, 64)"), ((64, 64, 80), "(64, 64, 96)"), ((20, 64, 64), "(32, 64, 64)")]
)
def test_bad_sizes_name_the_nearest_valid_size(size, nearest):
    model = create_model("dnet_small", in_channels=1, out_channels=2)
    with pytest.raises(ValueError, match=r"multiple of 32") as err:
        model(torch.randn(1, 1, *size))
    assert nearest in str(err.value) and isinstance(err.value, InputError)


def test_bad_input_channels_and_rank():
    model = create_model("dnet_small", in_channels=1, out_channels=2)
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        model(torch.randn(1, 2, 32, 32, 32))
    with pytest.raises(ValueError, match="expects input"):
        model(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"dims": (16, 32, 64, 128)}, "dims must be 5"),
        ({"dims": (15, 32, 64, 128, 256)}, "even"),
        ({"depths": (2, 2, -1, 2, 2)}, "depths"),
        ({"out_channels": 0}, "out_channels"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DNet(**{"in_channels": 1, "out_channels": 2, **kwargs})


def test_registry_config_round_trip_and_size_multiple():
    model = create_model("dnet_small", in_channels=2, out_channels=4, spatial_dims=2, depths=(1, 1, 1, 1, 1))
    assert model.size_multiple == 32 and model.deep_supervision is True
    assert (model.in_channels, model.out_channels, model.spatial_dims) == (2, 4, 2)
    cfg = json.loads(json.dumps(model.config))
    assert cfg == {
        "name": "dnet_small",
        "kwargs": {"in_channels": 2, "out_channels": 4, "spatial_dims": 2, "depths": [1, 1, 1, 1, 1]},
    }
    clone = create_model(cfg["name"], **cfg["kwargs"])
    clone.load_state_dict(model.state_dict(), strict=True)
    assert clone.dims == (16, 32, 64, 128, 256)
    assert create_model("dnet_v1", out_channels=2).deep_supervision is False
    assert create_model("dnet").config == {"name": "dnet", "kwargs": {}}


def test_drop_path_rates_rise_linearly():
    model = DNet(1, 2, dims=TINY, drop_path_rate=0.2, spatial_dims=2)
    enc = [b.drop_path.drop_prob for s in model.encoder.stages for b in s]
    assert enc[0] == 0.0 and enc[-1] == pytest.approx(0.2) and enc == sorted(enc)
    assert model.decoder.stages[0][0].drop_path.drop_prob == pytest.approx(enc[7])


@pytest.mark.parametrize("slabs", [False, True])
def test_bf16_autocast_runs_and_mostly_agrees(monkeypatch, slabs):
    if slabs:  # the inference MLP slab path under autocast: bf16 slab buffers, fp32 residuals
        monkeypatch.setattr(mlp_kernels, "SLAB_VOXELS", 1)
    model = _randomize(DNet(1, 3, dims=TINY, spatial_dims=2, deep_supervision=False)).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        ref = model(x)
        with bf16_autocast("cpu"):
            low = model(x)
    assert low.dtype == torch.bfloat16
    assert (low.float().argmax(1) == ref.argmax(1)).float().mean() > 0.9


def test_deprecated_channels_last_switch_still_works():
    with pytest.warns(DeprecationWarning, match="set_reference_ops"):
        model = DNet(1, 2, dims=TINY, spatial_dims=2, channels_last=False)
    assert all(m.reference_ops for m in model.modules() if hasattr(m, "reference_ops"))
    with pytest.warns(DeprecationWarning):
        assert model.channels_last is False
    with pytest.warns(DeprecationWarning):
        model.channels_last = True
    assert not any(m.reference_ops for m in model.modules() if hasattr(m, "reference_ops"))


def test_renamed_conv_block_keeps_official_keys():
    from fusionseg.nets.dnet import DNetConvBlock

    model = DNetV1(1, 2, dims=TINY, spatial_dims=2)
    assert isinstance(model.final_layer, DNetConvBlock) and isinstance(model.saliency, DNetConvBlock)
    assert {"saliency.conv1.0.weight", "final_layer.conv2.1.running_var"} <= set(model.state_dict())
