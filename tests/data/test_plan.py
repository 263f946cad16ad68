"""The dataset plan: nnU-Net's target-spacing rule (compared with nnU-Net's own planner), patch from the
memory budget, overrides, the plans.json round trip and its hash."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest

from dataset_builders import nnunet_dataset
from fusionseg.data import scan_dataset
from fusionseg.data.plan import (
    format_plan,
    load_plan,
    nnunet_target_spacing,
    plan_dataset,
    plan_hash,
    save_plan,
)
from fusionseg.errors import InputError

NEEDS_NNUNET = "nnunetv2 is not installed (pip install fusionseg[nnunet])"


def _ct_dataset(root, spacings, shape=(48, 40, 8), seed=0):
    """A CT-like dataset whose case i has voxel size ``spacings[i]`` (RAS x, y, z); a zero border to crop."""
    rng = np.random.default_rng(seed)
    images, labels = {}, {}
    for i, _ in enumerate(spacings):
        image = np.zeros(shape, np.int16)
        image[2:-2, 3:-3, 1:-1] = rng.integers(-200, 300, size=(shape[0] - 4, shape[1] - 6, shape[2] - 2))
        label = np.zeros(shape, np.uint8)
        label[10:20, 10:20, 2:5] = 1
        images[f"case_{i:03d}"] = [image]
        labels[f"case_{i:03d}"] = label
    root = nnunet_dataset(
        root, images, labels, ".nii.gz", channel_names={"0": "CT"}, labels={"background": 0, "organ": 1}
    )
    # Per-case voxel sizes: rewrite each file's affine.
    import nibabel as nib

    for i, spacing in enumerate(spacings):
        for path in (root / "imagesTr" / f"case_{i:03d}_0000.nii.gz", root / "labelsTr" / f"case_{i:03d}.nii.gz"):
            img = nib.load(str(path))
            affine = np.diag([*spacing, 1.0])
            out = nib.Nifti1Image(np.asarray(img.dataobj), affine)
            out.set_qform(affine, code=1)
            out.set_sform(affine, code=1)
            nib.save(out, str(path))
    return root


ISOTROPIC = [(1.0, 1.0, 1.2), (0.9, 1.1, 1.0), (1.2, 0.8, 1.4), (1.0, 1.0, 1.0), (0.7, 1.3, 1.1)]
ANISOTROPIC = [(0.8, 0.8, 2.5), (0.8, 0.8, 3.0), (0.7, 0.7, 4.0), (0.9, 0.9, 5.0), (0.8, 0.8, 6.0)]


def test_rule_median_then_10th_percentile_for_anisotropic_data():
    spacings = np.array(ANISOTROPIC)
    assert nnunet_target_spacing(spacings[:, :2]) == [0.8, 0.8]
    with pytest.raises(LookupError):  # anisotropic spacing: the cropped shapes decide
        nnunet_target_spacing(spacings)
    few_slices = np.tile([48, 40, 8], (5, 1))
    np.testing.assert_allclose(nnunet_target_spacing(spacings, few_slices), [0.8, 0.8, 2.7])
    many_slices = np.tile([48, 40, 40], (5, 1))
    np.testing.assert_allclose(nnunet_target_spacing(spacings, many_slices), [0.8, 0.8, 4.0])


@pytest.mark.parametrize("spacings", [ISOTROPIC, ANISOTROPIC], ids=["isotropic", "anisotropic"])
def test_target_spacing_equals_nnunet_planner(tmp_path, spacings):
    pytest.importorskip("nnunetv2", reason=NEEDS_NNUNET)
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    root = _ct_dataset(tmp_path / "Dataset950_Aniso", spacings)
    info = scan_dataset(root)
    shapes, nn_spacings = [], []
    for case in info.cases:
        shape, spacing, *_ = DatasetFingerprintExtractor.analyze_case(
            [str(case.images[0])], str(case.label), SimpleITKIO, 100
        )
        shapes.append(shape)
        nn_spacings.append(spacing)
    planner = ExperimentPlanner.__new__(ExperimentPlanner)
    planner.dataset_fingerprint = {"spacings": nn_spacings, "shapes_after_crop": shapes}
    planner.anisotropy_threshold = 3
    planner.overwrite_target_spacing = None
    expected = planner.determine_fullres_target_spacing()[::-1]  # SimpleITK order (z, y, x) → RAS (x, y, z)
    plan = plan_dataset(info)
    np.testing.assert_allclose(plan.target_spacing, expected, rtol=1e-6)
    stored = plan.to_dict()  # plans.json shows the spacing beside the preprocessing that holds it
    assert stored["preprocessing"]["target_spacing"] == stored["target_spacing"] == list(plan.target_spacing)
    if spacings is ANISOTROPIC:
        assert plan.target_spacing[2] == pytest.approx(2.7)  # not the median 4.0


def test_patch_fits_the_memory_budget_and_overrides_win(tmp_path):
    root = _ct_dataset(tmp_path / "ds", [(1.0, 1.0, 1.0)] * 3, shape=(40, 40, 40))
    info = scan_dataset(root)
    plan = plan_dataset(info, size_multiple=8)
    assert plan.patch_size == (40, 40, 40) and plan.batch_size == 2
    small = plan_dataset(info, size_multiple=8, memory_gb=64**3 * 2 / 2**19 / 4)  # room for 2 × 32,32,32
    assert np.prod(small.patch_size) * 2 <= 64**3 * 2 / 4 and min(small.patch_size) >= 8
    fixed = plan_dataset(info, target_spacing=(2.0, 2.0, 2.0), patch_size=(16, 16, 8), batch_size=4)
    assert fixed.target_spacing == (2.0, 2.0, 2.0) and fixed.patch_size == (16, 16, 8)
    assert fixed.batch_size == 4 and fixed.hash != plan.hash
    assert plan_dataset(info, target_spacing="keep").target_spacing is None
    with pytest.raises(InputError, match="target_spacing"):
        plan_dataset(info, target_spacing="auto")


def test_plan_round_trip_table_and_hash(tmp_path):
    root = _ct_dataset(tmp_path / "ds", ISOTROPIC[:3])
    plan = plan_dataset(scan_dataset(root), size_multiple=8)
    path = save_plan(plan, tmp_path / "plans.json")
    assert load_plan(path) == plan and path.read_text() == json.dumps(plan.to_dict(), indent=2) + "\n"
    assert plan.hash == plan_hash(plan.preprocessing) and len(plan.hash) == 12
    table = format_plan(plan)
    assert "target spacing (mm)" in table and "ct clip" in table and plan.hash in table
    fitted = plan.with_patch_size((8, 8, 8))  # the patch does not change the cached voxels
    assert fitted.patch_size == fitted.preprocessing.patch_size == (8, 8, 8) and fitted.hash == plan.hash
    assert replace(plan.preprocessing, target_spacing=(2.0, 2.0, 2.0)) != plan.preprocessing
    assert plan_hash(replace(plan.preprocessing, target_spacing=(2.0, 2.0, 2.0))) != plan.hash
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="rerun `fusionseg plan`"):
        load_plan(tmp_path / "bad.json")
    stored = plan.to_dict()
    for key, value in (("patch_size", [8, 8, 8]), ("hash", "0" * 12)):  # edited beside the preprocessing
        (tmp_path / "edited.json").write_text(json.dumps({**stored, key: value}))
        with pytest.raises(InputError, match=f"the plan's {key} do not match its preprocessing"):
            load_plan(tmp_path / "edited.json")


def test_second_plan_of_unchanged_data_reads_no_voxels(tmp_path, monkeypatch):
    import fusionseg.data.fingerprint as fingerprint_module

    root = _ct_dataset(tmp_path / "ds", ANISOTROPIC)  # CT statistics and cropped shapes both need voxels
    info = scan_dataset(root)
    first = plan_dataset(info, cache=tmp_path / "cache")

    def no_reads(*args, **kwargs):
        raise AssertionError("read voxels")

    monkeypatch.setattr(fingerprint_module, "load_checked", no_reads)
    assert plan_dataset(info, cache=tmp_path / "cache") == first
    path = info.cases[0].images[0]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert plan_dataset(info, cache=tmp_path / "cache") == first  # touched, same content: nothing to measure
    path.write_bytes(path.read_bytes() + b"\0")  # other content
    with pytest.raises(AssertionError, match="read voxels"):  # a changed file: measured again
        plan_dataset(info, cache=tmp_path / "cache")


def test_statistics_read_by_worker_processes_are_the_same(tmp_path):
    root = _ct_dataset(tmp_path / "ds", ISOTROPIC)
    info = scan_dataset(root)
    single = plan_dataset(info, cache=tmp_path / "a")
    pooled = plan_dataset(info, cache=tmp_path / "b", workers=2)
    assert pooled.preprocessing.channel_normalisation == single.preprocessing.channel_normalisation
    assert single.preprocessing.channel_normalisation[0].scheme == "ct"
