"""Metrics (Dice, IoU, HD95, mean surface distance in mm) and ``fusionseg evaluate``."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from fusionseg.cli import evaluate as evaluate_cli
from fusionseg.engine.evaluate import evaluate_folders
from fusionseg.engine.metrics import case_metrics, dice_iou, surface_distances
from fusionseg.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def _box(shape, lo, hi):
    m = np.zeros(shape, dtype=np.uint8)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1
    return m


def test_dice_iou_known_values():
    a = _box((10, 10), (0, 0), (4, 5))  # 20 voxels
    b = _box((10, 10), (2, 0), (6, 5))  # 20 voxels, 10 shared
    dice, iou = dice_iou(a.astype(bool), b.astype(bool))
    assert dice == pytest.approx(0.5)
    assert iou == pytest.approx(10 / 30)


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((24, 20), (1.0, 1.0)), ((24, 20), (0.5, 2.0)), ((16, 14, 12), (1.0, 1.0, 1.0)), ((16, 14, 12), (0.7, 1.3, 2.5))],
)
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_surface_metrics_match_monai(shape, spacing):
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(len(shape) + int(spacing[-1] * 10))
    nd = len(shape)
    # Two overlapping blobs with ragged borders.
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    center = np.array(shape) / 2
    r = np.sqrt((((grid - center.reshape(-1, *[1] * nd)) / (np.array(shape) / 4).reshape(-1, *[1] * nd)) ** 2).sum(0))
    gt = (r < 1.0).astype(np.uint8)
    pred = ((r + rng.normal(0, 0.15, shape)) < 0.9).astype(np.uint8)
    ours = case_metrics(pred, gt, spacing, labels=[1])[1]
    p = torch.from_numpy(pred)[None, None].float()
    g = torch.from_numpy(gt)[None, None].float()
    hd = compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=list(spacing)).item()
    asd = compute_average_surface_distance(p, g, include_background=True, symmetric=True, spacing=list(spacing)).item()
    assert ours["hd95"] == pytest.approx(hd, rel=1e-5)
    assert ours["msd"] == pytest.approx(asd, rel=1e-5)  # mean over the surface voxels of both sides
    d_pg, d_gp = surface_distances(pred.astype(bool), gt.astype(bool), spacing)
    assert ours["msd"] == pytest.approx(np.concatenate([d_pg, d_gp]).mean(), rel=1e-9)
    assert 0 < ours["dice"] < 1


def test_surface_distance_is_in_mm():
    gt = _box((30, 30), (10, 10), (20, 20))
    pred = _box((30, 30), (12, 10), (22, 20))  # shifted 2 voxels along axis 0
    one = case_metrics(pred, gt, (1.0, 1.0), [1])[1]
    two = case_metrics(pred, gt, (2.0, 1.0), [1])[1]
    assert one["hd95"] == pytest.approx(2.0)
    assert two["hd95"] == pytest.approx(4.0)
    assert two["msd"] > one["msd"] > 0


def test_empty_mask_conventions():
    empty = np.zeros((8, 8), np.uint8)
    full = _box((8, 8), (2, 2), (5, 5))
    both_empty = case_metrics(empty, empty, (1, 1), [1])[1]
    assert both_empty == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "msd": 0.0, "nsd": 1.0}
    missed = case_metrics(empty, full, (1, 1), [1])[1]
    assert missed["dice"] == 0.0 and missed["iou"] == 0.0 and missed["nsd"] == 0.0
    assert math.isnan(missed["hd95"]) and math.isnan(missed["msd"])


def test_case_metrics_rejects_mismatch():
    with pytest.raises(InputError, match="shape"):
        case_metrics(np.zeros((4, 4)), np.zeros((4, 5)), (1, 1), [1])
    with pytest.raises(InputError, match="spacing"):
        case_metrics(np.zeros((4, 4)), np.zeros((4, 4)), (1, 1, 1), [1])


def _write_nifti(path, array, spacing):
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), str(path))


@pytest.fixture
def label_folders(tmp_path):
    """Three 3D cases with 2 classes at spacing (2, 1, 1) mm; case_b is perfect, case_c misses class 2."""
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    spacing = (2.0, 1.0, 1.0)
    gt = _box((12, 12, 12), (2, 2, 2), (6, 8, 8)) + 2 * _box((12, 12, 12), (7, 2, 2), (10, 6, 6))
    shifted = np.roll(gt, 1, axis=0)
    missing = np.where(gt == 2, 0, gt)
    for name, pred in [("case_a", shifted), ("case_b", gt), ("case_c", missing)]:
        _write_nifti(gt_dir / f"{name}.nii.gz", gt, spacing)
        _write_nifti(pred_dir / f"{name}.nii.gz", pred, spacing)
    return pred_dir, gt_dir


def test_evaluate_folders(label_folders):
    pred_dir, gt_dir = label_folders
    rows, summary = evaluate_folders(pred_dir, gt_dir)
    assert summary["labels"] == [1, 2] and summary["num_cases"] == 3
    by = {(r["case"], r["label"]): r for r in rows}
    assert by[("case_b", 1)]["dice"] == 1.0 and by[("case_b", 2)]["hd95"] == 0.0
    # A one-voxel shift along axis 0 is 2 mm with this spacing.
    assert by[("case_a", 1)]["hd95"] == pytest.approx(2.0)
    assert by[("case_c", 2)]["dice"] == 0.0 and math.isnan(by[("case_c", 2)]["hd95"])
    assert summary["per_class"]["2"]["hd95"]["undefined"] == 1
    dice_1 = [by[(c, 1)]["dice"] for c in ("case_a", "case_b", "case_c")]
    assert summary["per_class"]["1"]["dice"]["mean"] == pytest.approx(np.mean(dice_1))


def test_evaluate_main_writes_csv_json_and_overlays(tmp_path):
    gt_dir, pred_dir, img_dir, out = (tmp_path / n for n in ("gt", "pred", "img", "out"))
    for d in (gt_dir, pred_dir, img_dir):
        d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        gt = _box((32, 32), (4 + i, 4), (20, 20 + i))
        pred = _box((32, 32), (5 + 2 * i, 4), (20, 22))
        Image.fromarray(gt).save(gt_dir / f"c{i}.png")
        Image.fromarray(pred).save(pred_dir / f"c{i}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(img_dir / f"c{i}.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(gt_dir / "lonely.png")  # no prediction
    code = evaluate_cli.main(
        ["--pred", str(pred_dir), "--gt", str(gt_dir), "--images", str(img_dir), "--output", str(out)]
    )
    assert code == 0
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0] == "case,label,dice,iou,hd95,msd,nsd" and len(lines) == 1 + 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing"] == ["lonely"]
    assert len(summary["overlays"]) == 3  # 2 worst + 2 best of 3 predicted cases, no duplicates
    assert all((out / p).stat().st_size > 1000 for p in summary["overlays"])
    assert any(p.startswith("overlays/worst_") for p in summary["overlays"])


def test_evaluate_rejects_unmatched_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "b" / "y.png")
    with pytest.raises(InputError, match="matches"):
        evaluate_folders(tmp_path / "a", tmp_path / "b")
    with pytest.raises(InputError, match="not a folder"):
        evaluate_folders(tmp_path / "nope", tmp_path / "b")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_atlas_labels_real_data(shared_data):
    """Real AAL atlas crop (many labels, 1 mm): per-label boxes give the brute-force Dice and MONAI's HD95."""
    from monai.metrics import compute_hausdorff_distance

    img = nib.load(str(shared_data / "brain3d" / "aal.nii.gz"))
    gt = np.asarray(img.dataobj)[60:108, 90:138, 60:108].astype(np.uint8)
    pred = np.roll(gt, 1, axis=0)
    pred[:, :, :3] = 0
    labels = [int(v) for v in np.unique(gt) if v]
    assert len(labels) > 10
    result = case_metrics(pred, gt, img.header.get_zooms()[:3], labels)
    for label in labels:
        assert result[label]["dice"] == pytest.approx(dice_iou(pred == label, gt == label)[0], abs=1e-12)
    for label in labels[:3]:
        p = torch.from_numpy((pred == label).astype(np.float32))[None, None]
        g = torch.from_numpy((gt == label).astype(np.float32))[None, None]
        ref = compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=1.0).item()
        assert result[label]["hd95"] == pytest.approx(ref, rel=1e-5)
