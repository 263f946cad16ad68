"""The file-format registry and every format's round trip: image read → label written → read back with the
same shape and geometry; multi-channel files; probabilities; label depth; names and extensions."""

from __future__ import annotations

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from fusionseg.data import (
    FORMATS,
    format_of,
    prediction_extension,
    probability_extension,
    read_header,
    read_image,
    read_label,
    write_label,
    write_probabilities,
)
from fusionseg.data.formats import IMAGE_EXTENSIONS, LABEL_EXTENSIONS, split_extension, strip_extension
from fusionseg.errors import InputError

OBLIQUE_3D = np.array(
    [[0.0, -0.9, 0.1, 12.5], [1.2, 0.0, 0.0, -30.0], [0.0, 0.05, 2.5, 7.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float64
)
ALIGNED_3D = np.array([[-0.8, 0, 0, 4.0], [0, -1.1, 0, -3.0], [0, 0, 2.0, 1.5], [0, 0, 0, 1]], dtype=np.float64)
SCALED_2D = np.array([[0.0, 0.7, 3.0], [1.3, 0.0, -2.0], [0.0, 0.0, 1.0]])

# (input extension, spatial dims, the geometry the format can hold)
ROUND_TRIPS = [
    (".nii.gz", 3, OBLIQUE_3D),
    (".nii", 3, OBLIQUE_3D),
    (".nrrd", 3, OBLIQUE_3D),
    (".nhdr", 3, OBLIQUE_3D),
    (".mha", 3, OBLIQUE_3D),
    (".mhd", 3, OBLIQUE_3D),
    (".gipl", 3, ALIGNED_3D),  # GIPL stores spacing and origin, no direction
    (".nrrd", 2, SCALED_2D),
    (".mha", 2, SCALED_2D),
    (".png", 2, None),
    (".bmp", 2, None),
    (".tif", 2, None),
    (".jpg", 2, None),
]


def test_registry_lists_each_extension_once_with_consistent_capabilities():
    extensions = [ext for fmt in FORMATS for ext in fmt.extensions]
    assert len(extensions) == len(set(extensions))
    assert ".jpg" in IMAGE_EXTENSIONS and ".jpg" not in LABEL_EXTENSIONS  # lossy: images only
    assert ".npz" not in IMAGE_EXTENSIONS  # probabilities only
    for ext in (".mha", ".mhd", ".nhdr", ".bmp", ".gipl"):  # predict used to list these, the reader refused them
        assert ext in IMAGE_EXTENSIONS and ext in LABEL_EXTENSIONS
    for fmt in FORMATS:
        assert set(fmt.spatial_dims) <= {2, 3} and fmt.spatial_dims
        for ext in fmt.extensions:
            assert format_of(f"a/case_0000{ext.upper()}") is fmt
            out = prediction_extension(f"x{ext}") if fmt.dataset else None
            assert out is None or format_of(f"y{out}").holds_labels  # predictions are always readable back


@pytest.mark.parametrize(
    ("name", "stem", "ext", "prediction", "probabilities"),
    [
        ("BRATS_001_0000.nii.gz", "BRATS_001_0000", ".nii.gz", ".nii.gz", ".nii.gz"),
        ("ct.NII", "ct", ".nii", ".nii", ".nii"),
        ("a.b_0001.nhdr", "a.b_0001", ".nhdr", ".nrrd", ".nrrd"),
        ("scan.mhd", "scan", ".mhd", ".mha", ".mha"),
        ("scan.gipl.gz", "scan", ".gipl.gz", ".gipl.gz", ".mha"),
        ("img.tiff", "img", ".tiff", ".tiff", ".npz"),
        ("img.bmp", "img", ".bmp", ".png", ".npz"),
        ("photo.JPEG", "photo", ".jpeg", ".png", ".npz"),
    ],
)
def test_extension_table(name, stem, ext, prediction, probabilities):
    assert split_extension(f"some/dir/{name}") == (stem, ext) and strip_extension(name) == stem
    assert prediction_extension(name) == prediction and probability_extension(name) == probabilities


def test_unknown_extension_is_one_line_error():
    with pytest.raises(InputError, match=r"scan\.v16: unsupported file extension '\.v16'; use one of .*\.mha") as err:
        format_of("scan.v16")
    assert "or a folder of DICOM slices" in str(err.value)
    assert "\n" not in str(err.value)


def _image(dims: int, ext: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (7, 6, 5) if dims == 3 else (9, 11)
    if ext in (".png", ".bmp", ".jpg", ".tif"):
        return rng.integers(0, 255, shape, dtype=np.uint8)
    return rng.normal(100, 20, shape).astype(np.float32)


@pytest.mark.parametrize(("ext", "dims", "affine"), ROUND_TRIPS)
def test_image_to_label_round_trip_keeps_shape_and_geometry(tmp_path, any_writer, ext, dims, affine):
    src = any_writer(tmp_path / f"img{ext}", _image(dims, ext), affine)
    image, meta = read_image(src)
    assert image.shape == (1, *_image(dims, ext).shape) and image.dtype == np.float32
    expected = affine if affine is not None else np.eye(dims + 1)
    np.testing.assert_allclose(meta["affine"], expected, atol=1e-5)
    np.testing.assert_allclose(meta["spacing"], np.linalg.norm(expected[:dims, :dims], axis=0), rtol=1e-5)
    assert read_header(src)["spatial_shape"] == image.shape[1:]
    if ext != ".jpg":
        np.testing.assert_allclose(image[0], _image(dims, ext), rtol=1e-6)
    label = (np.arange(image[0].size).reshape(image.shape[1:]) % 4).astype(np.uint8)
    out = write_label(label, meta, tmp_path / f"pred{prediction_extension(src)}")
    back, back_meta = read_label(out)
    assert back.shape == label.shape and np.array_equal(back, label)
    np.testing.assert_allclose(back_meta["affine"], meta["affine"], atol=1e-5)


@pytest.mark.parametrize(("ext", "affine"), [(".mha", OBLIQUE_3D), (".mhd", OBLIQUE_3D), (".gipl", ALIGNED_3D)])
def test_itk_label_geometry_matches_simpleitk(tmp_path, any_writer, ext, affine):
    """The label's spacing/origin/direction, as SimpleITK itself reads them, equal the image's."""
    src = any_writer(tmp_path / f"img{ext}", _image(3, ext), affine)
    _, meta = read_image(src)
    out = write_label(np.ones(meta["spatial_shape"], np.uint8), meta, tmp_path / f"lab{prediction_extension(src)}")
    a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(out))
    assert a.GetSize() == b.GetSize()
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(b, get)(), getattr(a, get)(), atol=1e-6)
    assert b.GetPixelID() == sitk.sitkUInt8


def test_nifti_label_written_as_mha_keeps_world_geometry(tmp_path, nifti_writer):
    """Formats mix: a NIfTI reference written as MetaImage (and back) keeps the RAS affine."""
    _, meta = read_image(nifti_writer(tmp_path / "i.nii.gz", np.zeros((4, 5, 6), np.float32), OBLIQUE_3D))
    _, meta2 = read_label(write_label(np.zeros((4, 5, 6), np.uint8), meta, tmp_path / "l.mha"))
    _, meta3 = read_label(write_label(np.zeros((4, 5, 6), np.uint8), meta2, tmp_path / "l.nrrd"))
    np.testing.assert_allclose(meta2["affine"], OBLIQUE_3D, atol=1e-5)
    np.testing.assert_allclose(meta3["affine"], OBLIQUE_3D, atol=1e-5)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha", ".png"])
def test_multichannel_files(tmp_path, any_writer, ext):
    rng = np.random.default_rng(1)
    if ext == ".png":
        data = rng.integers(0, 255, (3, 8, 9), dtype=np.uint8)
    else:
        data = rng.normal(size=(4, 5, 6, 7)).astype(np.float32)
    src = any_writer(tmp_path / f"mc{ext}", data, channels=True)
    image, meta = read_image(src)
    assert image.shape == data.shape and meta["num_channels"] == data.shape[0]
    assert read_header(src)["num_channels"] == data.shape[0]
    np.testing.assert_allclose(image, data, rtol=1e-6)


@pytest.mark.parametrize(("ext", "dims"), [(".nii.gz", 3), (".nrrd", 3), (".mha", 3), (".npz", 2), (".npz", 3)])
def test_probabilities_round_trip(tmp_path, any_writer, ext, dims):
    ref_ext = ".png" if dims == 2 else ext if ext != ".npz" else ".nii.gz"
    affine = OBLIQUE_3D if dims == 3 else None
    _, meta = read_image(any_writer(tmp_path / f"ref{ref_ext}", _image(dims, ref_ext), affine))
    logits = np.random.default_rng(2).normal(size=(3, *meta["spatial_shape"]))
    probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    out = write_probabilities(probs, meta, tmp_path / f"p{ext}")
    back, back_meta = read_image(out)
    assert back.shape == probs.shape and back.dtype == np.float32
    np.testing.assert_array_equal(back, probs)
    np.testing.assert_allclose(back.sum(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(back_meta["affine"], meta["affine"], atol=1e-5)


def test_probabilities_need_a_float_capable_format(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "ref.png")
    _, meta = read_image(tmp_path / "ref.png")
    with pytest.raises(InputError, match=r"p\.png: png cannot hold float channels; write probabilities as \.npz"):
        write_probabilities(np.zeros((2, 4, 4)), meta, tmp_path / "p.png")
    with pytest.raises(InputError, match="files hold probabilities, not label maps"):
        read_label(write_probabilities(np.zeros((2, 4, 4)), meta, tmp_path / "p.npz"))


@pytest.mark.parametrize(
    ("ext", "top", "dtype"),
    [
        (".nii.gz", 255, np.uint8),
        (".nii.gz", 300, np.uint16),
        (".png", 119, np.uint8),
        (".png", 1000, np.uint16),
        (".mha", 300, np.uint16),
        (".nrrd", 300, np.uint16),
    ],
)
def test_label_depth_follows_the_number_of_classes(tmp_path, any_writer, ext, top, dtype):
    dims = 2 if ext == ".png" else 3
    _, meta = read_image(any_writer(tmp_path / f"ref{ext}", _image(dims, ext)))
    label = np.zeros(meta["spatial_shape"], np.int64)
    label.flat[: top + 1] = np.arange(top + 1) if label.size > top else 0
    label.flat[-1] = top
    out = write_label(label, meta, tmp_path / f"l{ext}")
    if ext == ".nii.gz":
        assert nib.load(str(out)).get_data_dtype() == dtype
    elif ext == ".png":
        assert np.asarray(Image.open(out)).dtype == dtype
    elif ext == ".nrrd":
        assert nrrd.read(str(out))[0].dtype == dtype
    back, _ = read_label(out)
    assert np.array_equal(back, label) and int(back.max()) == top


def test_bmp_labels_are_8_bit_and_jpeg_is_never_written(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "ref.bmp")
    _, meta = read_label(tmp_path / "ref.bmp")
    with pytest.raises(InputError, match=r"BMP holds 8-bit labels but values reach 300; write \.png"):
        write_label(np.full((4, 4), 300), meta, tmp_path / "l.bmp")
    with pytest.raises(InputError, match="JPEG is lossy"):
        write_label(np.zeros((4, 4), np.uint8), meta, tmp_path / "l.jpg")


def test_corrupt_mha_is_one_line_error(tmp_path):
    (tmp_path / "bad.mha").write_bytes(b"ObjectType = Image\nNDims = 3\nnonsense\n")
    with pytest.raises(InputError, match=r"bad\.mha: cannot read the file .*corrupt") as err:
        read_image(tmp_path / "bad.mha")
    assert "\n" not in str(err.value)


def test_output_format_overrides_the_prediction_extension(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    assert prediction_extension(series) == ".nii.gz"  # a DICOM series: NIfTI by default
    assert prediction_extension(series, "dicom-seg") == ".dcm"
    assert prediction_extension("scan.mha", "nifti") == ".nii.gz"
    assert prediction_extension("scan.mha") == ".mha"
    with pytest.raises(InputError, match=r"scan\.mha: --output-format dicom-seg needs DICOM series"):
        prediction_extension("scan.mha", "dicom-seg")
    with pytest.raises(InputError, match=r"cell\.png: --output-format nifti holds 3D images"):
        prediction_extension("cell.png", "nifti")
    assert format_of(tmp_path / "1.2.840.99") is format_of(series)  # FOLDER/SERIES_UID
    assert split_extension(tmp_path / "1.2.840.99") == ("1.2.840.99", "")
