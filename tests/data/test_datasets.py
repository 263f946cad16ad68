"""scan_dataset: both layouts, dataset.json dialects, 2D mask encodings, structural errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fusionseg.data import read_label, scan_dataset
from fusionseg.errors import InputError


def test_scan_nnunet_phantom(phantom3d_root):
    info = scan_dataset(phantom3d_root)
    assert (info.layout, info.spatial_dims, info.num_classes, info.modality) == ("nnunet", 3, 3, "other")
    assert [c.case_id for c in info.cases] == ["phantom_000", "phantom_001", "phantom_002"]
    assert info.cases[1].images == [phantom3d_root / "imagesTr" / "phantom_001_0000.nii.gz"]
    assert info.cases[1].label == phantom3d_root / "labelsTr" / "phantom_001.nii.gz"
    assert [c.case_id for c in info.test_cases] == ["phantom_test_000"] and info.test_cases[0].label is not None
    assert info.labels == {0: "background", 1: "class1", 2: "class2"} and info.in_channels == 1


def test_scan_folders_phantom(phantom2d_root):
    info = scan_dataset(phantom2d_root)
    assert (info.layout, info.spatial_dims, info.num_classes, info.modality) == ("folders", 2, 3, "2d")
    assert info.channel_names == ["grey"] and len(info.cases) == 3 and len(info.test_cases) == 1
    assert info.cases[0].label == phantom2d_root / "masks" / "phantom_000.png"


def _multichannel_dataset(root, nifti_writer, msd_json=False, channels=2):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in ("a", "b"):
        for c in range(channels):
            nifti_writer(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", np.zeros((4, 4, 4), np.float32))
        nifti_writer(root / "labelsTr" / f"{case}.nii.gz", np.zeros((4, 4, 4), np.uint8))
    if msd_json:
        meta = {"modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "edema", "2": "tumour"}}
    else:
        meta = {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "lesion": 1}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize(("msd", "modality", "classes"), [(False, "CT", 2), (True, "MRI", 3)])
def test_scan_multichannel_and_json_dialects(tmp_path, nifti_writer, msd, modality, classes):
    info = scan_dataset(_multichannel_dataset(tmp_path / "ds", nifti_writer, msd_json=msd))
    assert info.modality == modality and info.num_classes == classes and info.in_channels == 2
    assert [p.name for p in info.cases[0].images] == ["a_0000.nii.gz", "a_0001.nii.gz"]


def test_scan_msd_style_single_file_cases(tmp_path, nifti_writer):
    root = tmp_path / "msd"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    nifti_writer(root / "imagesTr" / "la_003.nii.gz", np.zeros((4, 4, 4, 2), np.float32))
    nifti_writer(root / "labelsTr" / "la_003.nii.gz", np.zeros((4, 4, 4), np.uint8))
    (root / "._la_003.nii.gz").write_bytes(b"junk")  # macOS resource forks in MSD tarballs are ignored
    (root / "dataset.json").write_text(
        json.dumps({"modality": {"0": "T2", "1": "ADC"}, "labels": {"0": "bg", "1": "x"}})
    )
    info = scan_dataset(root)
    assert [c.case_id for c in info.cases] == ["la_003"] and info.in_channels == 2


@pytest.mark.parametrize(
    ("ext", "mode", "mask_values", "expected"),
    [
        (".png", "L", (0, 255), {0: "background", 1: "class1"}),
        (".jpg", "RGB", (0, 1), {0: "background", 1: "class1"}),
        (".tif", "L", (0, 1, 2, 3), {0: "background", 1: "class1", 2: "class2", 3: "class3"}),
    ],
)
def test_scan_folders_formats_and_mask_encodings(tmp_path, ext, mode, mask_values, expected):
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        shape = (20, 24, 3) if mode == "RGB" else (20, 24)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / "images" / f"img{i}{ext}")
        mask = np.array(mask_values, dtype=np.uint8)[rng.integers(0, len(mask_values), (20, 24))]
        suffix = "_mask" if i == 1 else ""
        Image.fromarray(mask).save(root / "masks" / f"img{i}{suffix}{'.tif' if ext == '.tif' else '.png'}")
    info = scan_dataset(root)
    assert info.labels == expected and info.num_classes == len(expected)
    assert info.in_channels == (3 if mode == "RGB" else 1)
    assert info.cases[1].label.name.startswith("img1_mask")
    label, meta = read_label(info.cases[0].label)
    assert label.shape == (20, 24) and label.max() == len(expected) - 1 and meta["spacing"] == (1.0, 1.0)


def test_scan_errors_missing_label(copy_dataset, phantom3d_root, phantom2d_root):
    root = copy_dataset(phantom3d_root)
    (root / "labelsTr" / "phantom_001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"phantom_001_0000\.nii\.gz: no label found \(expected .*labelsTr"):
        scan_dataset(root)
    root2 = copy_dataset(phantom2d_root)
    (root2 / "masks" / "phantom_002.png").unlink()
    with pytest.raises(InputError, match=r"images/phantom_002\.png: no mask found"):
        scan_dataset(root2)


def test_scan_errors_structure(tmp_path, copy_dataset, phantom3d_root, nifti_writer):
    with pytest.raises(InputError, match="dataset folder not found"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no imagesTr/"):
        scan_dataset(tmp_path / "empty")
    root = copy_dataset(phantom3d_root)
    (root / "imagesTr" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"notes\.txt: unsupported file extension '\.txt'"):
        scan_dataset(root)
    (root / "imagesTr" / "notes.txt").unlink()
    (root / "dataset.json").unlink()
    with pytest.raises(InputError, match=r"dataset\.json: missing"):
        scan_dataset(root)
    multi = _multichannel_dataset(tmp_path / "mc", nifti_writer)
    (multi / "imagesTr" / "b_0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"b_0001\.nii\.gz: missing channel 1 of case 'b'"):
        scan_dataset(multi)


def test_scan_errors_labels_json(tmp_path, nifti_writer):
    root = _multichannel_dataset(tmp_path / "ds", nifti_writer)
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT", "1": "PET"}, "labels": {"bg": 0, "x": 2}})
    )
    with pytest.raises(InputError, match="must be consecutive"):
        scan_dataset(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot parse"):
        scan_dataset(root)


def test_scan_errors_folders(tmp_path):
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    with pytest.raises(InputError, match="folder is empty"):
        scan_dataset(root)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images" / "a.png")
    with pytest.raises(InputError, match="no masks/ folder"):
        scan_dataset(root)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "b.jpg")
    with pytest.raises(InputError, match=r"a\.png: no mask found .*1 image\(s\) without a mask: a\.png; "
                       r"1 mask\(s\) without an image: b\.jpg"):  # fmt: skip
        scan_dataset(root)
