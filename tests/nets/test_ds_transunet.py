"""DS-TransUNet: official layout/size, small preset in 2D and 3D, inputs, attention parity, Swin weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fusionseg.errors import InputError
from fusionseg.kernels import set_reference_ops
from fusionseg.nets import create_model, list_models
from fusionseg.nets.ds_transunet import DSTransUNet, GroupNormConvBlock, crop_to, pad_to_multiple, set_attention_impl
from fusionseg.nets.swin import SwinEncoder, relative_position_index
from fusionseg.nets.swin_pretrained import load_swin_pretrained

SPEC = Path(__file__).resolve().parents[3] / "shared" / "specs" / "ds_transunet_state_dict.txt"

# A tiny configuration of the small preset for fast tests (64² is the smallest valid input).
TINY = dict(
    dim=16,
    embed_dim2=8,
    depths=(1, 1, 1, 1),
    num_heads=(1, 1, 2, 2),
    depths2=(1, 1, 1, 1),
    num_heads2=(1, 1, 1, 1),
    decoder_heads=(2, 1, 1),
    window_size=4,
    tif=dict(heads_s=2, dim_head_s=8, mlp_s=16, heads_l=1, dim_head_l=8, mlp_l=16),
)


def read_spec() -> dict[str, tuple[int, ...]]:
    if not SPEC.exists():
        pytest.skip(f"{SPEC} not available")
    out = {}
    for line in SPEC.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        out[key] = tuple(json.loads(shape))
    return out


@pytest.fixture
def official():
    """The official preset built on the meta device: shapes and names only (no 171 M-parameter init)."""
    with torch.device("meta"):
        return create_model("ds_transunet", out_channels=1)


def test_official_parameter_count_and_names(official):
    assert sum(p.numel() for p in official.parameters()) == 171_441_329
    spec = read_spec()
    ours = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    assert ours == spec
    assert official.size_multiple == 64
    assert official.config == {"name": "ds_transunet", "kwargs": {"out_channels": 1}}  # the kwargs given
    assert (official.in_channels, official.out_channels, official.spatial_dims) == (3, 1, 2)  # 2D: the paper's
    assert isinstance(official.change1, GroupNormConvBlock) and isinstance(official.down2, GroupNormConvBlock)


def test_official_state_dict_from_spec_loads_strictly(official):
    spec = read_spec()
    state = {}
    for i, (key, shape) in enumerate(spec.items()):
        if key.endswith("relative_position_index"):
            state[key] = relative_position_index((7, 7))
        else:
            state[key] = torch.full(shape, float(i % 7) / 7)  # distinct per tensor
    result = official.load_state_dict(state, strict=True, assign=True)  # strict key and shape checks
    assert not result.missing_keys and not result.unexpected_keys
    assert official.cross_att_3.linear_l.weight[0, 0].item() == pytest.approx(
        state["cross_att_3.linear_l.weight"][0, 0]
    )
    assert torch.equal(
        official.encoder.layers[2].blocks[17].mlp.fc2.bias, state["encoder.layers.2.blocks.17.mlp.fc2.bias"]
    )


@pytest.mark.parametrize(
    "spatial_dims,size,in_ch,out_ch",
    [(2, (64, 128), 3, 2), (2, (64, 64), 1, 1), pytest.param(3, (64, 64, 64), 1, 3, marks=pytest.mark.slow)],
)
def test_small_preset_shapes_and_backward(spatial_dims, size, in_ch, out_ch):
    torch.manual_seed(0)
    kw = dict(TINY, window_size=7) if size == (64, 128) else TINY  # window 7 pads every stage
    net = create_model("ds_transunet_small", in_channels=in_ch, out_channels=out_ch, spatial_dims=spatial_dims, **kw)
    x = torch.randn(1, in_ch, *size)
    outs = net(x)
    assert isinstance(outs, tuple) and len(outs) == 3
    assert all(o.shape == (1, out_ch, *size) for o in outs)
    assert (outs[1] >= 0).all() and (outs[2] >= 0).all()  # the original's ReLU on the auxiliary heads
    (outs[0].mean() + 0.5 * outs[1].mean() + 0.5 * outs[2].mean()).backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["encoder2.patch_embed.proj.weight"].abs().sum() > 0
    assert grads["cross_att_1.transformer_l.layers.0.0.fn.to_qkv.weight"].abs().sum() > 0


def test_small_preset_3d_forward():
    torch.manual_seed(0)
    net = create_model("ds_transunet_small", in_channels=2, out_channels=3, spatial_dims=3, **TINY).eval()
    with torch.no_grad():
        outs = net(torch.randn(1, 2, 64, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 3, 64, 64, 64)] * 3
    assert net.encoder2.patch_embed.proj.weight.shape == (8, 2, 8, 8, 8)  # 3D patch embedding
    assert net.encoder.layers[0].blocks[0].attn.relative_position_bias_table.shape == (7**3, 1)  # 3D windows
    assert all(torch.isfinite(o).all() for o in outs)


def test_single_output_without_deep_supervision_and_aux_relu_switch():
    torch.manual_seed(0)
    net = create_model("ds_transunet_small", deep_supervision=False, **TINY).eval()
    y = net(torch.randn(2, 3, 64, 64))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 1, 64, 64)
    free = create_model("ds_transunet_small", aux_relu=False, **TINY).eval()
    with torch.no_grad():
        free.loss1[0].bias.fill_(-5.0)
        _, aux1, _ = free(torch.randn(1, 3, 64, 64))
    assert (aux1 < 0).any()


def test_sdpa_equals_explicit_attention():
    torch.manual_seed(0)
    net = create_model("ds_transunet_small", **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    ref = net(x)
    g_ref = torch.autograd.grad(ref[0].square().mean(), net.cross_att_1.transformer_l.layers[0][0].fn.to_qkv.weight)
    set_reference_ops(net, True)
    assert net.encoder.layers[0].blocks[0].attn.reference_ops
    assert net.cross_att_4.transformer_s.layers[0][0].fn.reference_ops
    out = net(x)
    g_out = torch.autograd.grad(out[0].square().mean(), net.cross_att_1.transformer_l.layers[0][0].fn.to_qkv.weight)
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_ref[0], g_out[0], atol=1e-6, rtol=1e-4)
    assert set(net.state_dict()) == set(create_model("ds_transunet_small", **TINY).state_dict())
    set_reference_ops(net, False)
    torch.testing.assert_close(net(x)[0], ref[0])


def test_deprecated_attention_impl_maps_to_the_switch():
    with pytest.warns(DeprecationWarning, match="set_reference_ops"):
        net = create_model("ds_transunet_small", attention_impl="explicit", **TINY)
    flags = [m.reference_ops for m in net.modules() if hasattr(m, "reference_ops")]
    # Swin blocks (2 encoders, 3 decoders), 4 TIFs × (the TIF, its 2 attentions)
    assert len(flags) == 4 + 4 + 3 * 2 + 4 * 3 and all(flags)
    with pytest.warns(DeprecationWarning):
        set_attention_impl(net, "sdpa")
    assert not any(m.reference_ops for m in net.modules() if hasattr(m, "reference_ops"))


def test_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    a = create_model("ds_transunet_small", drop_path_rate=0.0, drop_path_rate2=0.0, decoder_drop_path=0.0, **TINY)
    b = create_model("ds_transunet_small", drop_path_rate=0.0, drop_path_rate2=0.0, decoder_drop_path=0.0,
                     use_checkpoint=True, **TINY)  # fmt: skip
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    a(x)[0].sum().backward()
    b(x)[0].sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize(
    "shape,match",
    [((1, 3, 96, 64), r"nearest valid size \(128, 64\)"), ((1, 3, 64, 200), r"\(64, 192\)"),
     ((1, 1, 64, 64), "in_channels=3"), ((1, 3, 64), "expects input")],
)  # fmt: skip
def test_bad_input_sizes(shape, match):
    net = create_model("ds_transunet_small", **TINY)
    with pytest.raises(InputError, match=match):
        net(torch.randn(*shape))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(spatial_dims=1), "spatial_dims"),
        (dict(dim=30), "multiple of 4"),
        (dict(out_channels=0), "out_channels"),
        (dict(depths=(1, 1, 1)), "4 encoder stages"),
        (dict(decoder_heads=(3, 1, 1)), "decoder_heads"),
        (dict(attention_impl="math"), "attention_impl"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("ds_transunet_small", **{**TINY, **kwargs})


@pytest.mark.parametrize("size", [(100, 70), (64, 64), (1, 130)])
def test_pad_crop_round_trip(size):
    x = torch.randn(2, 3, *size)
    padded, info = pad_to_multiple(x, 64)
    assert all(s % 64 == 0 for s in padded.shape[2:]) and all(p - s < 64 for p, s in zip(padded.shape[2:], size))
    assert torch.equal(crop_to(padded, info), x)
    assert padded[..., size[0] :, :].abs().sum() == 0  # zero padding at the end
    vol, info3 = pad_to_multiple(torch.randn(1, 1, 5, 64, 65), 64)
    assert vol.shape == (1, 1, 64, 64, 128) and crop_to(vol, info3).shape == (1, 1, 5, 64, 65)


def test_padded_prediction_round_trip():
    net = create_model("ds_transunet_small", deep_supervision=False, **TINY).eval()
    x = torch.randn(1, 3, 50, 70)
    padded, info = pad_to_multiple(x, net.size_multiple)
    with torch.no_grad():
        y = crop_to(net(padded), info)
    assert y.shape == (1, 1, 50, 70)


def test_registry_config_and_state_dict_round_trip():
    assert {"ds_transunet", "ds_transunet_small"} <= set(list_models())
    torch.manual_seed(0)
    net = create_model("ds_transunet_small", in_channels=1, out_channels=2, **{**TINY, "window_size": (4, 4)}).eval()
    cfg = json.loads(json.dumps(net.config))
    assert cfg["name"] == "ds_transunet_small" and cfg["kwargs"]["out_channels"] == 2
    clone = create_model(cfg["name"], **cfg["kwargs"]).eval()
    clone.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x)[0], clone(x)[0])
    assert isinstance(net, DSTransUNet) and net.size_multiple == 64


# --- ImageNet Swin weights -------------------------------------------------------------------------


def synthetic_swin_checkpoint(path: Path, embed_dim=24, depths=(1, 1, 1, 1), heads=(1, 2, 4, 8), window=7):
    """A file in the official Swin classification layout: {"model": {...}} with head, norm, attn_mask."""
    torch.manual_seed(1)
    enc = SwinEncoder(3, embed_dim, depths, heads, patch_size=4, window_size=window, spatial_dims=2)
    state = {k: v for k, v in enc.state_dict().items() if not k.startswith("norm")}
    width = embed_dim * 2 ** (len(depths) - 1)
    state["norm.weight"], state["norm.bias"] = torch.rand(width), torch.rand(width)
    state["head.weight"], state["head.bias"] = torch.rand(1000, width), torch.rand(1000)
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    torch.save({"model": state}, path)
    return state


def test_pretrained_swin_loading_reports_everything(tmp_path):
    main_ckpt, second_ckpt = tmp_path / "swin_main.pth", tmp_path / "swin_second.pth"
    main_state = synthetic_swin_checkpoint(main_ckpt, embed_dim=16, heads=(1, 1, 2, 2), window=4)
    second_state = synthetic_swin_checkpoint(second_ckpt, embed_dim=8, heads=(1, 1, 1, 1), window=4)
    net = create_model("ds_transunet_small", **TINY)
    reports = net.load_pretrained_swin(main=main_ckpt, second=second_ckpt)
    main, second = reports["encoder"], reports["encoder2"]
    # main branch (patch 4, same widths): everything but the classifier parts loads as is
    assert torch.equal(net.encoder.patch_embed.proj.weight, main_state["patch_embed.proj.weight"])
    assert torch.equal(net.encoder.layers[2].blocks[0].attn.qkv.weight, main_state["layers.2.blocks.0.attn.qkv.weight"])
    assert not main.adapted and main.num_loaded == len(main.loaded) > 20
    classifier = {"norm.weight", "norm.bias", "head.weight", "head.bias", "layers.0.blocks.1.attn_mask"}
    assert set(main.skipped) == classifier | {k for k in main_state if k.endswith("position_index")}
    assert set(main.missing) == {f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")}
    # second branch (patch 8): the 4×4 kernel is resized to 8×8, everything else loads
    assert set(second.adapted) == {"patch_embed.proj.weight"} and "(4, 4) → (8, 8)" in str(second)
    assert torch.equal(
        net.encoder2.layers[3].blocks[0].mlp.fc1.weight, second_state["layers.3.blocks.0.mlp.fc1.weight"]
    )
    # a checkpoint of other widths: every mismatch is skipped with its reason and left at init
    wrong = load_swin_pretrained(net.encoder2, main_ckpt)
    assert any("does not fit" in why for why in wrong.skipped.values())
    assert "layers.0.blocks.0.attn.qkv.weight" in wrong.missing
    text = str(wrong)
    assert "skipped" in text and "left at init" in text and "does not fit" in text


def test_pretrained_patch8_resize_and_skip_modes(tmp_path):
    ckpt = tmp_path / "swin.pth"
    state = synthetic_swin_checkpoint(ckpt)
    enc = SwinEncoder(3, 24, (1, 1, 1, 1), (1, 2, 4, 8), patch_size=8, spatial_dims=2)
    before = enc.patch_embed.proj.weight.clone()
    report = load_swin_pretrained(enc, ckpt)
    w4, w8 = state["patch_embed.proj.weight"], enc.patch_embed.proj.weight
    torch.testing.assert_close(w8.sum((1, 2, 3)), w4.sum((1, 2, 3)), atol=1e-5, rtol=1e-4)  # same flat response
    assert report.num_loaded == len(report.loaded) + 1
    enc2 = SwinEncoder(3, 24, (1, 1, 1, 1), (1, 2, 4, 8), patch_size=8, spatial_dims=2)
    torch.manual_seed(0)
    report2 = load_swin_pretrained(enc2, state, patch_embed="skip")  # plain state_dict works too
    assert "patch_embed.proj.weight" in report2.skipped and "patch_embed.proj.weight" in report2.missing
    assert not torch.equal(enc2.patch_embed.proj.weight, w4.new_zeros(1)) and not torch.equal(before, w8)


def test_pretrained_adapts_channels_window_and_3d(tmp_path):
    state = synthetic_swin_checkpoint(tmp_path / "s.pth")
    enc = SwinEncoder(1, 24, (1, 1, 1, 1), (1, 2, 4, 8), patch_size=4, window_size=5, spatial_dims=2)
    report = load_swin_pretrained(enc, state)
    torch.testing.assert_close(enc.patch_embed.proj.weight, state["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert enc.layers[0].blocks[0].attn.relative_position_bias_table.shape == (81, 1)
    assert "bicubic" in report.adapted["layers.0.blocks.0.attn.relative_position_bias_table"]
    enc3 = SwinEncoder(1, 24, (1, 1, 1, 1), (1, 2, 4, 8), patch_size=4, window_size=3, spatial_dims=3)
    report3 = load_swin_pretrained(enc3, state)
    assert enc3.patch_embed.proj.weight.shape == (24, 1, 4, 4, 4)
    assert "inflated" in report3.adapted["patch_embed.proj.weight"]
    assert "layers.0.blocks.0.attn.relative_position_bias_table" in report3.skipped  # 3D table: no 2D mapping
    assert math.isclose(report3.num_loaded, len(report3.loaded) + 1)


def test_pretrained_bad_files(tmp_path):
    enc = SwinEncoder(3, 24, (1, 1, 1, 1), (1, 2, 4, 8), spatial_dims=2)
    with pytest.raises(InputError, match="not found"):
        load_swin_pretrained(enc, tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        load_swin_pretrained(enc, bad)
    with pytest.raises(ValueError, match="patch_embed"):
        load_swin_pretrained(enc, {}, patch_embed="tile")


@pytest.mark.slow
def test_official_forward_and_bench_smoke(capsys):
    from fusionseg.bench.ds_transunet import main

    torch.manual_seed(0)
    net = create_model("ds_transunet").eval()
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 1, 64, 64)] * 3
    assert main(["--quick", "--no-peers", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "speed-up vs explicit" in out and "ds_transunet_small" in out
