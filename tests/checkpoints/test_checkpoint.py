"""Checkpoints (contract 2), exact-resume RNG state, official-weight loading and ``fusionseg import-weights``."""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fusionseg.checkpoints.checkpoint import (
    CHECKPOINT_VERSION,
    build_checkpoint,
    capture_rng_state,
    load_checkpoint,
    rebuild_model,
    restore_rng_state,
    save_checkpoint,
    to_plain_data,
)
from fusionseg.cli.import_weights import main
from fusionseg.data import Preprocessing
from fusionseg.errors import InputError
from fusionseg.nets import registry
from fusionseg.nets.registry import create_model, list_models
from fusionseg.nets.weights import LoadReport, extract_state_dict, load_pretrained, strip_prefixes

SPECS = Path(__file__).resolve().parents[2].parent / "shared" / "specs"


class ToyNet(nn.Module):
    """conv-BN-ReLU + 1×1 head (and a half-resolution head with deep supervision), 2D or 3D."""

    size_multiple = 2

    def __init__(self, in_channels=1, out_channels=2, spatial_dims=2, deep_supervision=False, width=4):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        bn = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        self.stem = nn.Sequential(conv(in_channels, width, 3, padding=1), bn(width), nn.ReLU())
        self.head = conv(width, out_channels, 1)
        self.aux = conv(width, out_channels, 1) if deep_supervision else None
        self.spatial_dims, self.deep_supervision = spatial_dims, deep_supervision
        self.in_channels, self.out_channels = in_channels, out_channels
        self.config = {
            "name": "_toy_ckpt",
            "kwargs": dict(
                in_channels=in_channels,
                out_channels=out_channels,
                spatial_dims=spatial_dims,
                deep_supervision=deep_supervision,
                width=width,
            ),
        }

    def forward(self, x):
        h = self.stem(x)
        if self.aux is None:
            return self.head(h)
        pool = nn.functional.avg_pool2d if self.spatial_dims == 2 else nn.functional.avg_pool3d
        return self.head(h), self.aux(pool(h, 2))


@pytest.fixture(autouse=True)
def _register_toy(monkeypatch):
    """``_toy_ckpt`` in the model registry for this module's tests only (not seen by other test files)."""
    monkeypatch.setitem(registry._MODELS, "_toy_ckpt", ToyNet)


def _toy(**kw) -> ToyNet:
    torch.manual_seed(kw.pop("seed", 0))
    return create_model("_toy_ckpt", **kw)


def _equal_state(a: nn.Module | dict, b: nn.Module | dict) -> bool:
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_contract_checkpoint_round_trip_rebuilds_identical_model(tmp_path, spatial_dims):
    model = _toy(in_channels=2, out_channels=3, spatial_dims=spatial_dims, deep_supervision=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 2, *([4] * spatial_dims))
    model(x)[0].sum().backward()
    opt.step()
    pre = Preprocessing.from_dict({"spatial_dims": spatial_dims, "in_channels": 2, "num_classes": 3})
    ckpt = build_checkpoint(
        model, optimizer=opt, epoch=3, step=12, best_metric=0.5, preprocessing=pre,
        train_args={"data": Path("/data/x"), "patch": (4, 4)},
    )  # fmt: skip
    path = save_checkpoint(tmp_path / "run" / "last.pt", ckpt)
    loaded = load_checkpoint(path)
    assert loaded["format"] == "fusionseg" and loaded["version"] == CHECKPOINT_VERSION
    assert loaded["epoch"] == 3 and loaded["step"] == 12 and loaded["best_metric"] == 0.5
    assert loaded["train_args"] == {"data": "/data/x", "patch": (4, 4)}  # Path stored as plain str
    assert loaded["model"] == model.config
    assert loaded["preprocessing"] == pre.to_dict() and Preprocessing.from_dict(loaded["preprocessing"]) == pre
    rebuilt = rebuild_model(loaded)
    assert not rebuilt.training and _equal_state(rebuilt, model)
    model.eval()
    torch.testing.assert_close(rebuilt(x)[0], model(x)[0], rtol=0, atol=0)
    opt2 = torch.optim.SGD(rebuilt.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(loaded["optimizer"])
    assert torch.equal(
        opt2.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"]
    )
    assert rebuild_model(path).config == model.config  # a path works too


def test_build_checkpoint_unwraps_data_parallel_and_requires_config():
    model = _toy()
    ckpt = build_checkpoint(nn.DataParallel(model))
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    with pytest.raises(TypeError, match="create_model"):
        build_checkpoint(nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("dnet_small", dict(in_channels=1, out_channels=3, spatial_dims=2)),
        ("ds_transunet_small", dict(in_channels=3, out_channels=2)),
        ("unet", dict(in_channels=1, out_channels=3, spatial_dims=2, fusion="dff")),
    ],
)
def test_registered_models_survive_checkpoint_round_trip(tmp_path, name, kwargs):
    if name not in list_models():
        pytest.skip(f"model {name!r} is not registered yet (owned by another stream)")
    try:
        model = create_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        pytest.skip(f"{name} does not accept {kwargs} yet: {err}")
    save_checkpoint(tmp_path / "m.pt", build_checkpoint(model, rng=False))
    rebuilt = rebuild_model(tmp_path / "m.pt")
    assert type(rebuilt) is type(model) and _equal_state(rebuilt, model)


def test_to_plain_data_converts_paths_and_numpy_and_names_bad_entries():
    sd = nn.BatchNorm1d(2).state_dict()
    out = to_plain_data({"p": Path("a/b"), "n": np.float32(1.5), "a": np.arange(3), "sd": sd, "t": (1, [2])})
    assert out["p"] == "a/b" and out["n"] == 1.5 and isinstance(out["n"], float)
    assert torch.equal(out["a"], torch.arange(3)) and out["t"] == (1, [2])
    assert isinstance(out["sd"], OrderedDict) and out["sd"]._metadata == sd._metadata
    with pytest.raises(TypeError, match=r"state\['cfg'\]\['ns'\] is a argparse.Namespace"):
        to_plain_data({"cfg": {"ns": argparse.Namespace(a=1)}})
    with pytest.raises(TypeError, match="key"):
        to_plain_data({(1, 2): 3})


def test_save_refuses_objects_that_would_not_load_safely(tmp_path):
    with pytest.raises(TypeError, match="Namespace"):
        save_checkpoint(tmp_path / "c.pt", {"args": argparse.Namespace(lr=1)})
    assert list(tmp_path.iterdir()) == []


def test_save_removes_temp_files_of_dead_writers_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".last.pt.tmp-{dead_pid}-abc.pt"  # any file of the folder, not only the one written
    stale_png = tmp_path / f".learning_curve.png.tmp-{dead_pid}-k3j_x9.png"
    alive = tmp_path / ".other.pt.tmp-1-abc.pt"  # pid 1 is alive
    user = tmp_path / f".notes.{dead_pid}.txt"  # not a temp file of ours
    for f in (stale, stale_png, alive, user):
        f.write_bytes(b"partial")
    save_checkpoint(tmp_path / "last.pt", {"a": 1})
    assert not stale.exists() and not stale_png.exists() and alive.exists() and user.exists()


# --------------------------------------------------------------------------------------------- RNG
def _draw() -> tuple:
    return torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.randn()


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    first = _draw()
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    second = _draw()
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2] and first[3] == second[3]
    restore_rng_state(None)  # tolerated


# --------------------------------------------------------------------------------------------- rebuild errors
def test_rebuild_model_rejects_foreign_new_and_unbuildable_checkpoints():
    model = _toy()
    good = build_checkpoint(model, rng=False)
    with pytest.raises(InputError, match="import-weights"):
        rebuild_model({"state_dict": model.state_dict()})
    with pytest.raises(InputError, match="newer than this fusionseg"):
        rebuild_model({**good, "version": CHECKPOINT_VERSION + 1})
    with pytest.raises(InputError, match="cannot build"):
        rebuild_model({**good, "model": {"name": "no_such_model", "kwargs": {}}})
    with pytest.raises(InputError, match=r"another shape .*head\.weight"):
        rebuild_model({**good, "model": {"name": "_toy_ckpt", "kwargs": {**model.config["kwargs"], "out_channels": 5}}})


# --------------------------------------------------------------------------------------------- load_pretrained
@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,  # plain .pth
        lambda sd: {"network_weights": sd, "optimizer_state": {}, "current_epoch": 7},  # nnU-Net v2
        lambda sd: {"state_dict": sd, "optimizer_state_dict": {}, "epoch": 3},  # nnU-Net v1 .model
        lambda sd: {"model": {"module." + k: v for k, v in sd.items()}},  # DDP-wrapped
        lambda sd: {"_orig_mod.module." + k: v for k, v in sd.items()},  # compiled + DDP
    ],
    ids=["plain", "network_weights", "state_dict", "model-module", "orig_mod"],
)
def test_load_pretrained_accepts_official_layouts(tmp_path, wrap):
    source, target = _toy(seed=1), _toy(seed=2)
    torch.save(wrap(source.state_dict()), tmp_path / "w.pth")
    report = load_pretrained(target, tmp_path / "w.pth")
    assert isinstance(report, LoadReport) and report.ok
    assert len(report.loaded) == len(source.state_dict())
    assert report.summary() == f"loaded {len(report.loaded)}/{len(report.loaded)} tensors from w.pth"
    assert _equal_state(source, target)


def test_load_pretrained_accepts_nnunet_v1_numpy_metrics(tmp_path):
    source, target = _toy(seed=1), _toy(seed=2)
    plot_stuff = ([np.float64(0.5)], [np.float32(0.4)], np.array([0.1, 0.2]))
    torch.save({"state_dict": source.state_dict(), "plot_stuff": plot_stuff, "epoch": 100}, tmp_path / "m.model")
    with pytest.raises(InputError, match="pickled Python objects"):
        load_checkpoint(tmp_path / "m.model")  # fusionseg checkpoints never contain numpy
    assert load_pretrained(target, tmp_path / "m.model").ok and _equal_state(source, target)


def test_load_pretrained_strict_mismatch_is_one_line_and_leaves_model_untouched():
    source, target = _toy(out_channels=4, seed=1), _toy(out_channels=2, seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(InputError) as info:
        load_pretrained(target, source.state_dict())
    msg = str(info.value)
    assert "\n" not in msg and "head.weight file [4, 4, 1, 1] vs model [2, 4, 1, 1]" in msg
    assert "out_channels=4" in msg  # the hint names the fix
    assert _equal_state(before, target)


def test_load_pretrained_in_channel_hint_and_variant_hint():
    with pytest.raises(InputError, match="in_channels=3"):
        load_pretrained(_toy(in_channels=1), _toy(in_channels=3).state_dict())
    renamed = {"x." + k: v for k, v in _toy().state_dict().items()}
    with pytest.raises(InputError, match=r"missing from the file .*unexpected in the file .*variant"):
        load_pretrained(_toy(), renamed)


def test_load_pretrained_non_strict_loads_what_fits_and_reports_the_rest():
    source, target = _toy(out_channels=4, seed=1), _toy(out_channels=2, seed=2)
    sd = dict(source.state_dict(), extra=torch.zeros(1))
    del sd["stem.0.bias"]
    report = load_pretrained(target, sd, strict=False)
    assert not report.ok
    assert {k for k, _, _ in report.mismatched} == {"head.weight", "head.bias"}
    assert report.missing == ["stem.0.bias"] and report.unexpected == ["extra"]
    assert torch.equal(target.stem[0].weight, source.stem[0].weight)
    assert not torch.equal(target.stem[0].bias, source.stem[0].bias)


def test_extract_and_strip_helpers():
    sd = {"module.a": torch.zeros(1)}
    assert strip_prefixes(sd) == {"a": sd["module.a"]}
    assert strip_prefixes(sd, model_keys={"module.a"}) == sd  # a model whose own names start with module.
    with pytest.raises(InputError, match="no state_dict"):
        extract_state_dict({"epoch": 3, "lr": 0.1}, "f.pth")


# --------------------------------------------------------------------------------------------- import-weights CLI
def test_import_weights_cli_writes_checkpoint_usable_by_rebuild(tmp_path, capsys):
    source = _toy(in_channels=2, out_channels=3, seed=5)
    torch.save({"network_weights": {"module." + k: v for k, v in source.state_dict().items()}}, tmp_path / "o.pth")
    pre = tmp_path / "pre.json"
    pre.write_text('{"spatial_dims": 2, "in_channels": 2, "num_classes": 3, "patch_size": [16, 16]}')
    rc = main(
        ["--model", "_toy_ckpt", "--weights", str(tmp_path / "o.pth"), "--output", str(tmp_path / "ck.pt"),
         "--in-channels", "2", "--out-channels", "3", "--preprocessing", str(pre)],
        "fusionseg import-weights",
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "loaded 9/9 tensors from o.pth" in out and "wrote" in out
    ckpt = load_checkpoint(tmp_path / "ck.pt")
    assert ckpt["preprocessing"] == Preprocessing.from_dict(json.loads(pre.read_text())).to_dict()  # completed
    assert ckpt["preprocessing"]["channel_normalisation"] == [{"scheme": "zscore"}] * 2
    assert _equal_state(rebuild_model(ckpt), source)
    for body, match in [
        ('{"spatial_dims": 2, "in_channels": 2}', r"pre\.json: preprocessing\.num_classes is missing"),
        ('{"spatial_dims": 2, "in_channels": 2, "num_classes": 3, "patch": 16}', "unknown entries patch "),
    ]:
        pre.write_text(body)
        with pytest.raises(InputError, match=match):
            main(["--model", "_toy_ckpt", "--weights", str(tmp_path / "o.pth"), "--output", str(tmp_path / "ck.pt"),
                  "--in-channels", "2", "--out-channels", "3", "--preprocessing", str(pre)], "p")  # fmt: skip


def test_import_weights_cli_errors_are_input_errors(tmp_path):
    torch.save(_toy(out_channels=4).state_dict(), tmp_path / "o.pth")
    base = ["--weights", str(tmp_path / "o.pth"), "--output", str(tmp_path / "ck.pt")]
    with pytest.raises(InputError, match="out_channels=4"):
        main(["--model", "_toy_ckpt", *base], "p")
    with pytest.raises(InputError, match="unknown model"):
        main(["--model", "nope", *base], "p")
    with pytest.raises(InputError, match="JSON"):
        main(["--model", "_toy_ckpt", "--model-kwargs", "{bad", *base], "p")
    assert not (tmp_path / "ck.pt").exists()
    assert main(["--model", "_toy_ckpt", "--no-strict", *base], "p") == 0  # head re-initialised, rest loaded


def test_import_weights_without_model_goes_to_the_registered_importer(tmp_path, capsys, monkeypatch):
    """No --model: the importer fusionseg.nnunet registered for "nnunet" checkpoints writes the file (layers
    below nnunet reach it through the registry only); one importer per kind."""
    import fusionseg  # noqa: F401  (the facade registers the nnU-Net importer)
    from fusionseg.checkpoints import importers

    calls = []

    def fake(weights, output, strict=True):
        calls.append((weights, output, strict))
        return output, LoadReport("checkpoint_final.pth", loaded=["w"]), {"name": "nnunet_planned"}

    assert importers.importer_for("nnunet") is not None
    with pytest.raises(ValueError, match="already registered"):
        importers.register_importer("nnunet", fake)
    monkeypatch.setitem(importers._IMPORTERS, "nnunet", fake)
    weights, output = tmp_path / "checkpoint_final.pth", tmp_path / "ck.pt"
    weights.write_bytes(b"x")
    assert main(["--weights", str(weights), "--output", str(output), "--no-strict"], "p") == 0
    assert calls == [(weights, output, False)]
    assert f"wrote {output} (model nnunet_planned, nnU-Net preprocessing)" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- official listings
def _random_state_dict(listing: Path) -> dict[str, torch.Tensor]:
    sd = {}
    for line in listing.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        dims = [int(s) for s in shape.strip("[] ").split(",") if s.strip()]
        sd[key] = torch.randn(dims) if not key.endswith(("index", "num_batches_tracked")) else torch.zeros(dims).long()
    return sd


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "listing", "kwargs"),
    [
        ("dnet", "dnet_v2_state_dict.txt", dict(in_channels=1, out_channels=16, deep_supervision=True)),
        ("dnet_v1", "dnet_v1_state_dict.txt", dict(in_channels=1, out_channels=16)),
        ("ds_transunet", "ds_transunet_state_dict.txt", dict(in_channels=3, out_channels=1)),
    ],
)
def test_official_state_dict_listings_import_strictly(tmp_path, name, listing, kwargs):
    if not (SPECS / listing).is_file():
        pytest.skip(f"{SPECS / listing} is absent")
    if name not in list_models():
        pytest.skip(f"model {name!r} is not registered yet")
    sd = _random_state_dict(SPECS / listing)
    torch.save({"network_weights": sd, "current_epoch": 1000}, tmp_path / "official.pth")
    del sd
    args = ["--model", name, "--weights", str(tmp_path / "official.pth"), "--output", str(tmp_path / "ck.pt")]
    args += [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}" for k, v in kwargs.items()]
    assert main(args, "fusionseg import-weights") == 0
    model = rebuild_model(tmp_path / "ck.pt")
    assert sum(p.numel() for p in model.parameters()) > 1e6


def test_import_weights_cli_embeds_dataset_preprocessing(tmp_path):
    data = pytest.importorskip("fusionseg.data")
    if not hasattr(data, "make_phantom_dataset"):
        pytest.skip("data stream not ready")
    root = data.make_phantom_dataset(tmp_path / "ds", spatial_dims=2, num_train=2, num_test=1, size=(16, 16))
    torch.save(_toy(in_channels=1, out_channels=3).state_dict(), tmp_path / "o.pth")
    args = ["--model", "_toy_ckpt", "--weights", str(tmp_path / "o.pth"), "--output", str(tmp_path / "ck.pt")]
    assert main([*args, "--out-channels", "3", "--data", str(root), "--patch-size", "16", "16"], "p") == 0
    pre = Preprocessing.from_dict(load_checkpoint(tmp_path / "ck.pt")["preprocessing"])
    assert pre.spatial_dims == 2 and pre.num_classes == 3 and pre.patch_size == (16, 16)
