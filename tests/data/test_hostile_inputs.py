"""A careless or hostile user against the data side of the CLI: every broken input is one line (exit 2),
nothing in the dataset is changed and nothing is written outside the cache.

Each row builds a tiny dataset in ``tmp_path`` (3 NIfTI cases of 8³ or 3 PNG cases of 16²), breaks it, and
runs ``fusionseg plan``/``preprocess`` on it."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from dicom_series import brain_crop, write_series
from fusionseg.cli import main as cli_main

SHAPE = (8, 8, 8)


def _nii(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


def _label(i: int = 0) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[2:6, 2:6, 2 + i % 2 : 6] = 1
    return label


def _dataset_3d(root: Path, meta: dict | None = None) -> Path:
    rng = np.random.default_rng(0)
    description = {"name": "t", "channel_names": {"0": "CT"}, "labels": {"background": 0, "fg": 1}}
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({**description, **(meta or {})}))
    for i in range(3):
        _nii(root / "imagesTr" / f"c{i}_0000.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
        _nii(root / "labelsTr" / f"c{i}.nii.gz", _label(i))
    return root


def _dataset_2d(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        mask = np.zeros((16, 16), np.uint8)
        mask[4:10, 4 : 8 + i] = 255
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
    return root


def _dataset_dicom(root: Path) -> Path:
    """Three cases whose images are DICOM series (folders ``imagesTr/bN_0000``) of 16 × 16 × 6, labels NIfTI."""
    image = brain_crop((16, 16, 6))
    (root / "labelsTr").mkdir(parents=True)
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "T1"}, "labels": {"background": 0, "tissue": 1}, "file_ending": ".nii.gz"})
    )
    for i in range(3):
        write_series(image, root / "imagesTr" / f"b{i}_0000", f"1.2.826.0.1.3680043.9.7.3.{i + 1}", number=i + 1)
        sitk.WriteImage(sitk.Cast(image > 60, sitk.sitkUInt8), str(root / "labelsTr" / f"b{i}.nii.gz"))
    return root


def _dicom_slice_missing(root: Path) -> None:
    (root / "imagesTr" / "b1_0000" / "IM0003.dcm").unlink()


def _dicom_slice_twice(root: Path) -> None:
    series = root / "imagesTr" / "b1_0000"
    (series / "IM0002b.dcm").write_bytes((series / "IM0002.dcm").read_bytes())


def _dicom_not_dicom(root: Path) -> None:
    for path in (root / "imagesTr" / "b1_0000").iterdir():
        path.write_bytes(b"not a DICOM file")


def _dicom_empty_case(root: Path) -> None:
    for path in (root / "imagesTr" / "b1_0000").iterdir():
        path.unlink()


def _patch_header(path: Path, offset: int, fmt: str, *values) -> None:
    """Overwrite bytes of a ``.nii.gz`` header (offsets of the NIfTI-1 standard)."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into(fmt, raw, offset, *values)
    path.write_bytes(gzip.compress(bytes(raw)))


def _huge_dims(root: Path) -> None:
    _patch_header(root / "imagesTr" / "c1_0000.nii.gz", 40, "<8h", 3, 32000, 32000, 32000, 1, 1, 1, 1)


def _nan_affine(root: Path) -> None:
    for path in (root / "imagesTr" / "c1_0000.nii.gz", root / "labelsTr" / "c1.nii.gz"):
        _patch_header(path, 252, "<2h", 0, 1)  # qform_code 0, sform_code 1: the affine comes from srow_x..z
        _patch_header(path, 280, "<4f", float("nan"), 0, 0, 0)


def _nan_spacing(root: Path) -> None:
    for path in (root / "imagesTr" / "c1_0000.nii.gz", root / "labelsTr" / "c1.nii.gz"):
        _patch_header(path, 252, "<2h", 0, 0)  # no qform/sform: the affine comes from pixdim
        _patch_header(path, 80, "<3f", float("nan"), 1, 1)


def _huge_spacing(root: Path) -> None:
    affine = np.diag([1e7, 1, 1, 1.0])
    _nii(root / "imagesTr" / "c1_0000.nii.gz", np.ones(SHAPE, np.float32), affine)
    _nii(root / "labelsTr" / "c1.nii.gz", _label(), affine)


def _unicode_channel_index(root: Path) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"\u0660": "CT"}  # ARABIC-INDIC DIGIT ZERO: isdigit() but not an index
    (root / "dataset.json").write_text(json.dumps(meta))


def _jpeg_named_png_mask(root: Path) -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[4:10, 4:10] = 255
    Image.fromarray(mask).save(root / "masks" / "c1.png", format="JPEG", quality=50)


def _alpha_only_mask(root: Path) -> None:
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:10, 4:10, 3] = 255  # the shape is in the alpha channel, the colour is black everywhere
    Image.fromarray(rgba, "RGBA").save(root / "masks" / "c1.png")


def _all_background(root: Path) -> None:
    for label in (root / "labelsTr").iterdir():
        _nii(label, np.zeros(SHAPE, np.uint8))


def _nrrd_dimension_1e8(root: Path) -> None:
    (root / "imagesTr" / "c1_0000.nii.gz").unlink()
    header = b"NRRD0004\ntype: float\ndimension: 100000000\nsizes: 8 8 8\nencoding: raw\nendian: little\n\n"
    (root / "imagesTr" / "c1_0000.nrrd").write_bytes(header + bytes(8**3 * 4))
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".nrrd"}))
    import nrrd

    for i in (0, 2):
        (root / "imagesTr" / f"c{i}_0000.nii.gz").unlink()
        nrrd.write(str(root / "imagesTr" / f"c{i}_0000.nrrd"), np.ones(SHAPE, np.float32))
    for i in range(3):
        (root / "labelsTr" / f"c{i}.nii.gz").unlink()
        nrrd.write(str(root / "labelsTr" / f"c{i}.nrrd"), _label(i))


def _complex_image(root: Path) -> None:
    _nii(root / "imagesTr" / "c1_0000.nii.gz", (np.ones(SHAPE) + 1j).astype(np.complex64))


def _slope_overflows_float32(root: Path) -> None:
    image = nib.Nifti1Image(np.full(SHAPE, 100, np.int16), np.eye(4))
    image.header.set_slope_inter(1e38, 0)
    nib.save(image, str(root / "imagesTr" / "c1_0000.nii.gz"))


def _label_1e300(root: Path) -> None:
    label = _label().astype(np.float64)
    label[0, 0, 0] = 1e300
    _nii(root / "labelsTr" / "c1.nii.gz", label)


def _case_named_plans(root: Path) -> None:
    for folder in ("images", "masks"):
        (root / folder / "c1.png").rename(root / folder / "plans.png")  # plans.json would be replaced by its CASE.json


PREPROCESS = ["preprocess", "--no-progress"]
PLAN = ["plan"]

# (id, dataset builder, breakage, command + options, words of the one line)
CASES = [
    ("nifti header claims 32000³ voxels", _dataset_3d, _huge_dims, PREPROCESS, "header claims shape"),
    ("NaN in the affine (sform)", _dataset_3d, _nan_affine, PREPROCESS, "NaN/Inf"),
    ("NaN spacing (pixdim)", _dataset_3d, _nan_spacing, PREPROCESS, "NaN/Inf"),
    ("spacing 1e7 mm: resampling would explode", _dataset_3d, _huge_spacing, PREPROCESS, "coarser --target-spacing"),
    ("--target-spacing 1e-4 mm", _dataset_3d, None, [*PREPROCESS, "--target-spacing", "1e-4,1e-4,1e-4"], "GiB"),
    ("--patch-size 100000³", _dataset_3d, None, [*PLAN, "--patch-size", "100000,100000,100000"], "GiB to train"),
    ("--batch-size 10¹¹", _dataset_3d, None, [*PLAN, "--batch-size", "100000000000"], "GiB to train"),
    ("channel index is a non-ASCII digit", _dataset_3d, _unicode_channel_index, PREPROCESS, "channel indices"),
    ("JPEG data in a .png mask", _dataset_2d, _jpeg_named_png_mask, PREPROCESS, "JPEG data under a .png name"),
    ("RGBA mask drawn in alpha only", _dataset_2d, _alpha_only_mask, PREPROCESS, "alpha channel only"),
    ("every label is background", _dataset_3d, _all_background, PREPROCESS, "no foreground class"),
    ("complex-valued image", _dataset_3d, _complex_image, PREPROCESS, "complex voxels"),
    ("scale slope overflows float32", _dataset_3d, _slope_overflows_float32, PREPROCESS, "NaN/Inf voxel"),
    ("float label 1e300", _dataset_3d, _label_1e300, PREPROCESS, "values up to 1e+300"),
    ("case named plans", _dataset_2d, _case_named_plans, PREPROCESS, "'plans' is reserved"),
    ("DICOM series missing a slice", _dataset_dicom, _dicom_slice_missing, PREPROCESS, "not evenly spaced"),
    ("DICOM series with a slice twice", _dataset_dicom, _dicom_slice_twice, PREPROCESS, "not evenly spaced"),
    ("DICOM case of non-DICOM .dcm files", _dataset_dicom, _dicom_not_dicom, PREPROCESS, "no readable DICOM series"),
    ("DICOM case folder left empty", _dataset_dicom, _dicom_empty_case, PREPROCESS, "no readable DICOM series"),
    ("NRRD header with dimension 10^8", _dataset_3d, _nrrd_dimension_1e8, PREPROCESS, "dimension 100000000"),
]


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("build", "breakage", "command", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_and_harms_nothing(tmp_path, capsys, build, breakage, command, words):
    root = build(tmp_path / "ds")
    if breakage is not None:
        breakage(root)
    cache = tmp_path / "cache"
    before = _snapshot(tmp_path)
    argv = [command[0], "--data", str(root), "--cache", str(cache), *command[1:]]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and words in err, err
    after = _snapshot(tmp_path)
    assert {p: b for p, b in after.items() if cache not in p.parents} == before  # dataset intact, nothing outside


@pytest.mark.parametrize("spacing", ["nan,1,1", "inf,1,1"])
def test_non_finite_target_spacing_is_refused_by_the_parser(tmp_path, capsys, spacing):
    root = _dataset_3d(tmp_path / "ds")
    with pytest.raises(SystemExit) as exit_:
        cli_main([*PREPROCESS[:1], "--data", str(root), "--cache", str(tmp_path / "cache"), *PREPROCESS[1:],
                  "--target-spacing", spacing])  # fmt: skip
    err = capsys.readouterr().err
    assert (
        exit_.value.code == 2
        and "Traceback" not in err
        and f"spacings in mm > 0 like 1,1,3 (or median, keep), got '{spacing}'" in err
    )
    assert not (tmp_path / "cache").exists()


def test_small_spacing_is_fine_and_singular_direction_is_refused(tmp_path, capsys):
    """Micrometre voxels are a valid image; a direction matrix with a collapsed axis is not."""
    root = _dataset_3d(tmp_path / "ds")
    for path in (root / "imagesTr" / "c1_0000.nii.gz", root / "labelsTr" / "c1.nii.gz"):
        _patch_header(path, 252, "<2h", 0, 0)
        _patch_header(path, 80, "<3f", 1e-4, 1e-4, 1e-4)
    cache = tmp_path / "cache"
    assert cli_main(["preprocess", "--data", str(root), "--cache", str(cache), "--no-progress"]) == 0
    capsys.readouterr()
    for path in (root / "imagesTr" / "c1_0000.nii.gz", root / "labelsTr" / "c1.nii.gz"):
        _patch_header(path, 254, "<h", 1)
        _patch_header(path, 280, "<12f", 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0)  # x and y map onto one world axis
    assert cli_main(["preprocess", "--data", str(root), "--cache", str(cache), "--no-progress"]) == 2
    assert "singular" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--cache", "--data"])
def test_empty_path_is_refused_not_read_as_the_working_directory(tmp_path, monkeypatch, capsys, option):
    root = _dataset_2d(tmp_path / "ds")
    monkeypatch.chdir(root)  # "" would be "." : the dataset itself
    paths = {"--data": str(root), "--cache": str(tmp_path / "cache"), option: ""}
    before = _snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["preprocess", "--data", paths["--data"], "--cache", paths["--cache"], "--no-progress"])
    assert exit_info.value.code == 2 and "empty string" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("fold", "words"),
    [
        ({"train": ["c0", "c1", "c2"], "val": ["c2"]}, "'c2' in both train and val"),
        ({"train": ["c0", "c1"], "val": ["c0", "c1"]}, "'c0' in both train and val"),
        ({"train": ["c0", "c0", "c0", "c1"], "val": ["c2"]}, "'c0' twice in one list"),
    ],
)
def test_a_fold_that_validates_on_its_training_cases_is_refused(tmp_path, fold, words):
    from fusionseg.data import get_fold, scan_dataset
    from fusionseg.errors import InputError

    root = _dataset_3d(tmp_path / "ds")
    (root / "splits_final.json").write_text(json.dumps([fold]))
    with pytest.raises(InputError, match=words) as err:
        get_fold(scan_dataset(root), 0)
    assert "\n" not in str(err.value)
    assert get_fold(scan_dataset(root), "all") == (["c0", "c1", "c2"], ["c0", "c1", "c2"])  # explicit: allowed


def test_bundle_refuses_to_write_its_labels_among_the_input_images(tmp_path):
    """`python -m monai.bundle run ... --output_dir` equal to `--dataset_dir` replaced 2D inputs by label maps."""
    torch = pytest.importorskip("torch")
    from monai.data import MetaTensor

    from fusionseg.deploy.bundle_components import SaveLabeld

    image = tmp_path / "in" / "c0.png"
    image.parent.mkdir()
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(image)
    before = image.read_bytes()
    label = MetaTensor(torch.ones((1, 8, 8)), meta={"filename_or_obj": str(image)})
    with pytest.raises(ValueError, match="is the folder of the input images"):
        SaveLabeld("pred", tmp_path / "in" / ".." / "in")({"pred": label, "case_id": "c0"})
    assert image.read_bytes() == before and sorted(p.name for p in image.parent.iterdir()) == ["c0.png"]
    SaveLabeld("pred", tmp_path / "out")({"pred": label, "case_id": "c0"})
    assert (tmp_path / "out" / "c0.png").is_file()


def test_bundle_never_replaces_a_file_it_did_not_write_and_reruns_over_its_own(tmp_path):
    """`--output_dir` pointing at a copy of the ground truth: the bundle refuses, nothing is replaced."""
    torch = pytest.importorskip("torch")
    from monai.data import MetaTensor

    from fusionseg.deploy.bundle_components import SaveLabeld

    image = tmp_path / "in" / "c0.png"
    image.parent.mkdir()
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(image)
    truth = tmp_path / "gt" / "c0.png"
    truth.parent.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(truth)
    before = truth.read_bytes()
    label = MetaTensor(torch.ones((1, 8, 8)), meta={"filename_or_obj": str(image)})
    with pytest.raises(ValueError, match=r"already holds c0\.png, which no bundle run wrote"):
        SaveLabeld("pred", truth.parent)({"pred": label, "case_id": "c0"})
    assert truth.read_bytes() == before
    out = tmp_path / "out"
    SaveLabeld("pred", out)({"pred": label, "case_id": "c0"})
    first = (out / "c0.png").stat().st_mtime_ns
    SaveLabeld("pred", out)({"pred": label * 0, "case_id": "c0"})  # a rerun replaces its own result
    assert (out / "c0.png").stat().st_mtime_ns >= first and np.asarray(Image.open(out / "c0.png")).max() == 0
