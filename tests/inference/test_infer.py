"""Sliding-window inference (``predict_volume``) and ``fusionseg predict`` (geometry kept, bad cases reported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fusionseg.checkpoints import loading as infer
from fusionseg.checkpoints.checkpoint import build_checkpoint, save_checkpoint
from fusionseg.cli import predict as predict_cli
from fusionseg.data import Preprocessing, build_preprocessing, make_phantom_dataset, scan_dataset
from fusionseg.errors import InputError
from fusionseg.inference.inputs import find_inputs
from fusionseg.inference.slab_inference import window_size
from fusionseg.inference.sliding_window import predict_volume
from fusionseg.nets.registry import create_model

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


class Pointwise(nn.Module):
    """1×1 conv: the same logits whatever the window, so sliding-window output must equal a plain forward."""

    def __init__(self, spatial_dims: int, size_multiple: int = 1, deep_supervision: bool = False):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.conv = conv(2, 3, 1)
        self.size_multiple = size_multiple
        self.deep_supervision = deep_supervision

    def forward(self, x):
        m = self.size_multiple
        if any(s % m for s in x.shape[2:]):
            raise ValueError(f"sizes must be multiples of {m}, got {tuple(x.shape[2:])}")
        y = self.conv(x)
        return (y, y[..., ::2, ::2]) if self.deep_supervision else y


def test_window_size():
    assert window_size((50, 37), None, 8) == (56, 40)
    assert window_size((200, 200), (96, 90), 32) == (96, 96)
    with pytest.raises(InputError, match="patch size"):
        window_size((10, 10, 10), (8, 8), 1)


@pytest.mark.parametrize(
    ("spatial", "patch", "multiple", "tta", "ds"),
    [
        ((40, 36), (16, 16), 1, False, False),
        ((37, 29), None, 8, True, False),  # whole image, padded to multiples of 8
        ((37, 29), (20, 20), 8, False, True),  # window rounded up to 24, deep-supervision tuple
        ((12, 10, 9), (8, 8, 8), 4, True, False),
    ],
)
def test_predict_volume_matches_plain_forward(spatial, patch, multiple, tta, ds):
    model = Pointwise(len(spatial), multiple, ds).eval()
    image = torch.randn(2, *spatial)
    pre = Preprocessing.from_dict(
        {"spatial_dims": len(spatial), "in_channels": 2, "num_classes": 3, "patch_size": patch}
    )
    probs = predict_volume(model, image, pre, overlap=0.5, sw_batch_size=3, tta=tta)
    with torch.no_grad():
        ref = torch.softmax(model.conv(image[None]), 1)[0]
    assert probs.shape == (3, *spatial) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs.sum(0), torch.ones(spatial), atol=1e-5, rtol=0)


def test_predict_volume_with_real_unet_restores_train_mode():
    model = create_model("unet", in_channels=1, out_channels=2, spatial_dims=2, features=(4, 8, 16))
    model.train()
    probs = predict_volume(model, torch.randn(1, 30, 21), None)
    assert probs.shape == (2, 30, 21)
    assert model.training
    with pytest.raises(InputError, match="overlap"):
        predict_volume(model, torch.randn(1, 8, 8), None, overlap=1.0)


def test_find_inputs(tmp_path):
    for name in ("b_0000.nii.gz", "b_0001.nii.gz", "a_0000.nii.gz", "a_0001.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    assert find_inputs(tmp_path, in_channels=2) == [
        ("a", [tmp_path / "a_0000.nii.gz", tmp_path / "a_0001.nii.gz"]),
        ("b", [tmp_path / "b_0000.nii.gz", tmp_path / "b_0001.nii.gz"]),
    ]
    with pytest.raises(InputError, match="expects 3"):
        find_inputs(tmp_path, in_channels=3)
    single = tmp_path / "one"
    single.mkdir()
    (single / "x_0000.nrrd").write_bytes(b"x")
    (single / "y.png").write_bytes(b"x")
    (single / "notes.txt").write_bytes(b"x")
    assert find_inputs(single) == [("x", [single / "x_0000.nrrd"]), ("y", [single / "y.png"])]
    assert find_inputs(single / "y.png") == [("y", [single / "y.png"])]
    with pytest.raises(InputError, match="does not exist"):
        find_inputs(tmp_path / "missing")


def _checkpoint(tmp_path: Path, spatial_dims: int) -> Path:
    size = (32, 32) if spatial_dims == 2 else (16, 16, 16)
    root = make_phantom_dataset(
        tmp_path / f"ph{spatial_dims}", spatial_dims=spatial_dims, num_train=2, num_test=1, size=size
    )
    pre = build_preprocessing(scan_dataset(root), patch_size=size)
    model = create_model("unet", in_channels=1, out_channels=3, spatial_dims=spatial_dims, features=(4, 8))
    return save_checkpoint(tmp_path / f"ck{spatial_dims}.pt", build_checkpoint(model, preprocessing=pre, rng=False))


def test_predict_cli_keeps_geometry_and_reports_bad_case(tmp_path):
    """Subprocess: an oblique NIfTI and an NRRD come back on their own grids; a corrupt file fails alone."""
    ckpt = _checkpoint(tmp_path, 3)
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    angle = 0.3
    affine = np.array(
        [
            [0.0, -1.2 * np.cos(angle), 1.2 * np.sin(angle), 10.0],
            [0.9, 0.0, 0.0, -4.0],
            [0.0, 1.2 * np.sin(angle), 1.2 * np.cos(angle), 7.5],
            [0, 0, 0, 1],
        ]
    )  # permuted, flipped, rotated axes with anisotropic spacing
    nib.save(nib.Nifti1Image(rng.normal(size=(18, 14, 11)).astype(np.float32), affine), str(inputs / "vol_0000.nii.gz"))
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.8, 0.8, 2.0]),
        "space origin": np.array([-5.0, 3.0, 12.0]),
        "kinds": ["domain"] * 3,
    }
    nrrd.write(str(inputs / "scan.nrrd"), rng.normal(size=(13, 17, 9)).astype(np.float32), header)
    (inputs / "broken.nii.gz").write_bytes(b"not a nifti file at all")
    (inputs / "not_dicom").mkdir()
    (inputs / "not_dicom" / "IM0001.dcm").write_bytes(b"named like a slice, not DICOM")  # a case, failing alone

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusionseg",
            "predict",
            "--checkpoint",
            str(ckpt),
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--tta",
            "--probabilities",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "broken" in proc.stderr and "not_dicom" in proc.stderr and "2 of 4" in proc.stderr
    assert "Traceback" not in proc.stderr
    names = sorted(os.listdir(out))
    assert names == [
        ".fusionseg-outputs",
        "scan.nrrd",
        "scan_probabilities.nrrd",
        "vol.nii.gz",
        "vol_probabilities.nii.gz",
    ]

    pred = nib.load(str(out / "vol.nii.gz"))
    assert pred.shape == (18, 14, 11)
    np.testing.assert_allclose(pred.affine, affine, atol=1e-5)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    probs = nib.load(str(out / "vol_probabilities.nii.gz"))
    assert probs.shape[:3] == (18, 14, 11)

    data, head = nrrd.read(str(out / "scan.nrrd"))
    assert data.shape == (13, 17, 9)
    np.testing.assert_allclose(head["space origin"], header["space origin"], atol=1e-6)
    np.testing.assert_allclose(np.abs(head["space directions"]), header["space directions"], atol=1e-6)


def test_predict_main_2d_png_with_probabilities(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, 2)
    images = tmp_path / "ph2" / "test" / "images"
    out = tmp_path / "out"
    assert (
        predict_cli.main(["--checkpoint", str(ckpt), "--input", str(images), "--output", str(out), "--probabilities"])
        == 0
    )
    pred = np.asarray(Image.open(out / "phantom_000.png"))
    assert pred.shape == (32, 32) and pred.max() <= 2
    probs = np.load(out / "phantom_000_probabilities.npz")["probabilities"]
    assert probs.shape == (3, 32, 32)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=3e-3)
    assert "wrote 1 prediction" in capsys.readouterr().out


def test_predict_rejects_non_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "weights.pt", {"conv.weight": torch.zeros(1)})
    with pytest.raises(InputError, match="fusionseg"):
        infer.load_model(path)


@pytest.mark.parametrize(("native_bf16", "bf16_faster"), [(True, True), (True, False), (False, False)])
def test_predict_amp_follows_the_cpu_rule(native_bf16, bf16_faster, tmp_path, capsys, monkeypatch):
    """--amp: bf16 where the CPU has native bf16 and a timed window batch is faster in bf16; elsewhere fp32 (same
    labels as without --amp) and a note saying why."""
    monkeypatch.setattr("fusionseg.runtime.devices.cpu_has_native_bf16", lambda: native_bf16)
    timings = {None: 2.0, torch.bfloat16: 1.0 if bf16_faster else 2.5}
    monkeypatch.setattr(
        "fusionseg.runtime.precision.time_step", lambda model, shape, device, dtype, mode: timings[dtype]
    )
    ckpt = _checkpoint(tmp_path, 2)
    images = tmp_path / "ph2" / "test" / "images"
    args = ["--checkpoint", str(ckpt), "--input", str(images), "--device", "cpu", "--no-progress"]
    dtypes = []
    real_forward = torch.nn.Conv2d.forward
    monkeypatch.setattr(
        torch.nn.Conv2d, "forward", lambda self, x: dtypes.append(real_forward(self, x).dtype) or real_forward(self, x)
    )
    assert predict_cli.main([*args, "--output", str(tmp_path / "amp"), "--amp"]) == 0
    out = capsys.readouterr().out
    assert ("no native bfloat16" in out) is (not native_bf16)
    assert ("float32 kept for infer steps: bfloat16 2.5 s vs float32 2 s" in out) is (native_bf16 and not bf16_faster)
    assert set(dtypes) == {torch.bfloat16 if bf16_faster else torch.float32}
    assert predict_cli.main([*args, "--output", str(tmp_path / "fp32")]) == 0
    if not bf16_faster:  # the fallback is plain fp32: identical label maps
        a = np.asarray(Image.open(tmp_path / "amp" / "phantom_000.png"))
        b = np.asarray(Image.open(tmp_path / "fp32" / "phantom_000.png"))
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("labels", "order", "activation"),
    [
        ({"background": 0, "a": 1, "b": 2}, None, "softmax"),
        ({"background": 0, "whole": [1, 2], "core": 2}, [1, 2], "sigmoid"),
    ],
)
def test_probabilities_read_back_match_the_label_map_after_resampling(labels, order, activation, tmp_path):
    """An oblique, anisotropic NIfTI resampled to 1.5 mm for the model: the written probabilities (on the input
    grid) sum to 1 / lie in [0, 1], and argmax / region painting of them is exactly the written label map."""
    from dataset_builders import OBLIQUE_3D, check_written_probabilities, nnunet_dataset

    rng = np.random.default_rng(0)
    shape = (14, 12, 6)
    label = np.zeros(shape, np.uint8)
    label[3:11, 3:9, 1:5] = 1
    label[5:9, 5:7, 2:4] = 2
    entries = {"channel_names": {"0": "T1"}, "labels": labels, **({"regions_class_order": order} if order else {})}
    root = nnunet_dataset(
        tmp_path / "ds", {"c0": [rng.normal(size=shape).astype(np.float32)]}, {"c0": label}, ".nii.gz",
        OBLIQUE_3D, **entries,
    )  # fmt: skip
    pre = build_preprocessing(scan_dataset(root), target_spacing=(1.5, 1.5, 1.5), patch_size=(8, 8, 8))
    assert pre.activation == activation
    model = create_model("unet", in_channels=1, out_channels=pre.out_channels, spatial_dims=3, features=(4, 8))
    ckpt = save_checkpoint(tmp_path / "ck.pt", build_checkpoint(model, preprocessing=pre, rng=False))
    out = tmp_path / "out"
    argv = ["--checkpoint", str(ckpt), "--input", str(root / "imagesTr"), "--output", str(out), "--probabilities"]
    assert predict_cli.main([*argv, "--no-progress", "--threads", "1"]) == 0
    written = nib.load(str(out / "c0.nii.gz"))
    assert written.shape == shape and np.allclose(written.affine, OBLIQUE_3D, atol=1e-5)
    assert check_written_probabilities(out, pre) == 1
    probs = np.asarray(nib.load(str(out / "c0_probabilities.nii.gz")).dataobj)
    assert probs.shape == (*shape, pre.out_channels) and probs.std() > 0


def test_predict_volume_activation_follows_the_preprocessing():
    model = Pointwise(2)
    image = torch.randn(2, 8, 8)
    with torch.no_grad():
        logits = model(image[None])[0]
    classes = Preprocessing.from_dict({"spatial_dims": 2, "in_channels": 2, "num_classes": 3})
    regions = Preprocessing.from_dict(  # three regions: sigmoid outputs
        {"spatial_dims": 2, "in_channels": 2, "num_classes": 4, "regions": [[1, 2, 3], [2, 3], [3]],
         "regions_class_order": [1, 2, 3]}
    )  # fmt: skip
    assert (classes.activation, regions.activation) == ("softmax", "sigmoid")
    soft = predict_volume(model, image, classes, overlap=0.0)
    sig = predict_volume(model, image, regions, overlap=0.0)
    torch.testing.assert_close(soft, torch.softmax(logits, 0))
    torch.testing.assert_close(sig, torch.sigmoid(logits))
    torch.testing.assert_close(predict_volume(model, image, None, overlap=0.0), soft)
    with pytest.raises(ValueError, match="activation"):
        predict_volume(model, image, None, activation="relu")


def test_resolve_checkpoints(tmp_path):
    from fusionseg.inference.checkpoint_files import resolve_checkpoints

    cv = tmp_path / "cv"
    for k in (0, 1, 10, 2):
        (cv / f"fold_{k}").mkdir(parents=True)
        (cv / f"fold_{k}" / "best.pt").write_bytes(b"x")
    (cv / "postprocessing.json").write_text("{}")
    files, plan = resolve_checkpoints([cv])
    assert [p.parent.name for p in files] == ["fold_0", "fold_1", "fold_2", "fold_10"]
    assert plan == cv / "postprocessing.json"
    single = tmp_path / "single"
    single.mkdir()
    (single / "best.pt").write_bytes(b"x")
    assert resolve_checkpoints([single, tmp_path / "a.pt"]) == ([single / "best.pt", tmp_path / "a.pt"], None)
    assert resolve_checkpoints([cv, single])[1] is None  # postprocessing only from one run folder alone
    with pytest.raises(InputError, match="fold_"):
        resolve_checkpoints([tmp_path])  # a folder without best.pt or fold_*/best.pt
