"""Every bad-input check raises a one-line InputError naming the file, through every entry point."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from monai.data import Dataset
from PIL import Image

from fusionseg.data import (
    build_preprocessing,
    case_dict,
    eval_transforms,
    find_input_error,
    load_for_inference,
    scan_dataset,
    validate_case,
    validate_dataset,
)
from fusionseg.errors import InputError


def _break_3d(root, nifti_writer, problem):
    """Corrupt case phantom_001 of a 3D phantom dataset copy; return (path to name in the error, pattern)."""
    img_path = root / "imagesTr" / "phantom_001_0000.nii.gz"
    lbl_path = root / "labelsTr" / "phantom_001.nii.gz"
    img, lbl = nib.load(str(img_path)), nib.load(str(lbl_path))
    data, affine = img.get_fdata().astype(np.float32), img.affine
    if problem == "nan":
        data[3, 4, 5] = np.nan
        data[0, 0, 0] = np.inf
        nifti_writer(img_path, data, affine)
        return img_path, r"2 NaN/Inf voxel\(s\)"
    if problem == "label_values":
        labels = np.asarray(lbl.dataobj).copy()
        labels[0, 0, :2] = 7
        nifti_writer(lbl_path, labels, affine)
        return lbl_path, r"label values \[7\] are outside the declared classes 0\.\.2"
    if problem == "shape":
        nifti_writer(lbl_path, np.zeros((24, 20, 15), np.uint8), affine)
        return lbl_path, r"label shape \(24, 20, 15\) differs from image"
    if problem == "spacing":
        nifti_writer(lbl_path, np.asarray(lbl.dataobj), np.diag([1.0, 1.0, 2.0, 1.0]) @ affine)
        return lbl_path, r"label geometry does not match image .*spacing \(1\.0, 1\.0, 2\.0\) vs \(1\.0, 1\.0, 1\.0\)"
    if problem == "origin":
        shifted = affine.copy()
        shifted[:3, 3] += 5.0
        nifti_writer(lbl_path, np.asarray(lbl.dataobj), shifted)
        return lbl_path, r"label geometry does not match image .*origin/direction differ"
    if problem == "channels":
        nifti_writer(img_path, np.stack([data, data], -1), affine)
        return img_path, r"has 2 channel\(s\) but the dataset/model expects 1"
    if problem == "empty":
        img_path.write_bytes(b"")
        return img_path, "file is empty"
    if problem == "corrupt":
        img_path.write_bytes(img_path.read_bytes()[:400])
        return img_path, "cannot read the file"
    raise AssertionError(problem)


PROBLEMS = ["nan", "label_values", "shape", "spacing", "origin", "channels", "empty", "corrupt"]


@pytest.mark.parametrize("problem", PROBLEMS)
def test_bad_3d_inputs_raise_one_line_input_error(problem, copy_dataset, phantom3d_root, nifti_writer):
    clean = scan_dataset(phantom3d_root)
    pre = build_preprocessing(clean)
    root = copy_dataset(phantom3d_root)
    path, pattern = _break_3d(root, nifti_writer, problem)
    info = scan_dataset(root)
    validate_case(info.cases[0], pre)  # the untouched case passes
    for run in (
        lambda: validate_dataset(info, pre),
        lambda: eval_transforms(pre)(case_dict(info.cases[1])),
    ):
        with pytest.raises(InputError, match=pattern) as err:
            run()
        message = str(err.value)
        assert "\n" not in message and message.startswith(str(path)), message


def test_nan_in_inference_input(copy_dataset, phantom3d_root, nifti_writer):
    pre = build_preprocessing(scan_dataset(phantom3d_root))
    root = copy_dataset(phantom3d_root)
    path, pattern = _break_3d(root, nifti_writer, "nan")
    with pytest.raises(InputError, match=pattern):
        load_for_inference([path], pre)


def test_2d_wrong_channel_count_and_label_values(copy_dataset, phantom2d_root):
    pre = build_preprocessing(scan_dataset(phantom2d_root))
    root = copy_dataset(phantom2d_root)
    rgb = root / "images" / "phantom_001.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(rgb)
    mask = root / "masks" / "phantom_002.png"
    Image.fromarray(np.full((32, 32), 5, np.uint8)).save(mask)
    info = scan_dataset(root)
    with pytest.raises(InputError, match=r"phantom_001\.png: has 3 channel\(s\) but the dataset/model expects 1"):
        eval_transforms(pre)(case_dict(info.cases[1]))
    with pytest.raises(InputError, match=r"phantom_002\.png: label values \[5\] are outside"):
        eval_transforms(pre)(case_dict(info.cases[2]))
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(mask)
    with pytest.raises(InputError, match=r"label shape \(30, 32\) differs from image .* shape \(32, 32\)"):
        validate_case(scan_dataset(root).cases[2], pre)


def test_colour_mask_is_rejected(copy_dataset, phantom2d_root):
    pre = build_preprocessing(scan_dataset(phantom2d_root))
    root = copy_dataset(phantom2d_root)
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 0] = 255
    Image.fromarray(colour).save(root / "masks" / "phantom_000.png")
    with pytest.raises(InputError, match="colour mask"):
        validate_case(scan_dataset(root).cases[0], pre)


def test_monai_dataset_wrapping_can_be_unwrapped(copy_dataset, phantom3d_root, nifti_writer):
    pre = build_preprocessing(scan_dataset(phantom3d_root))
    root = copy_dataset(phantom3d_root)
    _break_3d(root, nifti_writer, "nan")
    ds = Dataset([case_dict(c) for c in scan_dataset(root).cases], transform=eval_transforms(pre))
    with pytest.raises(Exception) as err:
        ds[1]
    found = find_input_error(err.value)
    assert isinstance(found, InputError) and "NaN/Inf" in str(found)
    assert find_input_error(RuntimeError("unrelated")) is None
