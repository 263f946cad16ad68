"""`predict` on a DICOM series equals `predict` on the same volume as NIfTI; `--output-format dicom-seg` reads back
to those labels. The model is trained (2 iterations) on a dataset whose image is that DICOM series."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dicom_series import brain_crop, write_series
from extras import NEEDS_HIGHDICOM, has
from fusionseg.cli import main as cli
from fusionseg.data import read_dicom_seg, read_label

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
UID = "1.2.826.0.1.3680043.9.7.4"
TRAIN = ["--model", "unet", "--model-kwargs", '{"features": [4, 8]}', "--patch-size", "16,16,8", "--epochs", "1",
         "--iters-per-epoch", "2", "--batch-size", "2", "--no-progress", "--seed", "0",
         "--val-fraction", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(checkpoint trained on a DICOM dataset, the series folder, the same volume as NIfTI)."""
    root = tmp_path_factory.mktemp("dicom_predict")
    image = brain_crop()
    sitk.WriteImage(image, str(root / "brain.nii.gz"))
    series = write_series(image, root / "series" / "brain", UID)
    data = root / "Dataset001_Brain"
    for case in ("a", "b"):
        shutil.copytree(series, data / "imagesTr" / f"{case}_0000")
    nifti = nib.load(root / "brain.nii.gz")
    label = (np.asarray(nifti.dataobj) > 60).astype(np.uint8) + (np.asarray(nifti.dataobj) > 110)
    (data / "labelsTr").mkdir()
    for case in ("a", "b"):
        nib.save(nib.Nifti1Image(label.astype(np.uint8), nifti.affine), data / "labelsTr" / f"{case}.nii.gz")
    names = {"background": 0, "grey matter": 1, "white matter": 2}
    (data / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": names}))
    assert cli(["train", "--data", str(data), "--output", str(root / "run"), *TRAIN]) == 0
    checkpoint = root / "run" / "best.pt"
    ckpt = torch.load(checkpoint, weights_only=True)
    gen = torch.Generator().manual_seed(0)
    for value in ckpt["state_dict"].values():  # 2 iterations often predict background only: perturb the weights
        if value.is_floating_point():
            value.add_(torch.randn(value.shape, generator=gen) * 0.3)
    torch.save(ckpt, checkpoint)
    return checkpoint, root / "series", root / "brain.nii.gz"


def _predict(checkpoint: Path, source: Path, out: Path, *extra: str) -> int:
    return cli(["predict", "--checkpoint", str(checkpoint), "--input", str(source), "--output", str(out),
                "--no-progress", *extra])  # fmt: skip


def test_predict_on_a_dicom_series_equals_predict_on_nifti(trained, tmp_path):
    checkpoint, series, nifti = trained
    assert _predict(checkpoint, series, tmp_path / "dicom") == 0
    assert _predict(checkpoint, nifti, tmp_path / "nifti") == 0
    ours, ours_meta = read_label(tmp_path / "dicom" / "brain.nii.gz")
    want, want_meta = read_label(tmp_path / "nifti" / "brain.nii.gz")
    assert ours.shape == (32, 32, 8)
    assert len(np.unique(want)) > 1  # a constant map would agree trivially
    np.testing.assert_array_equal(ours, want)
    np.testing.assert_allclose(ours_meta["affine"], want_meta["affine"], atol=1e-5)


@pytest.mark.skipif(not has("highdicom"), reason=NEEDS_HIGHDICOM)
def test_predict_writes_a_dicom_seg_that_reads_back_to_the_labels(trained, tmp_path, capsys):
    import highdicom as hd

    checkpoint, series, nifti = trained
    assert _predict(checkpoint, series, tmp_path / "seg", "--output-format", "dicom-seg") == 0
    assert _predict(checkpoint, nifti, tmp_path / "nifti") == 0
    assert sorted(p.name for p in (tmp_path / "seg").iterdir() if not p.name.startswith(".")) == ["brain.dcm"]
    seg = hd.seg.segread(str(tmp_path / "seg" / "brain.dcm"))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["grey matter", "white matter"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == UID
    labels = read_dicom_seg(tmp_path / "seg" / "brain.dcm", series / "brain")
    np.testing.assert_array_equal(labels, read_label(tmp_path / "nifti" / "brain.nii.gz")[0])
    capsys.readouterr()
    assert _predict(checkpoint, nifti, tmp_path / "bad", "--output-format", "dicom-seg") == 2
    assert "brain.nii.gz: --output-format dicom-seg needs DICOM series" in capsys.readouterr().err


def test_a_bad_series_is_one_line_and_the_others_are_predicted(trained, tmp_path, capsys):
    checkpoint, series, _ = trained
    shutil.copytree(series / "brain", tmp_path / "in" / "good")
    write_series(brain_crop(), tmp_path / "in" / "ragged", UID + ".2", rows=20)  # slices of two sizes
    capsys.readouterr()
    assert _predict(checkpoint, tmp_path / "in", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "1 of 2 case(s) failed" in err
    assert [line.strip() for line in err.splitlines() if "ragged" in line] == [
        f"ragged: {tmp_path / 'in' / 'ragged'}: mixed DICOM series: slice IM0001.dcm differs in size or orientation "
        "from IM0000.dcm; split the series into folders of like slices"
    ]
    assert (tmp_path / "out" / "good.nii.gz").is_file()
