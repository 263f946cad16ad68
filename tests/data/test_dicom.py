"""DICOM series in (SimpleITK/GDCM, with geometry) and DICOM SEG out (highdicom), on a crop of the shipped brain."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dicom_series import brain_crop, write_series
from extras import NEEDS_HIGHDICOM, has
from fusionseg.data import dicom_series, format_of, read_dicom_seg, read_image, scan_dataset, write_label
from fusionseg.errors import InputError
from fusionseg.inference.inputs import find_inputs

UID = "1.2.826.0.1.3680043.9.7.3"


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, Path]:
    """(a series folder, the same volume as NIfTI)."""
    root = tmp_path_factory.mktemp("dicom")
    image = brain_crop()
    sitk.WriteImage(image, str(root / "brain.nii.gz"))
    return write_series(image, root / "brain", UID), root / "brain.nii.gz"


def test_series_reads_as_the_same_volume_and_geometry_as_nifti(series):
    folder, nifti = series
    image, meta = read_image(folder)
    want, want_meta = read_image(nifti)
    assert format_of(folder).name == "dicom" and meta["format"] == "dicom"
    assert image.shape == want.shape == (1, 32, 32, 8)
    np.testing.assert_array_equal(image, want)
    np.testing.assert_allclose(meta["affine"], want_meta["affine"], atol=1e-5)
    assert abs(meta["affine"][0, 1]) > 0.2  # oblique: the rotation survived
    assert meta["header"]["series_uid"] == UID and len(meta["header"]["files"]) == 8


def test_folders_of_series_are_cases_and_bad_series_are_one_line(series, tmp_path):
    folder, _ = series
    mixed = tmp_path / "two"  # one folder holding two series
    shutil.copytree(folder, mixed)
    write_series(brain_crop((16, 16, 4)), tmp_path / "other", UID + ".9", number=2)
    for f in (tmp_path / "other").iterdir():
        f.rename(mixed / f"b_{f.name}")
    assert dicom_series(mixed) == [mixed / UID, mixed / f"{UID}.9"]
    assert read_image(mixed / f"{UID}.9")[0].shape == (1, 16, 16, 4)
    with pytest.raises(InputError, match=r"two: holds 2 DICOM series; pass its parent folder") as err:
        read_image(mixed)
    assert "\n" not in str(err.value)
    cases = find_inputs(tmp_path)
    assert [(cid, [p.name for p in paths]) for cid, paths in cases] == [(UID, [UID]), (f"{UID}.9", [f"{UID}.9"])]
    assert find_inputs(folder) == [("brain", [folder])]

    ragged = write_series(brain_crop(), tmp_path / "ragged", UID + ".5", rows=20)
    with pytest.raises(InputError, match=r"ragged: mixed DICOM series: slice IM0001\.dcm differs in size"):
        read_image(ragged)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.dcm").write_bytes(b"not dicom")
    with pytest.raises(InputError, match=r"empty: holds no DICOM series"):
        read_image(tmp_path / "empty")


def test_dataset_images_may_be_dicom_series(series, tmp_path):
    folder, nifti = series
    root = tmp_path / "Dataset001_Brain"
    shutil.copytree(folder, root / "imagesTr" / "brain_0000")
    image = nib.load(nifti)
    label = (np.asarray(image.dataobj) > 60).astype(np.uint8)
    (root / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(label, image.affine), root / "labelsTr" / "brain.nii.gz")
    meta = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "tissue": 1}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    info = scan_dataset(root)
    assert [c.case_id for c in info.cases] == ["brain"]
    assert info.cases[0].images == [root / "imagesTr" / "brain_0000"]
    assert info.cases[0].label == root / "labelsTr" / "brain.nii.gz"
    assert info.spatial_dims == 3


@pytest.mark.skipif(not has("highdicom"), reason=NEEDS_HIGHDICOM)
def test_dicom_seg_references_its_series_and_reads_back_the_labels(series, tmp_path):
    import highdicom as hd

    folder, _ = series
    image, meta = read_image(folder)
    labels = np.zeros(image.shape[1:], np.uint8)
    labels[image[0] > 60] = 1
    labels[image[0] > 110] = 2
    labels[:, :, 0] = 0  # an empty slice (left out of the SEG's frames)
    assert set(np.unique(labels)) == {0, 1, 2}
    write_label(labels, {**meta, "class_names": {"1": "grey matter", "2": "white matter"}}, tmp_path / "seg.dcm")
    seg = hd.seg.segread(str(tmp_path / "seg.dcm"))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["grey matter", "white matter"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == UID
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 8
    np.testing.assert_array_equal(read_dicom_seg(tmp_path / "seg.dcm", folder), labels)
    with pytest.raises(InputError, match="DICOM SEG output needs a DICOM series as input"):
        write_label(labels, {**meta, "format": "nifti"}, tmp_path / "bad.dcm")
