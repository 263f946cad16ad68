"""The data layer on the real data shipped with the package (fusionseg.resources), and the real-data builders."""

from __future__ import annotations

import hashlib
import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from fusionseg.data import (
    build_preprocessing,
    case_dict,
    eval_transforms,
    load_for_inference,
    save_prediction,
    scan_dataset,
)
from fusionseg.data.real import AAL_GROUPS, aal_group_table, build_brain3d, build_nuclei2d, build_nuclei2d_tiles
from fusionseg.errors import InputError
from fusionseg.resources import real_data_path


def test_nuclei_png_folder_dataset(real_data_dir, tmp_path):
    root = tmp_path / "nuclei"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images" / "dsb.png").symlink_to(real_data_dir / "nuclei2d" / "image.png")  # uint16 grey
    (root / "masks" / "dsb.png").symlink_to(real_data_dir / "nuclei2d" / "mask.png")  # 0/255
    info = scan_dataset(root)
    assert (info.num_classes, info.in_channels, info.modality) == (2, 1, "2d")
    pre = build_preprocessing(info)
    assert pre.patch_size == (256, 256) and pre.binary_as_255
    image, meta = load_for_inference(info.cases[0].images, pre)
    label = eval_transforms(pre)(case_dict(info.cases[0]))["label"][0]
    out = save_prediction(label, meta, tmp_path / "pred.png")
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(real_data_dir / "nuclei2d" / "mask.png")))
    assert image.shape == (1, 512, 512) and abs(float(image.mean())) < 1e-3


def test_brain_atlas_nnunet_dataset_resampled_roundtrip(real_data_dir, tmp_path):
    root = tmp_path / "brain"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / "colin_0000.nii.gz").symlink_to(real_data_dir / "brain3d" / "t1.nii.gz")
    (root / "labelsTr" / "colin.nii.gz").symlink_to(real_data_dir / "brain3d" / "aal.nii.gz")
    label_lines = (real_data_dir / "brain3d" / "aal_labels.txt").read_text().splitlines()
    names = [line.split()[1] for line in label_lines if line]
    labels = {"background": 0, **{n: i + 1 for i, n in enumerate(names)}}
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": labels}))
    info = scan_dataset(root)
    assert (info.num_classes, info.modality) == (117, "MRI")
    pre = build_preprocessing(info, target_spacing=(2.0, 2.0, 2.0))
    assert pre.normalisation == "zscore" and pre.patch_size == (64, 96, 64)
    image, meta = load_for_inference(info.cases[0].images, pre)
    assert image.shape == (1, 91, 109, 91)
    atlas_2mm = eval_transforms(pre)(case_dict(info.cases[0]))["label"][0]
    out = save_prediction(atlas_2mm.to(torch.int16), meta, tmp_path / "pred.nii.gz")
    written, source = nib.load(str(out)), nib.load(str(real_data_dir / "brain3d" / "aal.nii.gz"))
    assert written.shape == source.shape == (181, 217, 181)
    np.testing.assert_allclose(written.affine, source.affine)
    got, want = np.asarray(written.dataobj), np.asarray(source.dataobj)
    assert (got == want)[want > 0].mean() > 0.8  # 1 mm → 2 mm → 1 mm of 116 small regions


def test_aal_groups_cover_every_region_hemisphere_agnostic(real_data_dir):
    table = aal_group_table(real_data_dir / "brain3d" / "aal_labels.txt")
    assert sorted(table) == list(range(1, 117))
    assert sorted(set(table.values())) == list(range(1, len(AAL_GROUPS) + 1))
    for left in range(1, 108, 2):  # paired regions: odd = left, even = right → same class
        assert table[left] == table[left + 1]
    names = {name: k for k, (name, _) in enumerate(AAL_GROUPS, 1)}
    assert table[71] == table[77] == names["deep_grey"]  # Caudate_L, Thalamus_L
    assert table[29] == table[31] == names["limbic_insula"]  # Insula_L, Cingulum_Ant_L
    assert table[55] == names["temporal"] and table[109] == table[91] == names["cerebellum"]


def test_aal_group_table_rejects_unknown_region(tmp_path):
    (tmp_path / "labels.txt").write_text("1 Precentral_L 2001\n2 Mystery_Region 9999\n")
    with pytest.raises(InputError, match="Mystery_Region"):
        aal_group_table(tmp_path / "labels.txt")


def test_brain3d_split_mirrors_right_hemisphere_onto_left_grid(real_data_dir, tmp_path):
    root = build_brain3d(tmp_path / "brain3d")
    info = scan_dataset(root)
    assert (info.layout, info.num_classes, len(info.cases), len(info.test_cases)) == ("nnunet", 8, 1, 1)
    train_img = nib.load(str(info.cases[0].label))
    test_img = nib.load(str(info.test_cases[0].label))
    assert train_img.shape == test_img.shape == (79, 192, 158)
    np.testing.assert_allclose(train_img.affine, test_img.affine)
    assert train_img.affine[0, 3] == -79  # x = −79 … −1 mm: the left hemisphere, midline slice excluded
    left, right = np.asarray(train_img.dataobj), np.asarray(test_img.dataobj)
    assert set(np.unique(left)) == set(np.unique(right)) == set(range(8))
    # Mirrored hemispheres overlap like an atlas should (copying the train label scores ≈ 0.84 mean Dice).
    overlap = [2 * np.sum((left == k) & (right == k)) / (np.sum(left == k) + np.sum(right == k)) for k in range(1, 8)]
    assert 0.75 < np.mean(overlap) < 0.95


def test_nuclei2d_halves(real_data_dir, tmp_path):
    root = build_nuclei2d(tmp_path / "nuclei2d")
    info = scan_dataset(root)
    assert (info.layout, info.num_classes, len(info.cases), len(info.test_cases)) == ("folders", 2, 1, 1)
    full = np.asarray(Image.open(real_data_dir / "nuclei2d" / "image.png"))
    left = np.asarray(Image.open(info.cases[0].images[0]))
    right = np.asarray(Image.open(info.test_cases[0].images[0]))
    np.testing.assert_array_equal(left, full[:, :256])
    np.testing.assert_array_equal(right, full[:, 256:])


def test_nuclei2d_tiles_diagonal_tests(real_data_dir, tmp_path):
    root = build_nuclei2d_tiles(tmp_path / "tiles", tile=128)
    info = scan_dataset(root)
    assert (info.layout, info.num_classes, len(info.cases), len(info.test_cases)) == ("folders", 2, 12, 4)
    assert sorted(c.case_id for c in info.test_cases) == [f"tile_r{k}_c{k}" for k in range(4)]
    full = np.asarray(Image.open(real_data_dir / "nuclei2d" / "image.png"))
    mask = np.asarray(Image.open(real_data_dir / "nuclei2d" / "mask.png"))
    tile = next(c for c in info.cases if c.case_id == "tile_r2_c3")
    np.testing.assert_array_equal(np.asarray(Image.open(tile.images[0])), full[256:384, 384:512])
    np.testing.assert_array_equal(np.asarray(Image.open(tile.label)), mask[256:384, 384:512])
    with pytest.raises(ValueError, match="2×2 grid"):
        build_nuclei2d_tiles(tmp_path / "bad", tile=300)


def test_shipped_files_match_the_readme_checksums():
    root = real_data_path()
    readme = (root / "README.md").read_text()
    listed = {name: digest for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M)}
    shipped = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "README.md")
    assert sorted(listed) == shipped and len(shipped) == 7
    for name, digest in listed.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
    with pytest.raises(InputError, match="unknown real data set 'mnist'"):
        real_data_path("mnist")
