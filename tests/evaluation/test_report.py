"""evaluation/report.py reads arrays through the format registry: MetaImage, NRRD, NumPy and raster files alike."""

from __future__ import annotations

import numpy as np
import pytest

from dataset_builders import save_any
from fusionseg.evaluation.report import best_and_worst_overlays, read_array


@pytest.mark.parametrize("name", ["case.mha", "case.nrrd", "case.nii.gz", "case.png"])
def test_label_maps_read_as_stored(tmp_path, name):
    shape = (12, 10) if name.endswith(".png") else (12, 10, 6)
    label = np.random.default_rng(0).integers(0, 3, shape).astype(np.uint8)
    path = save_any(tmp_path / name, label)
    out = read_array(path, label=True)
    assert out.shape == shape and np.array_equal(out, label)


def test_npz_image_channels_come_last(tmp_path):
    probs = np.random.default_rng(1).random((2, 8, 6)).astype(np.float32)
    np.savez(tmp_path / "case.npz", probabilities=probs)
    out = read_array(tmp_path / "case.npz")
    assert out.shape == (8, 6, 2)
    np.testing.assert_allclose(out[..., 1], probs[1])


def test_overlays_of_metaimage_cases(tmp_path):
    rng = np.random.default_rng(2)
    files = {}
    for cid in ("a", "b", "c"):
        gt = np.zeros((16, 16, 4), np.uint8)
        gt[4:12, 4:12] = 1
        files[cid] = (
            save_any(tmp_path / f"{cid}_img.mha", rng.random((16, 16, 4)).astype(np.float32)),
            save_any(tmp_path / f"{cid}_gt.mha", gt),
            save_any(tmp_path / f"{cid}_pred.mha", np.roll(gt, 1, axis=0)),
        )
    paths = best_and_worst_overlays(
        {"a": 0.9, "b": 0.5, "c": 0.7},
        {cid: f[0] for cid, f in files.items()},
        {cid: f[2] for cid, f in files.items()},
        {cid: f[1] for cid, f in files.items()},
        tmp_path / "out",
        k=1,
    )
    assert sorted(p.name for p in paths) == ["best_a.png", "worst_b.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def _world(shape, affine):
    """RAS+ coordinates (3, *shape) of every voxel centre."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), 0).reshape(3, -1)
    return (np.asarray(affine)[:3, :3] @ grid + np.asarray(affine)[:3, 3:]).reshape(3, *shape)


AFFINES = {
    "RAS": np.diag([0.8, 0.8, 2.5, 1.0]),
    "LPS (ITK, DICOM)": np.diag([-0.8, -0.8, 2.5, 1.0]),
    # array axes: superior, patient's left, posterior (a sagittal-first acquisition), slightly oblique
    "permuted oblique": np.array(
        [[0.0, -1.0, 0.05, 10.0], [0.0, 0.05, -1.0, 4.0], [2.0, 0.0, 0.0, -7.0], [0.0, 0.0, 0.0, 1.0]]
    ),
}


@pytest.mark.parametrize("name", AFFINES)
def test_3d_overlays_are_radiological_from_the_affine(tmp_path, name):
    """A marker on the patient's right is drawn on the viewer's left; an anterior one at the top."""
    from fusionseg.evaluation.report import overlay_png, radiological_view

    affine, shape = AFFINES[name], (20, 24, 10)
    x, y, _ = _world(shape, affine)
    right = (x > np.median(x)).astype(np.uint8)  # the patient's right half (RAS+: +x is right)
    anterior = (y > np.median(y)).astype(np.uint8)
    view_right, view_anterior = radiological_view(right, affine), radiological_view(anterior, affine)
    k = view_right.shape[-1] // 2
    rows, cols = view_right.shape[:2]
    assert view_right[:, : cols // 2 - 1, k].all() and not view_right[:, cols // 2 + 1 :, k].any()
    assert view_anterior[: rows // 2 - 1, :, k].all() and not view_anterior[rows // 2 + 1 :, :, k].any()
    assert overlay_png(None, right, anterior, tmp_path / "o.png", "case", affine, {1: "tumour"}).stat().st_size > 1000
