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
from fusionseg.errors import InputError
from fusionseg.evaluation.evaluate import evaluate_folders
from fusionseg.evaluation.metrics import case_metrics, dice_iou, surface_distances

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
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

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
    for tolerance in (0.5, 1.0, 2.5):
        nsd = case_metrics(pred, gt, spacing, labels=[1], nsd_tolerance=tolerance)[1]["nsd"]
        onehot_p, onehot_g = torch.cat([1 - p, p], 1), torch.cat([1 - g, g], 1)
        ref = compute_surface_dice(onehot_p, onehot_g, [tolerance], spacing=list(spacing)).item()
        assert nsd == pytest.approx(ref, rel=1e-6)


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
    assert lines[0] == "case,label,name,dice,iou,hd95,msd,nsd" and len(lines) == 1 + 4
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
def test_atlas_labels_real_data(real_data_dir):
    """Real AAL atlas crop (many labels, 1 mm): per-label boxes give the brute-force Dice and MONAI's HD95."""
    from monai.metrics import compute_hausdorff_distance

    img = nib.load(str(real_data_dir / "brain3d" / "aal.nii.gz"))
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


def test_normalised_surface_dice_by_hand():
    """A 10×10 square shifted by one voxel along axis 0: 36 surface voxels each; 18 of each surface lie on the
    other (distance 0), the other 18 at distance 1 voxel. So NSD = 36/72 below one voxel, 1 from one voxel on."""
    gt = _box((24, 24), (5, 5), (15, 15))
    pred = _box((24, 24), (6, 5), (16, 15))
    d_pg, d_gp = surface_distances(pred.astype(bool), gt.astype(bool), (1.0, 1.0))
    assert d_pg.size == d_gp.size == 36 and np.count_nonzero(d_pg == 0) == np.count_nonzero(d_gp == 0) == 18
    assert case_metrics(pred, gt, (1.0, 1.0), [1], nsd_tolerance=0.5)[1]["nsd"] == 0.5
    assert case_metrics(pred, gt, (1.0, 1.0), [1], nsd_tolerance=1.0)[1]["nsd"] == 1.0
    # 2 mm voxels along the shift: the shifted rows are 2 mm away, except their two voxels next to a side
    # column of the other square (1 mm across): (18 + 2) + (18 + 2) of 72 within 1 mm.
    assert case_metrics(pred, gt, (2.0, 1.0), [1], nsd_tolerance=1.0)[1]["nsd"] == pytest.approx(40 / 72)
    assert case_metrics(pred, gt, (2.0, 1.0), [1], nsd_tolerance=2.0)[1]["nsd"] == 1.0


def _nifti(path, array, affine):
    nib.save(nib.Nifti1Image(np.asarray(array, np.uint8), np.asarray(affine, float)), str(path))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("shape", r"shape \(8, 8, 6\) vs \(8, 8, 5\)"),
        ("spacing", r"spacing \(1, 1, 2\) vs \(1, 1, 1\) mm"),
        ("origin", r"origin \(3, 0, 0\) vs \(0, 0, 0\) mm"),
        ("direction", r"direction"),
    ],
)
def test_evaluate_refuses_predictions_on_another_grid(change, message, tmp_path, capsys):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    gt = _box((8, 8, 5), (2, 2, 1), (6, 6, 4))
    affine = np.eye(4)
    pred, pred_affine = gt, affine.copy()
    if change == "shape":
        pred = np.zeros((8, 8, 6), np.uint8)
    elif change == "spacing":
        pred_affine[2, 2] = 2.0
    elif change == "origin":
        pred_affine[0, 3] = 3.0
    else:
        pred_affine[:3, :3] = np.diag([-1.0, 1.0, 1.0])
    _nifti(gt_dir / "case.nii.gz", gt, affine)
    _nifti(pred_dir / "case.nii.gz", pred, pred_affine)
    with pytest.raises(InputError, match=message) as info:
        evaluate_folders(pred_dir, gt_dir)
    assert str(pred_dir / "case.nii.gz") in str(info.value) and str(gt_dir / "case.nii.gz") in str(info.value)
    from fusionseg.cli import main as cli_main  # the CLI prints the same error as one line

    assert cli_main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "different grids" in err


def test_evaluate_scores_regions_and_leaves_out_the_ignore_label(tmp_path):
    """dataset.json with regions and an ignore label: per-region Dice by hand; ignore voxels count for nothing."""
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    gt = np.zeros((10, 10), np.uint8)
    gt[2:8, 2:8] = 1  # 36 voxels of label 1 ...
    gt[4:6, 4:6] = 2  # ... of which 4 are label 2
    gt[0, :] = 3  # ignore (unannotated) row
    pred = np.zeros_like(gt)
    pred[2:8, 2:6] = 1  # whole: 24 of 36 voxels
    pred[4:6, 4:6] = 2  # core: exact
    pred[0, :] = 2  # anything on the ignore row must not count
    Image.fromarray(gt).save(gt_dir / "c.png")
    Image.fromarray(pred).save(pred_dir / "c.png")
    meta = {
        "labels": {"background": 0, "whole": [1, 2], "core": 2, "ignore": 3},
        "regions_class_order": [1, 2],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    from fusionseg.evaluation.evaluate import read_label_layout

    rows, summary = evaluate_folders(pred_dir, gt_dir, layout=read_label_layout(tmp_path))
    by = {r["label"]: r for r in rows}
    assert summary["labels"] == ["whole", "core"] and summary["regions"] == {"whole": [1, 2], "core": [2]}
    assert by["whole"]["dice"] == pytest.approx(2 * 24 / (24 + 36))
    assert by["core"]["dice"] == 1.0 and by["core"]["hd95"] == 0.0 and by["core"]["nsd"] == 1.0
    # Without the dataset.json, label 3 is a class and the ignore row is scored.
    _, plain = evaluate_folders(pred_dir, gt_dir)
    assert plain["labels"] == [1, 2, 3] and plain["per_class"]["2"]["dice"]["mean"] < 1.0
    with pytest.raises(InputError, match="--labels"):
        evaluate_folders(pred_dir, gt_dir, [1], layout=read_label_layout(tmp_path / "dataset.json"))


def test_evaluate_with_dataset_json_scores_declared_classes_and_ignore(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    gt = np.zeros((8, 8), np.uint8)
    gt[2:6, 2:6] = 1
    gt[7, :] = 4  # ignore
    pred = gt.copy()
    pred[7, :] = 1  # predicted foreground on unannotated voxels: not an error
    Image.fromarray(gt).save(gt_dir / "c.png")
    Image.fromarray(pred).save(pred_dir / "c.png")
    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "a": 1, "b": 2, "c": 3, "ignore": 4}})
    )
    from fusionseg.evaluation.evaluate import read_label_layout

    rows, summary = evaluate_folders(pred_dir, gt_dir, layout=read_label_layout(tmp_path))
    assert summary["labels"] == [1, 2, 3] and summary["ignore_label"] == 4
    assert [r["dice"] for r in rows] == [1.0, 1.0, 1.0]  # classes 2, 3 absent from both: 1 by convention


def test_tables_name_the_classes_of_dataset_json(tmp_path, capsys):
    """metrics.csv, summary.json and the printed table say `nodule`, not `1` (dataset.json beside the ground truth)."""
    dataset, pred_dir = tmp_path / "Dataset501_Lung", tmp_path / "pred"
    (dataset / "labelsTs").mkdir(parents=True)
    pred_dir.mkdir()
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "nodule": 1, "vessel": 2}}))
    gt = _box((12, 12, 6), (2, 2, 1), (8, 8, 5))
    gt[9:11, 9:11, 2:4] = 2
    for cid in ("a", "b"):
        nib.save(nib.Nifti1Image(gt, np.eye(4)), dataset / "labelsTs" / f"{cid}.nii.gz")
        nib.save(nib.Nifti1Image(gt, np.eye(4)), pred_dir / f"{cid}.nii.gz")
    assert evaluate_cli.main(["--pred", str(pred_dir), "--gt", str(dataset / "labelsTs")]) == 0
    printed = capsys.readouterr().out
    assert "| nodule | 1.0000 ± 0.0000" in printed and "| vessel |" in printed and "| 1 |" not in printed
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["label_names"] == {"1": "nodule", "2": "vessel"}
    rows = (pred_dir / "metrics.csv").read_text().splitlines()
    assert rows[1].startswith("a,1,nodule,1,") and rows[2].startswith("a,2,vessel,1,")


def test_dataset_json_nested_too_deeply_is_one_line(tmp_path):
    from fusionseg.evaluation.evaluate import read_label_layout

    (tmp_path / "dataset.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match=r"dataset.json: nested too deeply to read; fix the JSON syntax$"):
        read_label_layout(tmp_path)
