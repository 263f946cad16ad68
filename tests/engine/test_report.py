"""engine/report.py reads arrays through the format registry: MetaImage, NRRD, NumPy and raster files alike."""

from __future__ import annotations

import numpy as np
import pytest

from dataset_builders import save_any
from fusionseg.engine.report import best_and_worst_overlays, read_array


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
