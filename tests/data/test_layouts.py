"""nnU-Net v2 dataset layouts end to end at the data level: scan → build_preprocessing → eval transforms →
prediction/probabilities written back. Regions + ignore label, mixed normalisation over 4 channels, nnU-Net's RGB
2D layout, MHA/MHD/NRRD/NHDR, 120 classes, and one-line errors for bad dataset.json entries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fusionseg.data import (
    Preprocessing,
    build_preprocessing,
    case_dict,
    eval_transforms,
    labels_to_regions,
    load_for_inference,
    phantom,
    prediction_extension,
    probability_extension,
    read_image,
    read_label,
    save_prediction,
    save_probabilities,
    scan_dataset,
    validate_dataset,
)
from fusionseg.data.normalization import ChannelNormalisation
from fusionseg.errors import InputError

BRATS_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing": 3, "ignore": 4}
# LPS-aligned, anisotropic (as ITK/NRRD files usually are): RAS affine diag(-0.8, -0.9, 2).
LPS_ALIGNED = np.array([[-0.8, 0, 0, 10.0], [0, -0.9, 0, 20.0], [0, 0, 2.0, -5.0], [0, 0, 0, 1]], dtype=np.float64)


def _nested_label(shape: tuple[int, ...], rng: np.random.Generator, ignore: int | None = None) -> np.ndarray:
    """Nested spheres 1 ⊃ 2 ⊃ 3 (BraTS-like), plus a slab of the ignore label."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0)) + rng.uniform(0, 0.05)
    label = np.select([radius < 0.3, radius < 0.55, radius < 0.8], [3, 2, 1], 0).astype(np.uint8)
    if ignore is not None:
        label[..., :2] = ignore  # unannotated slices
    return label


# ----------------------------------------------------------------------------------- regions + ignore


def test_regions_and_ignore_label_dataset(tmp_path, make_nnunet):
    rng = np.random.default_rng(0)
    shape = (12, 10, 8)
    labels = {f"b{i}": _nested_label(shape, rng, ignore=4) for i in range(2)}
    images = {c: [(lab * 50 + rng.normal(0, 5, shape)).astype(np.float32)] for c, lab in labels.items()}
    root = make_nnunet(
        tmp_path / "brats",
        images,
        labels,
        ".nii.gz",
        channel_names={"0": "FLAIR"},
        labels=BRATS_LABELS,
        regions_class_order=[1, 2, 3],
    )
    info = scan_dataset(root)
    assert info.regions == [(1, 2, 3), (2, 3), (3,)] and info.regions_class_order == [1, 2, 3]
    assert (info.num_classes, info.ignore_label) == (4, 4)
    pre = build_preprocessing(info, patch_size=(8, 8, 8), num_samples=2)
    assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    assert (pre.num_classes, pre.out_channels, pre.activation, pre.label_layout.ignore_label) == (4, 3, "sigmoid", 4)
    assert pre.label_layout.regions == ((1, 2, 3), (2, 3), (3,)) and pre.label_layout.region_names == (
        "whole tumor",
        "tumor core",
        "enhancing",
    )
    assert validate_dataset(info, pre) == 2  # the ignore value is allowed in label maps

    sample = eval_transforms(pre)(case_dict(info.cases[0]))
    assert np.array_equal(sample["label"][0].numpy(), labels["b0"])  # ignore kept, RAS input unchanged
    batch = torch.stack([eval_transforms(pre)(case_dict(case))["label"] for case in info.cases])
    layout = pre.label_layout
    targets, valid = layout.targets(batch[:, 0], dim=1)
    assert targets.shape == (2, 3, *shape) and valid.shape == (2, *shape)
    assert set(batch.unique().tolist()) == {0, 1, 2, 3, 4}
    assert torch.equal(targets[:, 0] > 0, (batch[:, 0] > 0) & (batch[:, 0] != 4))
    assert torch.equal(valid.bool(), batch[:, 0] != 4)

    # Predict: region probabilities → nested label map painted in regions_class_order, on the input grid.
    _, meta = load_for_inference(info.cases[0].images, pre)
    probs = labels_to_regions(sample["label"][0], layout.regions).float() * 0.9 + 0.05
    out = save_prediction(probs, meta, tmp_path / f"b0{prediction_extension(info.cases[0].images[0])}")
    written, _ = read_label(out)
    np.testing.assert_array_equal(written, np.where(labels["b0"] == 4, 0, labels["b0"]))
    prob_out = save_probabilities(probs, meta, tmp_path / f"b0_probabilities{probability_extension(out)}")
    back, _ = read_image(prob_out)
    np.testing.assert_allclose(back, probs.numpy(), atol=1e-6)
    np.testing.assert_array_equal(layout.to_label_map(back), written)


def test_label_values_outside_labels_and_ignore(tmp_path, make_nnunet, nifti_writer):
    rng = np.random.default_rng(1)
    labels = {f"b{i}": _nested_label((8, 8, 6), rng, ignore=4) for i in range(2)}
    images = {c: [rng.normal(size=(8, 8, 6)).astype(np.float32)] for c in labels}
    root = make_nnunet(
        tmp_path / "bad",
        images,
        labels,
        ".nii.gz",
        channel_names={"0": "T2"},
        labels=BRATS_LABELS,
        regions_class_order=[1, 2, 3],
    )
    info = scan_dataset(root)
    pre = build_preprocessing(info)
    labels["b1"][0, 0, 3] = 6
    nifti_writer(info.cases[1].label, labels["b1"])
    pattern = (
        r"b1\.nii\.gz: label values \[6\] are outside the declared classes 0\.\.3 and the ignore label 4; "
        r"fix the label map or the labels in dataset\.json"
    )
    for run in (lambda: validate_dataset(info, pre), lambda: build_preprocessing(info)):
        with pytest.raises(InputError, match=pattern):
            run()


# ----------------------------------------------------------------------------- 4 channels, mixed schemes


def _head(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(4 channels zero outside a small central 'head', label) — cropping to non-zero keeps < 3/4."""
    head = np.zeros(shape, bool)
    head[4:12, 3:10, 2:8] = True
    label = np.zeros(shape, np.uint8)
    label[6:10, 5:8, 3:6] = 1
    ct = rng.normal(40, 300, shape) + 200 * label
    t1 = rng.normal(500, 60, shape) + 100 * label
    channels = [ct, t1, rng.normal(3, 1, shape), rng.uniform(-50, 900, shape)]
    return np.stack([np.where(head, c, 0) for c in channels]).astype(np.float32), label


def test_four_channels_with_mixed_normalisation(tmp_path, make_nnunet):
    rng = np.random.default_rng(2)
    shape = (16, 14, 10)
    cases = {f"m{i}": _head(shape, rng) for i in range(2)}
    root = make_nnunet(
        tmp_path / "mixed",
        {c: list(img) for c, (img, _) in cases.items()},
        {c: lab for c, (_, lab) in cases.items()},
        ".nii.gz",
        channel_names={"0": "CT", "1": "T1", "2": "noNorm", "3": "rescale_to_0_1"},
        labels={"background": 0, "lesion": 1},
    )
    info = scan_dataset(root)
    pre = build_preprocessing(info, patch_size=(16, 14, 8))
    assert pre.median_relative_size_after_cropping == pytest.approx(8 * 7 * 6 / np.prod(shape))
    assert pre.use_mask_for_norm is True
    specs = pre.channel_normalisation
    assert [s.scheme for s in specs] == ["ct", "zscore", "noNorm", "rescale_to_0_1"]
    assert specs[1].use_mask is True and specs[0].use_mask is None
    # CT statistics: the training foreground (label > 0) of both cases, exactly (fewer than 20000 voxels).
    fg = np.concatenate([img[0][lab > 0] for img, lab in cases.values()]).astype(np.float64)
    np.testing.assert_allclose(specs[0].clip, np.percentile(fg, [0.5, 99.5]), rtol=1e-6)
    np.testing.assert_allclose([specs[0].mean, specs[0].std], [fg.mean(), fg.std()], rtol=1e-6)

    image, _ = cases["m0"]
    out = eval_transforms(pre)(case_dict(info.cases[0]))["image"].numpy()
    assert out.shape == (4, *shape)
    lo, hi = specs[0].clip
    np.testing.assert_allclose(out[0], (np.clip(image[0], lo, hi) - fg.mean()) / fg.std(), rtol=1e-4, atol=1e-4)
    mask = np.any(image != 0, axis=0)  # a box: no holes to fill
    inside = image[1][mask].astype(np.float64)
    np.testing.assert_allclose(out[1], np.where(mask, (image[1] - inside.mean()) / inside.std(), 0), atol=1e-4)
    np.testing.assert_array_equal(out[2], image[2])
    np.testing.assert_allclose(out[3], (image[3] - image[3].min()) / (image[3].max() - image[3].min()), atol=1e-6)


def test_use_mask_for_norm_follows_the_rule_or_dataset_json(tmp_path, make_nnunet):
    rng = np.random.default_rng(3)
    images = {f"f{i}": [rng.normal(100, 10, (8, 8, 6)).astype(np.float32)] for i in range(2)}  # no zero background
    labels = {c: (rng.uniform(size=(8, 8, 6)) > 0.7).astype(np.uint8) for c in images}
    root = make_nnunet(
        tmp_path / "full", images, labels, ".nii.gz", channel_names={"0": "MR"}, labels={"background": 0, "x": 1}
    )
    pre = build_preprocessing(scan_dataset(root))
    assert pre.use_mask_for_norm is False and pre.median_relative_size_after_cropping == 1.0
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "use_mask_for_norm": True}))
    pre = build_preprocessing(scan_dataset(root))
    assert pre.use_mask_for_norm is True
    assert pre.channel_normalisation == (ChannelNormalisation("zscore", use_mask=True),)


# ---------------------------------------------------------------------------------- nnU-Net's RGB 2D


@pytest.mark.parametrize("names", [("R", "G", "B"), ("rgb_to_0_1",) * 3])
def test_nnunet_rgb_2d_layout_one_file_three_channels(tmp_path, make_nnunet, names):
    rng = np.random.default_rng(4)
    labels, images = {}, {}
    for i in range(2):
        grey, label = phantom(2, (20, 24), 3, rng)
        rgb = np.clip(np.stack([grey, grey * 0.6, 1 - grey]), 0, 1) * 255
        images[f"road{i}"] = [(rgb.astype(np.uint8), True)]
        labels[f"road{i}"] = label
    root = make_nnunet(
        tmp_path / "rgb",
        images,
        labels,
        ".png",
        channel_names=dict(enumerate(names)),
        labels={"background": 0, "a": 1, "b": 2},
    )
    info = scan_dataset(root)
    assert (info.layout, info.spatial_dims, info.in_channels, info.modality) == ("nnunet", 2, 3, "2d")
    assert [p.name for p in info.cases[0].images] == ["road0_0000.png"]
    pre = build_preprocessing(info, size_multiple=8)
    out = eval_transforms(pre)(case_dict(info.cases[0]))
    rgb = np.moveaxis(np.asarray(Image.open(info.cases[0].images[0])), -1, 0).astype(np.float64)
    if names[0] == "R":
        expected = (rgb - rgb.mean((1, 2), keepdims=True)) / rgb.std((1, 2), keepdims=True)
    else:
        expected = rgb / 255
    np.testing.assert_allclose(out["image"].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert np.array_equal(out["label"][0].numpy(), labels["road0"])
    x, meta = load_for_inference(info.cases[0].images, pre)
    assert x.shape == (3, 20, 24)
    written = save_prediction(out["label"][0], meta, tmp_path / f"road0{prediction_extension('road0_0000.png')}")
    np.testing.assert_array_equal(np.asarray(Image.open(written)), labels["road0"])


def test_grey_png_cannot_stand_for_three_channels(tmp_path, make_nnunet):
    images = {"g": [np.zeros((8, 8), np.uint8)]}
    root = make_nnunet(
        tmp_path / "grey",
        images,
        {"g": np.zeros((8, 8), np.uint8)},
        ".png",
        channel_names={"0": "R", "1": "G", "2": "B"},
        labels={"background": 0, "x": 1},
    )
    with pytest.raises(InputError, match=r"g_0001\.png: missing channel 1 of case 'g' .*store all channels in g_0000"):
        scan_dataset(root)


# -------------------------------------------------------------------------------- MHA, MHD, NRRD, NHDR


@pytest.mark.parametrize("ext", [".mha", ".mhd", ".nrrd", ".nhdr"])
def test_itk_and_nrrd_datasets_end_to_end(tmp_path, make_nnunet, ext):
    rng = np.random.default_rng(5)
    cases = {f"s{i}": phantom(3, (12, 10, 8), 3, rng) for i in range(2)}
    root = make_nnunet(
        tmp_path / "ds",
        {c: [img.astype(np.float32)] for c, (img, _) in cases.items()},
        {c: lab for c, (_, lab) in cases.items()},
        ext,
        affine=LPS_ALIGNED,
        channel_names={"0": "T2"},
        labels={"background": 0, "a": 1, "b": 2},
    )
    if ext == ".mhd":
        assert sorted(p.suffix for p in (root / "imagesTr").iterdir()) == [".mhd", ".mhd", ".raw", ".raw"]
    info = scan_dataset(root)
    assert (info.file_ending, info.spatial_dims, len(info.cases), info.modality) == (ext, 3, 2, "MRI")
    pre = build_preprocessing(info, target_spacing="median", patch_size=(8, 8, 8))
    np.testing.assert_allclose(pre.target_spacing, [0.8, 0.9, 2.0], rtol=1e-6)  # RAS order, median of the cases
    case = info.cases[0]
    sample = eval_transforms(pre)(case_dict(case))
    assert sample["image"].shape == (1, 12, 10, 8) and sample["label"].shape == (1, 12, 10, 8)
    _, meta = load_for_inference(case.images, pre)
    probs = torch.nn.functional.one_hot(sample["label"][0], 3).movedim(-1, 0).float() * 0.8 + 0.2 / 3
    label_path = save_prediction(probs, meta, tmp_path / f"s0{prediction_extension(case.images[0])}")
    prob_path = save_probabilities(probs, meta, tmp_path / f"s0_probabilities{probability_extension(case.images[0])}")
    written, written_meta = read_label(label_path)
    truth, truth_meta = read_label(case.label)
    np.testing.assert_array_equal(written, truth)  # the LPS file's own voxel order is restored
    np.testing.assert_allclose(written_meta["affine"], truth_meta["affine"], atol=1e-5)
    back, back_meta = read_image(prob_path)
    np.testing.assert_allclose(back.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(back.argmax(0), written)
    np.testing.assert_allclose(back_meta["affine"], truth_meta["affine"], atol=1e-5)


# ------------------------------------------------------------------------------------------ 120 classes


def test_120_classes(tmp_path, make_nnunet):
    rng = np.random.default_rng(6)
    shape = (10, 10, 6)
    labels = {f"a{i}": rng.permutation(np.arange(600) % 120).reshape(shape).astype(np.uint8) for i in range(2)}
    images = {c: [(lab * 3.0 + rng.normal(0, 1, shape)).astype(np.float32)] for c, lab in labels.items()}
    names = {"background": 0, **{f"region {k}": k for k in range(1, 120)}}
    root = make_nnunet(tmp_path / "atlas", images, labels, ".nii.gz", channel_names={"0": "T1"}, labels=names)
    info = scan_dataset(root)
    pre = build_preprocessing(info, patch_size=(8, 8, 4))
    assert (info.num_classes, pre.num_classes, pre.out_channels, pre.activation) == (120, 120, 120, "softmax")
    sample = eval_transforms(pre)(case_dict(info.cases[1]))
    assert int(sample["label"].max()) == 119
    _, meta = load_for_inference(info.cases[1].images, pre)
    out = save_prediction(sample["label"][0], meta, tmp_path / "a1.nii.gz")
    written, _ = read_label(out)
    assert written.dtype == np.uint8 and np.array_equal(written, labels["a1"])


# ------------------------------------------------------------------------------- bad dataset.json entries


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            {"labels": {"background": 0, "wt": [1, 2], "tc": 2}},
            r'dataset\.json: region labels need "regions_class_order"',
        ),
        ({"labels": {"background": 0, "a": 1, "ignore": 1}}, r'dataset\.json: "ignore" = 1 must be the highest'),
        ({"file_ending": ".jpg"}, r"dataset\.json: file_ending '\.jpg' cannot hold label maps"),
        ({"file_ending": ".dcm"}, r"dataset\.json: file_ending '\.dcm' is not supported"),
        ({"use_mask_for_norm": "yes"}, r'dataset\.json: "use_mask_for_norm" must be true or false'),
    ],
)
def test_bad_dataset_json_entries(tmp_path, make_nnunet, entries, message):
    images = {"c": [np.zeros((4, 4, 4), np.float32)]}
    root = make_nnunet(
        tmp_path / "ds",
        images,
        {"c": np.zeros((4, 4, 4), np.uint8)},
        ".nii.gz",
        channel_names={"0": "CT"},
        labels={"background": 0, "x": 1},
    )
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, **entries}))
    with pytest.raises(InputError, match=message) as err:
        scan_dataset(root)
    assert "\n" not in str(err.value)
