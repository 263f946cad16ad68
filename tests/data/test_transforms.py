"""Preprocessing description, MONAI pipelines (shapes/dtypes/normalisation), inference I/O round trips."""

from __future__ import annotations

import json

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch
from PIL import Image

from fusionseg.data import (
    Case,
    Preprocessing,
    build_preprocessing,
    case_dict,
    eval_transforms,
    load_for_inference,
    phantom,
    read_label,
    save_prediction,
    scan_dataset,
)
from fusionseg.data.normalization import ChannelNormalisation
from fusionseg.errors import InputError

# Non-RAS (x and y flipped, axes permuted), anisotropic: exercises orientation and resampling.
LPS_PERMUTED = np.array(
    [[0.0, -1.2, 0.0, 40.0], [-0.8, 0.0, 0.0, 25.0], [0.0, 0.0, 2.0, -10.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float64
)


def _ct_dataset(root, nifti_writer, affine=LPS_PERMUTED, n=2, size=(28, 24, 12)):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        image, label = phantom(3, size, 3, rng)
        nifti_writer(root / "imagesTr" / f"ct_{i}_0000.nii.gz", (image * 1000 - 500).astype(np.int16), affine)
        nifti_writer(root / "labelsTr" / f"ct_{i}.nii.gz", label, affine)
    (root / "dataset.json").write_text(
        json.dumps(
            {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}
        )
    )
    return root


def test_build_preprocessing_2d(phantom2d_root):
    pre = build_preprocessing(scan_dataset(phantom2d_root))
    assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre  # JSON-able
    assert pre.spatial_dims == 2 and pre.in_channels == 1 and pre.num_classes == 3
    assert pre.normalisation == "zscore" and pre.orientation is None and pre.patch_size == (32, 32)
    assert pre.channel_normalisation == (ChannelNormalisation("zscore", use_mask=False),)
    assert pre.label_layout.ignore_label is None and pre.label_layout.regions is None and pre.out_channels == 3
    assert pre.num_samples == 1  # every patch of a batch from its own case
    assert pre.label_layout.names == {0: "background", 1: "class1", 2: "class2"}
    stored = pre.to_dict()  # what checkpoints hold
    assert stored["labels"] == {"0": "background", "1": "class1", "2": "class2"} and stored["normalisation"] == "zscore"


def test_build_preprocessing_ct_stats_and_spacing(tmp_path, nifti_writer):
    info = scan_dataset(_ct_dataset(tmp_path / "ct", nifti_writer))
    pre = build_preprocessing(info, target_spacing="median", size_multiple=8)
    assert pre.modality == "CT" and pre.normalisation == "ct"
    # RAS order of the permuted affine: world x ← voxel axis 1 (1.2 mm, 24 voxels), y ← axis 0 (0.8 mm, 28).
    np.testing.assert_allclose(pre.median_spacing, [1.2, 0.8, 2.0], rtol=1e-6)
    assert pre.median_shape == (24.0, 28.0, 12.0) and pre.patch_size == (24, 24, 8)
    stats = pre.channel_normalisation[0]
    fg = np.concatenate(
        [nib.load(str(c.images[0])).get_fdata()[nib.load(str(c.label)).get_fdata() > 0] for c in info.cases]
    )
    assert stats.scheme == "ct" and abs(stats.mean - fg.mean()) < 0.02 * fg.std()
    assert stats.clip[0] < stats.mean < stats.clip[1]
    with pytest.raises(InputError, match="patch_size must be 3"):
        build_preprocessing(info, patch_size=(32, 32))
    with pytest.raises(InputError, match="target_spacing"):
        build_preprocessing(info, target_spacing="auto")


def test_eval_transforms_normalise_and_keep_labels(phantom3d_root):
    info = scan_dataset(phantom3d_root)
    pre = build_preprocessing(info)
    sample = eval_transforms(pre)(case_dict(info.cases[0]))
    raw, _ = read_label(info.cases[0].label)
    assert sample["image"].shape == (1, 24, 20, 16) and sample["label"].shape == (1, 24, 20, 16)
    assert abs(float(sample["image"].mean())) < 1e-4 and abs(float(sample["image"].std()) - 1) < 1e-3
    assert np.array_equal(sample["label"][0].numpy(), raw)  # RAS input: orientation is the identity
    unlabeled = eval_transforms(pre)(case_dict(Case("x", info.cases[0].images)))
    assert "label" not in unlabeled and unlabeled["image"].shape == (1, 24, 20, 16)


def test_ct_normalisation_uses_dataset_statistics(tmp_path, nifti_writer):
    info = scan_dataset(_ct_dataset(tmp_path / "ct", nifti_writer))
    pre = build_preprocessing(info)
    spec = pre.channel_normalisation[0]
    image = eval_transforms(pre)(case_dict(info.cases[0]))["image"]
    raw = np.clip(nib.load(str(info.cases[0].images[0])).get_fdata(), *spec.clip)
    expected = (raw - spec.mean) / spec.std
    np.testing.assert_allclose(np.sort(image.numpy().ravel()), np.sort(expected.ravel()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target_spacing", [None, (1.0, 1.0, 1.0)])
@pytest.mark.parametrize("as_probabilities", [False, True])
def test_inference_roundtrip_keeps_input_geometry(tmp_path, nifti_writer, target_spacing, as_probabilities):
    info = scan_dataset(_ct_dataset(tmp_path / "ct", nifti_writer))
    pre = build_preprocessing(info, target_spacing=target_spacing)
    case = info.cases[0]
    image, meta = load_for_inference(case.images, pre)
    processed_label = eval_transforms(pre)(case_dict(case))["label"][0]
    assert image.shape[1:] == processed_label.shape
    if target_spacing is None:
        assert image.shape == (1, 24, 28, 12)  # reoriented to RAS
    else:
        assert image.shape[1:] == (29, 23, 23)  # MONAI keeps the extent: (n - 1)·spacing + 1 voxels at 1 mm
    pred = (
        torch.nn.functional.one_hot(processed_label, 3).movedim(-1, 0).float() if as_probabilities else processed_label
    )
    out = save_prediction(pred, meta, tmp_path / "pred.nii.gz")
    written = nib.load(str(out))
    source = nib.load(str(case.label))
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    got, want = np.asarray(written.dataobj), np.asarray(source.dataobj)
    if target_spacing is None:
        assert np.array_equal(got, want)  # orientation alone is undone exactly
    else:
        for k in (1, 2):
            dice = 2 * ((got == k) & (want == k)).sum() / ((got == k).sum() + (want == k).sum())
            assert dice > 0.85, (k, dice)


def test_inference_nrrd_input_and_output(tmp_path):
    image, label = phantom(3, (20, 18, 16), 3, rng=1)
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.9, 0.9, 1.5]),
        "space origin": np.array([5.0, -3.0, 2.0]),
    }
    nrrd.write(str(tmp_path / "img.nrrd"), image, header)
    pre = Preprocessing.from_dict(  # a hand-written preprocessing: the rest takes its defaults
        {"spatial_dims": 3, "in_channels": 1, "num_classes": 3, "orientation": "RAS", "target_spacing": None}
    )
    x, meta = load_for_inference(tmp_path / "img.nrrd", pre)
    assert x.shape == (1, 20, 18, 16)
    ras = np.flip(image, (0, 1))  # LPS file → RAS grid flips x and y
    np.testing.assert_allclose(x[0].numpy(), (ras - ras.mean()) / ras.std(), rtol=1e-4, atol=1e-4)
    # The model's label map lives on the RAS grid (x, y flipped); the file must get the original order back.
    ras_label = torch.from_numpy(np.flip(label, (0, 1)).copy()).long()
    out = save_prediction(ras_label, meta, tmp_path / "pred.nrrd")
    back, h = nrrd.read(str(out))
    assert np.array_equal(back, label) and h["space"] == "left-posterior-superior"
    np.testing.assert_allclose(h["space origin"], header["space origin"])


def test_inference_2d_png(phantom2d_root, tmp_path):
    info = scan_dataset(phantom2d_root)
    pre = build_preprocessing(info)
    x, meta = load_for_inference(info.test_cases[0].images, pre)
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    truth, _ = read_label(info.test_cases[0].label)
    out = save_prediction(torch.from_numpy(truth).long(), meta, tmp_path / "p.png")
    np.testing.assert_array_equal(np.asarray(Image.open(out)), truth)  # 3 classes: indices, not 0/255
    with pytest.raises(ValueError, match="prediction must be"):
        save_prediction(torch.zeros(1, 2, 32, 32), meta, tmp_path / "q.png")


def test_inference_2d_resampling_roundtrip(phantom2d_root, tmp_path):
    info = scan_dataset(phantom2d_root)
    pre = build_preprocessing(info, target_spacing=(2.0, 2.0))
    x, meta = load_for_inference(info.test_cases[0].images, pre)
    assert x.shape == (1, 16, 16)
    truth, _ = read_label(info.test_cases[0].label)
    small = eval_transforms(pre)(case_dict(info.test_cases[0]))["label"][0]
    back, _ = read_label(save_prediction(small, meta, tmp_path / "p.png"))
    assert back.shape == truth.shape and (back == truth).mean() > 0.85


def test_multichannel_files_get_per_channel_normalisation(tmp_path, nifti_writer):
    root = tmp_path / "mc"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        image, label = phantom(3, (16, 16, 8), 2, rng)
        nifti_writer(root / "imagesTr" / f"c{i}_0000.nii.gz", (image * 1000).astype(np.int16))  # CT-like
        nifti_writer(root / "imagesTr" / f"c{i}_0001.nii.gz", image * 5 + 100)  # PET-like
        nifti_writer(root / "labelsTr" / f"c{i}.nii.gz", label)
    meta = {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "lesion": 1}}
    (root / "dataset.json").write_text(json.dumps(meta))
    info = scan_dataset(root)
    pre = build_preprocessing(info, patch_size=(16, 16, 8))
    assert [s.scheme for s in pre.channel_normalisation] == ["ct", "zscore"]
    sample = eval_transforms(pre)(case_dict(info.cases[0]))
    assert sample["image"].shape == (2, 16, 16, 8)
    pet = sample["image"][1]
    assert abs(float(pet.mean())) < 1e-4 and abs(float(pet.std(unbiased=False)) - 1) < 1e-3


def test_rgb_2d_pipeline(tmp_path):
    root = tmp_path / "rgb"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        grey, label = phantom(2, (40, 36), 2, rng)
        rgb = np.stack([grey, grey * 0.5, 1 - grey], -1)
        Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"im{i}.jpg")
        Image.fromarray(label * np.uint8(255)).save(root / "masks" / f"im{i}.png")
    info = scan_dataset(root)
    pre = build_preprocessing(info, size_multiple=16)
    assert pre.in_channels == 3 and pre.patch_size == (32, 32) and pre.num_classes == 2
    whole = eval_transforms(pre)(case_dict(info.cases[1]))
    assert whole["image"].shape == (3, 40, 36)
    means = whole["image"].mean(dim=(1, 2))
    assert torch.allclose(means, torch.zeros(3), atol=1e-4)  # per-channel z-score


def test_nrrd_nnunet_dataset(tmp_path):
    root = tmp_path / "nrrd"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    header = {"space": "left-posterior-superior", "space directions": np.diag([0.7, 0.7, 1.4])}
    rng = np.random.default_rng(0)
    for i in range(2):
        image, label = phantom(3, (20, 20, 10), 3, rng)
        nrrd.write(str(root / "imagesTr" / f"n{i}_0000.nrrd"), image, header)
        nrrd.write(str(root / "labelsTr" / f"n{i}.nrrd"), label, header)
    meta = {"channel_names": {"0": "T2"}, "labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nrrd"}
    (root / "dataset.json").write_text(json.dumps(meta))
    info = scan_dataset(root)
    assert info.file_ending == ".nrrd" and info.modality == "MRI"
    pre = build_preprocessing(info, target_spacing=(1.4, 1.4, 1.4), patch_size=(16, 16, 16))
    sample = eval_transforms(pre)(case_dict(info.cases[0]))
    assert sample["image"].shape == (1, 10, 10, 10) and sample["label"].shape == (1, 10, 10, 10)  # 0.7 → 1.4 mm
    x, meta_in = load_for_inference(info.cases[0].images, pre)
    assert x.shape == sample["image"].shape
    out = save_prediction(sample["label"][0], meta_in, tmp_path / "pred.nrrd")
    back, h = nrrd.read(str(out))
    truth, _ = nrrd.read(str(info.cases[0].label))
    assert back.shape == truth.shape and (back == truth).mean() > 0.85
    np.testing.assert_allclose(h["space directions"], header["space directions"])


def test_rand_flip_axes_flips_keys_together():
    from itertools import combinations

    from fusionseg.data.transforms import RandFlipAxesd

    flip = RandFlipAxesd(("image", "label"), spatial_dims=3, prob=0.5)
    flip.set_random_state(seed=0)
    base = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    subsets = [list(c) for r in range(4) for c in combinations((1, 2, 3), r)]
    counts = np.zeros(4)
    for _ in range(200):
        out = flip({"image": base, "label": base.clone()})
        assert torch.equal(out["image"], out["label"])
        (axes,) = [a for a in subsets if torch.equal(out["image"], base.flip(a) if a else base)]
        counts[axes] += 1
    assert np.all((counts[1:] > 70) & (counts[1:] < 130)), counts  # each axis flipped ~half the time
