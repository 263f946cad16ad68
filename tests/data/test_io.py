"""File I/O keeps geometry: NIfTI affines, NRRD space/directions/origin, 2D formats; bad files."""

from __future__ import annotations

import gzip

import nibabel as nib
import nrrd
import numpy as np
import pytest
from PIL import Image

from fusionseg.data import read_header, read_image, read_label, write_label
from fusionseg.errors import InputError

OBLIQUE = np.array(
    [[0.0, -0.9, 0.1, 12.5], [1.2, 0.0, 0.0, -30.0], [0.0, 0.05, 2.5, 7.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float64
)


def test_nifti_roundtrip_keeps_affine_and_codes(tmp_path, nifti_writer):
    data = np.random.default_rng(0).integers(0, 3, (6, 5, 4)).astype(np.uint8)
    src = nifti_writer(tmp_path / "lab.nii.gz", data, OBLIQUE)
    label, meta = read_label(src)
    assert np.array_equal(label, data) and meta["spatial_shape"] == (6, 5, 4)
    np.testing.assert_allclose(meta["spacing"], np.linalg.norm(OBLIQUE[:3, :3], axis=0), rtol=1e-6)
    out = write_label(label, meta, tmp_path / "out.nii.gz")
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, OBLIQUE, atol=1e-6)
    assert img.get_data_dtype() == np.uint8 and int(img.header["sform_code"]) == 1
    assert np.array_equal(np.asarray(img.dataobj), data)


def test_nifti_multichannel_image(tmp_path, nifti_writer):
    data = np.random.default_rng(0).normal(size=(4, 5, 6, 2)).astype(np.float32)
    image, meta = read_image(nifti_writer(tmp_path / "mc.nii.gz", data))
    assert image.shape == (2, 4, 5, 6) and image.dtype == np.float32 and meta["num_channels"] == 2
    np.testing.assert_array_equal(image[1], data[..., 1])
    assert read_header(tmp_path / "mc.nii.gz")["num_channels"] == 2


def test_nrrd_lps_geometry_and_roundtrip(tmp_path):
    data = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.5, 0.7, 2.0]),
        "space origin": np.array([10.0, 20.0, 30.0]),
        "kinds": ["domain"] * 3,
    }
    nrrd.write(str(tmp_path / "img.nrrd"), data, header)
    image, meta = read_image(tmp_path / "img.nrrd")
    assert image.shape == (1, 4, 5, 3) and meta["spacing"] == (0.5, 0.7, 2.0)
    # LPS → RAS flips the x and y rows of the affine.
    np.testing.assert_allclose(meta["affine"][:3], [[-0.5, 0, 0, -10], [0, -0.7, 0, -20], [0, 0, 2.0, 30]])
    label = (data % 3).astype(np.uint8)
    out = write_label(label, meta, tmp_path / "pred.nrrd")
    back, h = nrrd.read(str(out))
    assert np.array_equal(back, label) and h["space"] == "left-posterior-superior"
    np.testing.assert_allclose(h["space directions"], header["space directions"])
    np.testing.assert_allclose(h["space origin"], header["space origin"])


def test_nrrd_multichannel(tmp_path):
    data = np.random.default_rng(0).normal(size=(2, 4, 5, 3)).astype(np.float32)
    directions = np.full((4, 3), np.nan)
    directions[1:] = np.eye(3)
    nrrd.write(str(tmp_path / "mc.nrrd"), data, {"space": "RAS", "space directions": directions})
    image, meta = read_image(tmp_path / "mc.nrrd")
    assert image.shape == (2, 4, 5, 3) and meta["num_channels"] == 2
    np.testing.assert_allclose(image, data)


@pytest.mark.parametrize(("ext", "mode"), [(".png", "L"), (".jpg", "RGB"), (".tif", "I;16"), (".png", "RGBA")])
def test_2d_images(tmp_path, ext, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        arr = rng.integers(0, 4000, (10, 12)).astype(np.uint16)
    else:
        arr = rng.integers(0, 255, {"L": (10, 12), "RGB": (10, 12, 3), "RGBA": (10, 12, 4)}[mode], dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / f"im{ext}")
    image, meta = read_image(tmp_path / f"im{ext}")
    channels = 3 if mode in ("RGB", "RGBA") else 1
    assert image.shape == (channels, 10, 12) and meta["spatial_shape"] == (10, 12)
    if ext != ".jpg":
        expected = arr[..., :3] if mode == "RGBA" else arr
        np.testing.assert_array_equal(image.reshape(channels, 10, 12), np.moveaxis(expected.reshape(10, 12, -1), -1, 0))


def test_2d_mask_write_binary_as_255(tmp_path):
    Image.fromarray(np.zeros((6, 7), np.uint8)).save(tmp_path / "ref.png")
    _, meta = read_label(tmp_path / "ref.png")
    label = np.eye(6, 7, dtype=np.int64)
    out = write_label(label, meta, tmp_path / "pred.png", binary_as_255=True)
    assert set(np.unique(np.asarray(Image.open(out)))) == {0, 255}
    np.testing.assert_array_equal(read_label(out)[0], label)
    with pytest.raises(InputError, match="JPEG is lossy"):
        write_label(label, meta, tmp_path / "pred.jpg")


def test_bad_files(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.nii\.gz: file is empty"):
        read_image(tmp_path / "empty.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 30))
    with pytest.raises(InputError, match=r"bad\.nii\.gz: cannot read the file .*corrupt"):
        read_image(tmp_path / "bad.nii.gz")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(InputError, match=r"bad\.png: cannot read"):
        read_label(tmp_path / "bad.png")
    (tmp_path / "bad.nrrd").write_bytes(b"NRRD0004\ntype: nonsense\n\n")
    with pytest.raises(InputError, match=r"bad\.nrrd: cannot read"):
        read_image(tmp_path / "bad.nrrd")
    (tmp_path / "scan.dcm").write_bytes(b"\0" * 128 + b"DICM")
    with pytest.raises(InputError, match=r"scan\.dcm: a single DICOM file; pass the folder of its series"):
        read_image(tmp_path / "scan.dcm")
    with pytest.raises(InputError, match=r"scan\.v16: unsupported file extension '\.v16'"):
        read_image(tmp_path / "scan.v16")
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "missing.nii.gz")


def test_truncated_nifti_is_reported(tmp_path, nifti_writer):
    path = nifti_writer(tmp_path / "full.nii.gz", np.ones((16, 16, 16), np.float32))
    (tmp_path / "cut.nii.gz").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut\.nii\.gz: cannot read the file"):
        read_image(tmp_path / "cut.nii.gz")


def test_float_label_with_fractions_is_rejected(tmp_path, nifti_writer):
    nifti_writer(tmp_path / "lab.nii.gz", np.full((3, 3, 3), 0.5, np.float32))
    with pytest.raises(InputError, match="non-integer values"):
        read_label(tmp_path / "lab.nii.gz")


def test_3d_label_to_png_is_rejected(tmp_path, nifti_writer):
    _, meta = read_label(nifti_writer(tmp_path / "l.nii.gz", np.zeros((4, 4, 4), np.uint8)))
    with pytest.raises(InputError, match=r"PNG/TIFF hold 2D masks but the label map is 3D; write \.nii\.gz"):
        write_label(np.zeros((4, 4, 4), np.uint8), meta, tmp_path / "l.png")
