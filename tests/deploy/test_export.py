"""Export to TorchScript / ONNX: exported outputs equal eager within 1e-4 (onnxruntime for ONNX)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fusionseg.checkpoints.checkpoint import build_checkpoint, save_checkpoint
from fusionseg.cli.export import main
from fusionseg.data import Preprocessing
from fusionseg.deploy.export import ExportMismatchError, InferenceWrapper, export_model, run_exported
from fusionseg.errors import InputError
from fusionseg.fusion import DFF, TIF
from fusionseg.nets import registry
from fusionseg.nets.registry import create_model, list_models

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
ATOL = 1e-4


class TinySeg(nn.Module):
    size_multiple = 4

    def __init__(self, in_channels=1, out_channels=2, spatial_dims=2, deep_supervision=True):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.body = nn.Sequential(conv(in_channels, 4, 3, padding=1), nn.GELU())
        self.head, self.aux = conv(4, out_channels, 1), conv(4, out_channels, 1)
        self.deep_supervision = deep_supervision
        self.in_channels, self.out_channels, self.spatial_dims = in_channels, out_channels, spatial_dims
        kwargs = dict(in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims)
        self.config = {"name": "_toy_export", "kwargs": {**kwargs, "deep_supervision": deep_supervision}}

    def check_input(self, x):
        if any(s % self.size_multiple for s in x.shape[2:]):
            fix = [max(4, round(s / 4) * 4) for s in x.shape[2:]]
            raise InputError(f"sizes must be multiples of 4 for this model; try {fix}")

    def forward(self, x):
        self.check_input(x)
        h = self.body(x)
        return (self.head(h), self.aux(h)) if self.deep_supervision else self.head(h)


@pytest.fixture(autouse=True)
def _register_toy(monkeypatch):
    """``_toy_export`` in the model registry for this module's tests only (not seen by other test files)."""
    monkeypatch.setitem(registry._MODELS, "_toy_export", TinySeg)


def _check_file(path, inputs, reference, fmt):
    got = run_exported(path, inputs, fmt)
    assert got.shape == reference.shape
    assert (got - reference).abs().max().item() <= ATOL


# --------------------------------------------------------------------------------------------- fusion modules
FUSION_CASES = [
    ("dff2d", lambda: DFF(8, spatial_dims=2), [(1, 8, 8, 8), (1, 8, 8, 8)]),
    ("dff3d", lambda: DFF(8, spatial_dims=3), [(1, 8, 4, 4, 4), (1, 8, 4, 4, 4)]),
    ("tif2d", lambda: TIF(16, 8, spatial_dims=2, heads_s=2, dim_head_s=8, mlp_s=16, dim_head_l=8, mlp_l=16),
     [(1, 8, 8, 8), (1, 16, 4, 4)]),
    ("tif3d", lambda: TIF(8, 8, spatial_dims=3, heads_s=2, dim_head_s=4, mlp_s=16, dim_head_l=8, mlp_l=16),
     [(1, 8, 4, 4, 4), (1, 8, 2, 2, 2)]),
]  # fmt: skip


def _fusion_params():
    for fmt in ("torchscript", "onnx"):
        for name, build, shapes in FUSION_CASES:
            marks = [pytest.mark.slow] if fmt == "onnx" else []  # the default suite exports ONNX via the U-Net
            yield pytest.param(name, build, shapes, fmt, id=f"{fmt}-{name}", marks=marks)


@pytest.mark.parametrize(("name", "build", "shapes", "fmt"), list(_fusion_params()))
def test_fusion_modules_export_matches_eager(tmp_path, name, build, shapes, fmt):
    module = build().eval()
    inputs = tuple(torch.randn(s) for s in shapes)
    result = export_model(module, inputs, fmt, tmp_path / f"{name}.{fmt}", metadata={"module": name})
    assert result["max_abs_diff"] <= ATOL and result["path"].is_file()
    with torch.no_grad():
        _check_file(result["path"], inputs, module(*inputs), fmt)
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.{fmt}"]  # no temp files left


# --------------------------------------------------------------------------------------------- registered networks
NETWORKS = [
    ("unet-dff-2d", "unet", dict(in_channels=1, out_channels=3, spatial_dims=2, fusion="dff", features=[4, 8]), 32),
    ("unet-tif-2d", "unet", dict(in_channels=1, out_channels=3, spatial_dims=2, fusion="tif", features=[4, 8]), 32),
    ("unet-add-3d", "unet", dict(in_channels=1, out_channels=2, spatial_dims=3, fusion="add", features=[4, 8]), 16),
    ("unet-dff-3d", "unet", dict(in_channels=1, out_channels=2, spatial_dims=3, fusion="dff", features=[4, 8]), 16),
    ("unet-tif-3d", "unet", dict(in_channels=1, out_channels=2, spatial_dims=3, fusion="tif", features=[4, 8]), 16),
    ("dnet_small-2d", "dnet_small", dict(in_channels=1, out_channels=3, spatial_dims=2), 32),
    ("dnet_small-3d", "dnet_small", dict(in_channels=1, out_channels=3, spatial_dims=3), 32),
    ("ds_transunet_small", "ds_transunet_small", dict(in_channels=3, out_channels=2), 64),
]  # fmt: skip


def _network(name, kwargs):
    if name not in list_models():
        pytest.skip(f"model {name!r} is not registered yet (owned by another stream)")
    try:
        return create_model(name, **kwargs).eval()
    except (TypeError, ValueError) as err:
        pytest.skip(f"{name} does not accept {kwargs} yet: {err}")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_small_unet_with_dff_exports(tmp_path, fmt):
    """Default-suite representative; every network × format runs in the slow suite below."""
    _, name, kwargs, size = NETWORKS[0]
    model = _network(name, kwargs)
    x = torch.randn(1, 1, size, size)
    result = export_model(model, x, fmt, tmp_path / f"unet.{fmt}")
    with torch.no_grad():
        _check_file(result["path"], (x,), InferenceWrapper(model)(x), fmt)


@pytest.mark.slow
@pytest.mark.parametrize(("case", "name", "kwargs", "size"), NETWORKS, ids=[n[0] for n in NETWORKS])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_registered_networks_export_matches_eager(tmp_path, case, name, kwargs, size, fmt):
    model = _network(name, kwargs)
    spatial_dims = kwargs.get("spatial_dims", 2)
    x = torch.randn(1, kwargs["in_channels"], *([size] * spatial_dims))
    result = export_model(model, x, fmt, tmp_path / f"{case}.{fmt}")
    print(f"{case} {fmt}: max |exported - eager| = {result['max_abs_diff']:.2e} ({result['exporter']})")
    assert result["max_abs_diff"] <= ATOL
    with torch.no_grad():
        _check_file(result["path"], (x,), InferenceWrapper(model)(x), fmt)


# --------------------------------------------------------------------------------------------- failure modes
class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else -x  # tracing freezes one branch


def test_export_that_does_not_reproduce_eager_writes_nothing(tmp_path):
    x = torch.ones(1, 1, 4, 4)
    out = tmp_path / "m.ts"
    out.write_bytes(b"previous export")
    with pytest.raises(ExportMismatchError, match="differs from eager"):
        export_model(DataDependent(), x, "torchscript", out)
    assert out.read_bytes() == b"previous export"  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.ts"]  # no temp left


def test_export_rejects_unknown_format_and_unwritable_destination(tmp_path):
    with pytest.raises(InputError, match="unknown export format"):
        export_model(nn.Identity(), torch.zeros(1), "tflite", tmp_path / "m")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"not a directory|cannot write"):
        export_model(nn.Identity(), torch.zeros(1), "torchscript", tmp_path / "file" / "m.ts")


# --------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def toy_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("_toy_export", in_channels=2, out_channels=3, spatial_dims=2)
    pre = Preprocessing.from_dict({"spatial_dims": 2, "in_channels": 2, "num_classes": 3, "patch_size": [8, 12]})
    return save_checkpoint(tmp_path / "ck.pt", build_checkpoint(model, preprocessing=pre, rng=False)), model


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_cli_uses_patch_size_and_embeds_metadata(tmp_path, toy_checkpoint, capsys, fmt):
    ckpt, model = toy_checkpoint
    out = tmp_path / f"exported.{fmt}"
    assert main(["--checkpoint", str(ckpt), "--format", fmt, "--output", str(out)], "fusionseg export") == 0
    printed = capsys.readouterr().out
    assert "input [1, 2, 8, 12]" in printed and "max |exported - eager|" in printed
    x = torch.randn(1, 2, 8, 12)
    with torch.no_grad():
        _check_file(out, (x,), model.eval()(x)[0], fmt)
    if fmt == "torchscript":
        extra = {"fusionseg.json": ""}
        torch.jit.load(str(out), _extra_files=extra)
        meta = json.loads(extra["fusionseg.json"])
    else:
        import onnx

        meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["fusionseg"])
    assert (
        meta["model"] == model.config
        and meta["preprocessing"] == Preprocessing.from_dict(meta["preprocessing"]).to_dict()
    )
    assert meta["preprocessing"]["patch_size"] == [8, 12]


def test_export_cli_bad_inputs_are_one_line_errors(tmp_path, toy_checkpoint):
    ckpt, _ = toy_checkpoint
    base = ["--checkpoint", str(ckpt), "--format", "torchscript", "--output", str(tmp_path / "o.ts")]
    with pytest.raises(InputError, match=r"multiples of 4 .*try \[8, 8\]"):
        main([*base, "--patch-size", "9", "7"], "p")
    with pytest.raises(InputError, match="needs 2 values"):
        main([*base, "--patch-size", "8", "8", "8"], "p")
    with pytest.raises(InputError, match="does not exist"):
        main(["--checkpoint", str(tmp_path / "nope.pt"), *base[2:]], "p")
    assert main([*base, "--patch-size", "16"], "p") == 0  # one value = all spatial dims


def test_onnx_dynamic_batch_runs_other_batch_sizes(tmp_path, toy_checkpoint):
    ckpt, model = toy_checkpoint
    out = tmp_path / "dyn.onnx"
    assert main(["--checkpoint", str(ckpt), "--format", "onnx", "--output", str(out), "--dynamic-batch"], "p") == 0
    x = torch.randn(3, 2, 8, 12)
    with torch.no_grad():
        _check_file(out, (x,), model.eval()(x)[0], "onnx")
