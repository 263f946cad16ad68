"""The data layer on real files from ../shared/data (skipped when the folder is absent)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from fusionseg.data import (
    build_preprocessing,
    case_dict,
    eval_transforms,
    load_for_inference,
    save_prediction,
    scan_dataset,
    train_transforms,
)


def test_nuclei_png_folder_dataset(shared_data, tmp_path):
    root = tmp_path / "nuclei"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images" / "dsb.png").symlink_to(shared_data / "nuclei2d" / "image.png")  # uint16 grey
    (root / "masks" / "dsb.png").symlink_to(shared_data / "nuclei2d" / "mask.png")  # 0/255
    info = scan_dataset(root)
    assert (info.num_classes, info.in_channels, info.modality) == (2, 1, "2d")
    pre = build_preprocessing(info)
    assert pre["patch_size"] == [256, 256] and pre["binary_as_255"]
    patches = train_transforms(pre)(case_dict(info.cases[0]))
    assert patches[0]["image"].shape == (1, 256, 256) and set(patches[0]["label"].unique().tolist()) <= {0, 1}
    assert any(p["label"].sum() > 0 for p in patches)  # class-balanced sampling finds nuclei
    image, meta = load_for_inference(info.cases[0].images, pre)
    label = eval_transforms(pre)(case_dict(info.cases[0]))["label"][0]
    out = save_prediction(label, meta, tmp_path / "pred.png")
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(shared_data / "nuclei2d" / "mask.png")))
    assert image.shape == (1, 512, 512) and abs(float(image.mean())) < 1e-3


def test_brain_atlas_nnunet_dataset_resampled_roundtrip(shared_data, tmp_path):
    root = tmp_path / "brain"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / "colin_0000.nii.gz").symlink_to(shared_data / "brain3d" / "t1.nii.gz")
    (root / "labelsTr" / "colin.nii.gz").symlink_to(shared_data / "brain3d" / "aal.nii.gz")
    names = [line.split()[1] for line in (shared_data / "brain3d" / "aal_labels.txt").read_text().splitlines() if line]
    labels = {"background": 0, **{n: i + 1 for i, n in enumerate(names)}}
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": labels}))
    info = scan_dataset(root)
    assert (info.num_classes, info.modality) == (117, "MRI")
    pre = build_preprocessing(info, target_spacing=(2.0, 2.0, 2.0))
    assert pre["normalisation"] == "zscore" and pre["patch_size"] == [64, 96, 64]
    image, meta = load_for_inference(info.cases[0].images, pre)
    assert image.shape == (1, 91, 109, 91)
    atlas_2mm = eval_transforms(pre)(case_dict(info.cases[0]))["label"][0]
    out = save_prediction(atlas_2mm.to(torch.int16), meta, tmp_path / "pred.nii.gz")
    written, source = nib.load(str(out)), nib.load(str(shared_data / "brain3d" / "aal.nii.gz"))
    assert written.shape == source.shape == (181, 217, 181)
    np.testing.assert_allclose(written.affine, source.affine)
    got, want = np.asarray(written.dataobj), np.asarray(source.dataobj)
    assert (got == want)[want > 0].mean() > 0.8  # 1 mm → 2 mm → 1 mm of 116 small regions
