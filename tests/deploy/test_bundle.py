"""MONAI bundle export: `python -m monai.bundle run` on an exported bundle writes the labels of `fusionseg predict`
without fusionseg.

Tiny phantom runs (1 epoch × 2 iterations) are exported, the bundle runs in a subprocess where
``import fusionseg`` fails (a meta-path finder refuses it; ``src`` is not on the path), with the
model zoo's ``--dataset_dir/--output_dir`` overrides, and its label maps are compared voxel by voxel
with ``fusionseg predict`` on the same images, with the input's shape and affine kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("ignite", reason="MONAI bundles run with pytorch-ignite: pip install pytorch-ignite")
pytest.importorskip("fire", reason="python -m monai.bundle needs fire: pip install fire")
import re
from importlib.metadata import version

from fusionseg.cli import main as cli
from fusionseg.data import make_phantom_dataset, read_header, read_label
from fusionseg.deploy.bundle import check_metadata, export_bundle
from fusionseg.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
# `python -m monai.bundle ARGS` in an interpreter where `import fusionseg` raises ImportError.
WITHOUT_FUSIONSEG = """
import importlib.abc, runpy, sys
class NoFusionseg(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "fusionseg":
            raise ImportError(f"{name} is blocked: the bundle must run without fusionseg")
sys.meta_path.insert(0, NoFusionseg())
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
TRAIN = ["--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "2", "--no-progress", "--seed", "0"]
# (id, spatial_dims, train options, slow)
RUNS = [
    ("unet_dff_2d", 2, ["--model", "unet", "--fusion", "dff", "--model-kwargs", '{"features": [8, 16, 32]}',
                        "--patch-size", "32,32"], False),
    ("unet_dff_3d", 3, ["--model", "unet", "--fusion", "dff", "--model-kwargs", '{"features": [4, 8]}',
                        "--patch-size", "16,16,16", "--target-spacing", "1.5,1.5,1.5"], False),
    ("dnet_small_2d", 2, ["--model", "dnet_small", "--patch-size", "32,32", "--model-kwargs",
                          '{"dims": [8, 16, 32, 64, 128], "depths": [1, 1, 1, 1, 1]}'], True),
    ("dnet_small_3d", 3, ["--model", "dnet_small", "--patch-size", "32,32,32", "--target-spacing", "1.5,1.5,1.5",
                          "--model-kwargs", '{"dims": [8, 16, 32, 64, 128], "depths": [1, 1, 1, 1, 1]}'], True),
    ("basicunet_dff_2d", 2, ["--model", "monai_basicunet", "--fusion", "dff", "--patch-size", "32,32",
                             "--model-kwargs", '{"features": [4, 4, 8, 8, 16, 4]}'], True),
    ("basicunet_dff_3d", 3, ["--model", "monai_basicunet", "--fusion", "dff", "--patch-size", "32,32,16",
                             "--model-kwargs", '{"features": [4, 4, 8, 8, 16, 4]}'], True),
]  # fmt: skip


def _dataset(root: Path, dims: int) -> tuple[Path, Path]:
    """Phantom dataset and its test images; in 3D one test image gets an oblique, flipped affine with 1.2 mm voxels."""
    if dims == 2:
        data = make_phantom_dataset(root, spatial_dims=2, num_train=4, num_test=2, size=(48, 40), seed=0)
        return data, data / "test" / "images"
    data = make_phantom_dataset(root, spatial_dims=3, num_train=4, num_test=2, size=(20, 24, 18), seed=0)
    test = data / "imagesTs"
    path = sorted(test.glob("*.nii.gz"))[0]
    img = nib.load(path)
    c, s = np.cos(0.3), np.sin(0.3)  # oblique: rotated 0.3 rad about z
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([-1.2, -1.2, 1.2])
    affine[:3, 3] = [10.0, 12.0, -5.0]
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), path)
    return data, test


def _diversify(checkpoint: Path) -> None:
    """Add seeded noise to the weights: a 2-iteration run often predicts background only, which agrees trivially."""
    import torch

    ckpt = torch.load(checkpoint, weights_only=True)
    gen = torch.Generator().manual_seed(0)
    for key, value in ckpt["state_dict"].items():
        if value.is_floating_point() and "running_" not in key:
            value.add_(torch.randn(value.shape, generator=gen) * 0.3)
    torch.save(ckpt, checkpoint)


def _without_fusionseg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not the worktree's src either
    cmd = [sys.executable, "-c", WITHOUT_FUSIONSEG, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _run_bundle(bundle: Path, images: Path, out: Path) -> subprocess.CompletedProcess:
    return _without_fusionseg("monai.bundle", "run", "--config_file", "configs/inference.json",
                              "--dataset_dir", str(images), "--output_dir", str(out), cwd=bundle)  # fmt: skip


def test_the_bundle_subprocess_cannot_import_fusionseg(tmp_path):
    (tmp_path / "probe.py").write_text("import fusionseg\n")
    result = _without_fusionseg("probe", cwd=tmp_path)
    assert result.returncode != 0 and "fusionseg is blocked" in result.stderr


def _install_line_matches_this_environment(readme: str) -> None:
    """The README's `pip install NAME==VER ...` names exactly the versions installed here (the test's environment)."""
    line = next(l for l in readme.splitlines() if l.startswith("pip install "))
    pins = dict(p.split("==") for p in line.split()[2:])
    assert {"torch", "monai", "fire", "pytorch-ignite"} <= set(pins) and "fusionseg" not in line
    for name, pinned in pins.items():
        assert re.sub(r"\+.*", "", version(name)) == pinned, name


def _params():
    for run_id, dims, options, slow in RUNS:
        yield pytest.param(dims, options, id=run_id, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize(("dims", "options"), list(_params()))
def test_bundle_run_writes_the_labels_of_predict(tmp_path, dims, options, capsys):
    data, images = _dataset(tmp_path / "data", dims)
    assert cli(["train", "--data", str(data), "--output", str(tmp_path / "run"), *options, *TRAIN]) == 0
    _diversify(tmp_path / "run" / "best.pt")
    bundle = tmp_path / "bundle"
    assert cli(["export", "--format", "bundle", "--checkpoint", str(tmp_path / "run" / "best.pt"),
                "--output", str(bundle)]) == 0  # fmt: skip
    assert "wrote MONAI bundle" in capsys.readouterr().out
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.ts", "docs/README.md",
                 "scripts/__init__.py", "scripts/bundle_components.py"):  # fmt: skip
        assert (bundle / name).is_file(), name
    assert "fusionseg" not in (bundle / "configs" / "inference.json").read_text()
    _install_line_matches_this_environment((bundle / "docs" / "README.md").read_text())
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    check_metadata(meta)
    assert {"fire", "pytorch-ignite"} <= set(meta["required_packages_version"])
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["0"] == "background"

    result = _run_bundle(bundle, images, tmp_path / "bundle_out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert cli(["predict", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--input", str(images),
                "--output", str(tmp_path / "pred"), "--no-progress"]) == 0  # fmt: skip
    predicted = sorted(p for p in (tmp_path / "pred").iterdir() if not p.name.startswith("."))  # not the marker
    assert len(predicted) == 2
    for ours in predicted:
        theirs = tmp_path / "bundle_out" / ours.name
        a, b = read_label(theirs)[0], read_label(ours)[0]
        assert a.shape == b.shape
        agreement = float((a == b).mean())
        print(f"{ours.name}: bundle = predict on {int((a == b).sum())} of {a.size} voxels")
        assert agreement >= 0.999, f"{ours.name}: bundle and predict agree on {agreement:.4%} of voxels"
        assert len(np.unique(b)) > 1  # a constant map would agree trivially
        source = next(p for p in images.iterdir() if p.name.split(".")[0].startswith(ours.name.split(".")[0]))
        header, want = read_header(theirs), read_header(source)
        assert tuple(header["spatial_shape"][:dims]) == tuple(want["spatial_shape"][:dims])
        np.testing.assert_allclose(header["affine"], want["affine"], atol=1e-4)
        if dims == 2:  # the same stored values (binary masks as 0/255), not only the same labels
            from PIL import Image

            assert np.array_equal(np.asarray(Image.open(theirs)), np.asarray(Image.open(ours)))


@pytest.fixture(scope="module")
def checkpoint_2d(tmp_path_factory) -> Path:
    """best.pt of a tiny 2D ``unet --fusion dff`` run."""
    root = tmp_path_factory.mktemp("bundle2d")
    data, _ = _dataset(root / "data", 2)
    assert cli(["train", "--data", str(data), "--output", str(root / "run"), *RUNS[0][2], *TRAIN]) == 0
    return root / "run" / "best.pt"


def test_bundle_network_passes_monai_verify_net_in_out(tmp_path, checkpoint_2d):
    from monai.bundle import verify_net_in_out

    bundle = tmp_path / "b"
    assert cli(["export", "--format", "bundle", "--checkpoint", str(checkpoint_2d), "--output", str(bundle)]) == 0
    configs = bundle / "configs"
    wide = tmp_path / "wide"
    assert cli(["export", "--format", "bundle", "--checkpoint", str(checkpoint_2d), "--output", str(wide),
                "--patch-size", "48,40"]) == 0  # fmt: skip
    assert json.loads((wide / "configs" / "inference.json").read_text())["inferer"]["roi_size"] == [48, 40]
    assert json.loads((configs / "inference.json").read_text())["inferer"]["roi_size"] == [32, 32]
    with pytest.raises(InputError, match=r"multiple of 4; got \(30, 30\), nearest valid size \(32, 32\)"):
        export_bundle(checkpoint_2d, tmp_path / "odd", window=[30, 30])
    verify_net_in_out("network_def", meta_file=str(configs / "metadata.json"), device="cpu", n=2,
                      config_file=str(configs / "inference.json"), bundle_root=str(bundle))  # fmt: skip
    meta = json.loads((configs / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32]  # the traced window
    bad = json.loads(json.dumps(meta))
    del bad["network_data_format"]["outputs"]["pred"]["channel_def"], bad["version"]
    with pytest.raises(ValueError, match=r"version, network_data_format.outputs.pred.channel_def"):
        check_metadata(bad)


def test_failed_export_leaves_no_bundle_and_refuses_foreign_folders(tmp_path, monkeypatch, checkpoint_2d):
    from fusionseg.deploy import bundle as bundle_module

    ckpt = checkpoint_2d
    monkeypatch.setattr(bundle_module, "_check_bundle_network", lambda *a: 1.0)  # the bundle disagrees with eager
    with pytest.raises(Exception, match="differs from the checkpoint's by 1"):
        bundle_module.export_bundle(ckpt, tmp_path / "out" / "b")
    assert sorted(os.listdir(tmp_path / "out")) == []  # neither the bundle nor a temporary folder
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(InputError, match="not a MONAI bundle folder"):
        bundle_module.export_bundle(ckpt, foreign)
    assert (foreign / "todo.txt").read_text() == "mine"


def test_bundle_normalisation_equals_fusionseg_normalisation():
    """The bundle's copy of the per-channel normalisation computes what `predict` computes, scheme by scheme."""
    import torch

    from fusionseg.data.normalization import ChannelNormalisation, normalise
    from fusionseg.deploy.bundle_components import NormalizeChannelsd

    gen = torch.Generator().manual_seed(0)
    image = torch.rand((5, 12, 10, 6), generator=gen) * 300 - 50
    image[:, :3] = 0  # background outside the non-zero mask
    image[:, 6, 5, 3] = 0  # a hole inside it (filled)
    specs = [
        {"scheme": "ct", "clip": [-20.0, 200.0], "mean": 40.0, "std": 30.0},
        {"scheme": "zscore", "use_mask": True},
        {"scheme": "zscore", "use_mask": False},
        {"scheme": "rescale_to_0_1"},
        {"scheme": "noNorm"},
    ]
    want = normalise(image, [ChannelNormalisation.from_dict(s) for s in specs])  # the bundle holds the dicts
    got = NormalizeChannelsd("image", specs)({"image": image.clone()})["image"]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert float(want[1, :3].abs().max()) == 0 and float(want[1].std()) > 0.5  # the mask was used
    rgb = torch.randint(0, 256, (3, 8, 8), generator=gen).float()
    torch.testing.assert_close(NormalizeChannelsd("image", [{"scheme": "rgb_to_0_1"}] * 3)({"image": rgb})["image"],
                               normalise(rgb, [ChannelNormalisation("rgb_to_0_1")] * 3))  # fmt: skip


def test_bundle_region_painting_equals_fusionseg():
    import torch

    from fusionseg.data.labels import regions_to_labels
    from fusionseg.deploy.bundle_components import RegionsToLabelsd

    probs = torch.rand((3, 9, 7, 5), generator=torch.Generator().manual_seed(0))
    got = RegionsToLabelsd("pred", [1, 2, 3])({"pred": probs})["pred"]
    assert got.shape == (1, 9, 7, 5) and set(got.unique().tolist()) == {0, 1, 2, 3}
    assert torch.equal(got[0].to(torch.uint8), regions_to_labels(probs, [1, 2, 3]))
    with pytest.raises(ValueError, match="regions_class_order must list"):
        RegionsToLabelsd("pred", [])
