"""Preprocessing to the cache: resumable, redoes changed cases only, survives SIGKILL, fails cleanly;
streamed patches (padding, foreground oversampling)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusionseg.data import make_phantom_dataset, scan_dataset
from fusionseg.data.plan import foreground_fraction, plan_dataset
from fusionseg.data.preprocess import cache_folder, default_cache_root, load_case, preprocess_dataset
from fusionseg.data.streaming import CachedCases, RandPatchd, cut_patch, patch_dataset
from fusionseg.errors import InputError

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def dataset(tmp_path):
    root = make_phantom_dataset(tmp_path / "ds", 3, num_train=4, num_test=0, size=(24, 20, 16))
    info = scan_dataset(root)
    return info, plan_dataset(info, size_multiple=8)


def _run(info, plan, cache, lines=None):
    return preprocess_dataset(info, plan, cache, progress=False, log=(lines.append if lines is not None else print))


def _arrays(folder):
    return {p.name: np.load(p) for p in sorted(Path(folder).glob("*_image.npy"))}


def test_second_run_does_nothing_and_a_changed_case_is_redone(dataset, tmp_path):
    info, plan = dataset
    first = _run(info, plan, tmp_path / "cache")
    assert sorted(first.done) == [c.case_id for c in info.cases] and not first.reused
    lines: list[str] = []
    second = _run(info, plan, tmp_path / "cache", lines)
    assert not second.done and len(second.reused) == 4 and "nothing to do" in lines[-1]
    label = info.cases[2].label
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))  # touched, same content
    assert _run(info, plan, tmp_path / "cache").reused == second.reused
    with pytest.raises(InputError, match="changed since the dataset was planned"):
        _edit_label(label)
        _run(info, plan, tmp_path / "cache")
    edited = plan_dataset(info, size_multiple=8)  # new content → new folder; the unchanged cases are linked
    third = _run(info, edited, tmp_path / "cache")
    assert third.done == [info.cases[2].case_id] and len(third.reused) == 3 and third.folder != first.folder
    assert (first.folder / "plans.json").exists() and first.folder == cache_folder(plan, tmp_path / "cache")
    assert os.path.samefile(first.folder / "phantom_000_image.npy", third.folder / "phantom_000_image.npy")


def _edit_label(path):
    import nibabel as nib

    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 1 - data[0, 0, 0]
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)


def test_cached_case_matches_the_whole_image_pipeline(dataset, tmp_path):
    from fusionseg.data import case_dict, eval_transforms

    info, plan = dataset
    report = _run(info, plan, tmp_path / "cache")
    case = load_case(report.folder, info.cases[0].case_id)
    reference = eval_transforms(plan.preprocessing)(case_dict(info.cases[0]))
    assert isinstance(case["image"], np.memmap)
    np.testing.assert_allclose(case["image"], reference["image"].numpy(), atol=1e-6)
    np.testing.assert_array_equal(case["label"], reference["label"][0].numpy())
    for value, coords in case["locations"].items():
        assert len(coords) > 0 and (case["label"][tuple(coords.T)] == value).all()
    cases = CachedCases(report.folder, [c.case_id for c in info.cases])
    assert isinstance(cases[:2], CachedCases) and cases[:2].case_ids == cases.case_ids[:2]  # lazy subsets
    item = cases[0]
    assert item["label"].shape == (1, 24, 20, 16) and item["label"].dtype.is_floating_point is False


def test_crop_to_the_nonzero_box(tmp_path, nifti_writer):
    from dataset_builders import nnunet_dataset

    image = np.zeros((20, 18, 10), np.float32)
    image[4:15, 3:12, 2:8] = np.random.default_rng(0).normal(5, 1, (11, 9, 6))
    label = np.zeros((20, 18, 10), np.uint8)
    label[6:9, 5:8, 3:5] = 1
    root = nnunet_dataset(tmp_path / "ds", {"c0": [image]}, {"c0": label}, ".nii.gz",
                          channel_names={"0": "MRI"}, labels={"background": 0, "a": 1})  # fmt: skip
    info = scan_dataset(root)
    report = _run(info, plan_dataset(info, size_multiple=8), tmp_path / "cache")
    case = load_case(report.folder, "c0")
    assert case["image"].shape == (1, 11, 9, 6) and case["props"]["crop_box"] == [[4, 15], [3, 12], [2, 8]]
    assert case["label"].sum() == label.sum()


def test_sigkill_mid_case_then_rerun_completes_with_nothing_corrupt(dataset, tmp_path):
    info, plan = dataset
    code = (
        "import json, sys; from fusionseg.data import scan_dataset; from fusionseg.data.preprocess import "
        "preprocess_dataset; from fusionseg.data.plan import Plan; plan = Plan.from_dict(json.loads(sys.argv[2])); "
        "preprocess_dataset(scan_dataset(sys.argv[1]), plan, sys.argv[3], progress=False)"
    )
    import json

    env = {**os.environ, "PYTHONPATH": str(SRC), "FUSIONSEG_FAULT": "preprocess.mid_case:3"}
    args = [sys.executable, "-c", code, str(info.root), json.dumps(plan.to_dict()), str(tmp_path / "cache")]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr  # SIGKILL inside the third case
    folder = cache_folder(plan, tmp_path / "cache")
    assert len(list(folder.glob("*.json"))) == 1 + 2  # plans.json + two complete cases
    report = _run(info, plan, tmp_path / "cache")
    assert len(report.done) == 2 and len(report.reused) == 2
    clean = _run(info, plan, tmp_path / "clean")
    assert _arrays(report.folder).keys() == _arrays(clean.folder).keys()
    for name, array in _arrays(clean.folder).items():
        np.testing.assert_array_equal(_arrays(report.folder)[name], array)
    assert [p.name for p in folder.glob(".*")] == []  # no temporary files, the lock file removed on release


def test_failing_case_is_one_line_and_skipped(dataset, tmp_path, monkeypatch):
    import fusionseg.data.preprocess as preprocess

    info, plan = dataset
    real = preprocess.preprocess_case

    def unreadable(case, pre):  # planning read the voxels; preprocessing finds them unreadable
        if case.case_id == "phantom_001":
            raise InputError(f"{case.images[0]}: cannot read the file; it is corrupt or truncated, re-export it")
        return real(case, pre)

    monkeypatch.setattr(preprocess, "preprocess_case", unreadable)
    lines: list[str] = []
    report = _run(info, plan, tmp_path / "cache", lines)
    assert list(report.failed) == [info.cases[1].case_id] and len(report.done) == 3
    assert sum("skipped case phantom_001" in line for line in lines) == 1
    with pytest.raises(InputError, match="phantom_001 could not be preprocessed"):
        report.check_complete([c.case_id for c in info.cases])


def test_full_disk_is_a_clear_error_and_leaves_no_half_written_case(dataset, tmp_path, monkeypatch):
    info, plan = dataset
    real_save = np.save
    calls = {"n": 0}

    def save(f, array, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the label of the second case
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(f, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", save)
    with pytest.raises(InputError, match=r"could not write case phantom_001.*No space left"):
        _run(info, plan, tmp_path / "cache")
    folder = cache_folder(plan, tmp_path / "cache")
    assert sorted(p.name for p in folder.glob("phantom_001*")) == []
    assert sorted(p.name for p in folder.iterdir()) == [
        "phantom_000.json", "phantom_000_fg.npz", "phantom_000_image.npy", "phantom_000_label.npy", "plans.json"
    ]  # fmt: skip


def test_cache_root_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSIONSEG_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
    monkeypatch.delenv("FUSIONSEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_root() == tmp_path / "x" / "fusionseg" / "preprocessed"


def test_cut_patch_pads_outside_the_array():
    array = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    patch = cut_patch(array, [-1, 3], [6, 4])
    assert patch.shape == (2, 6, 4)
    np.testing.assert_array_equal(patch[:, 1:5, :2], array[:, :, 3:5])
    assert patch[:, 0].sum() == 0 and patch[:, 5].sum() == 0 and patch[:, :, 2:].sum() == 0


def test_patches_oversample_the_foreground(tmp_path, dataset):
    info, plan = dataset
    report = _run(info, plan, tmp_path / "cache")
    cut = RandPatchd(report.folder, [8, 8, 8], foreground_fraction=1.0)
    cut.set_random_state(0)
    hits = [cut({"case_id": info.cases[0].case_id})["label"].sum() > 0 for _ in range(20)]
    assert all(hits)  # every patch centred on a foreground voxel
    big = RandPatchd(report.folder, [32, 32, 32], foreground_fraction=0.0)
    big.set_random_state(0)
    patch = big({"case_id": info.cases[0].case_id})
    assert patch["image"].shape == (1, 32, 32, 32) and patch["label"].shape == (1, 32, 32, 32)


@pytest.mark.parametrize(("num_classes", "fraction"), [(2, 0.5), (3, 0.666667), (4, 0.75), (120, 0.991667)])
def test_foreground_fraction_is_one_minus_one_over_the_classes(num_classes, fraction):
    assert foreground_fraction(num_classes) == fraction


def test_training_patches_use_the_plans_foreground_fraction(tmp_path, dataset):
    info, plan = dataset
    report = _run(info, plan, tmp_path / "cache")
    assert plan.preprocessing.foreground_fraction == foreground_fraction(3) == 0.666667
    cut = patch_dataset(report.folder, [info.cases[0].case_id], plan.preprocessing).transform.transforms[0]
    assert isinstance(cut, RandPatchd) and cut.foreground_fraction == 0.666667


def test_worker_processes_write_the_same_cases(dataset, tmp_path):
    info, plan = dataset
    pooled = preprocess_dataset(info, plan, tmp_path / "pooled", workers=2, progress=False, log=lambda line: None)
    single = _run(info, plan, tmp_path / "single")
    assert sorted(pooled.done) == sorted(single.done) and len(pooled.done) == 4
    for name, array in _arrays(single.folder).items():
        np.testing.assert_array_equal(_arrays(pooled.folder)[name], array)
