"""``fusionseg relabel``: non-consecutive label values → 0..K-1, the mapping in dataset.json, predictions back."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from dataset_builders import OBLIQUE_3D, nnunet_dataset
from fusionseg.cli import main as cli
from fusionseg.data import read_label, scan_dataset
from fusionseg.data.relabel import relabel_dataset, restore_original_labels
from fusionseg.errors import InputError

LABELS = {"background": 0, "amygdala": 2001, "caudate": 17, "ignore": 4000}


def _atlas(root, affine=OBLIQUE_3D):
    rng = np.random.default_rng(0)
    maps = {}
    for case in ("a", "b"):
        label = rng.choice(np.array([0, 17, 2001], np.uint16), size=(10, 9, 6))
        label[0, 0, 0] = 4000
        maps[case] = label
    images = {case: [rng.random((10, 9, 6)).astype(np.float32)] for case in maps}
    nnunet_dataset(root, images, maps, ".nii.gz", affine, channel_names={"0": "MRI"}, labels=LABELS, name="atlas")
    return maps


def test_relabel_writes_a_new_dataset_with_the_mapping(tmp_path, capsys):
    source, target = tmp_path / "Dataset777_Atlas", tmp_path / "Dataset778_Relabelled"
    maps = _atlas(source)
    before = {p.name: p.read_bytes() for p in (source / "labelsTr").iterdir()}
    with pytest.raises(InputError, match="must be consecutive from 0"):
        scan_dataset(source)
    assert cli(["relabel", "--data", str(source), "--output", str(target)]) == 0
    meta = json.loads((target / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "amygdala": 2, "caudate": 1, "ignore": 3}
    assert meta["original_labels"] == {"0": 0, "1": 17, "2": 2001, "3": 4000} and meta["name"] == "atlas"
    for case, original in maps.items():
        label, label_meta = read_label(target / "labelsTr" / f"{case}.nii.gz")
        expected = np.select([original == 17, original == 2001, original == 4000], [1, 2, 3], 0)
        assert np.array_equal(label, expected)
        np.testing.assert_allclose(label_meta["affine"], OBLIQUE_3D, atol=1e-5)  # geometry kept
        assert np.array_equal(restore_original_labels(label, [0, 17, 2001, 4000]), original)
    assert {p.name: p.read_bytes() for p in (source / "labelsTr").iterdir()} == before  # the source is untouched
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == ["a_0000.nii.gz", "b_0000.nii.gz"]
    info = scan_dataset(target)
    assert info.num_classes == 3 and info.ignore_label == 3 and info.original_labels == [0, 17, 2001, 4000]
    assert cli(["relabel", "--data", str(source), "--output", str(target)]) == 2  # never over an existing folder
    assert "exists and is not empty" in capsys.readouterr().err


def test_relabel_in_place_needs_the_flag_and_rewrites_the_labels(tmp_path, capsys):
    source = tmp_path / "Dataset777_Atlas"
    maps = _atlas(source)
    with pytest.raises(SystemExit):  # neither --output nor --in-place
        cli(["relabel", "--data", str(source)])
    assert "one of the arguments --output --in-place is required" in capsys.readouterr().err
    assert cli(["relabel", "--data", str(source), "--in-place"]) == 0
    label, _ = read_label(source / "labelsTr" / "a.nii.gz")
    assert set(np.unique(label)) <= {0, 1, 2, 3} and np.count_nonzero(label == 2) == np.count_nonzero(maps["a"] == 2001)
    assert scan_dataset(source).original_labels == [0, 17, 2001, 4000]
    assert cli(["relabel", "--data", str(source), "--in-place"]) == 2
    assert "already 0..3; nothing to relabel" in capsys.readouterr().err


def test_predictions_of_a_relabelled_dataset_go_back_to_the_original_values(tmp_path):
    from fusionseg.data import load_for_inference
    from fusionseg.data.plan import plan_dataset
    from fusionseg.inference.predict_files import _save_label_map

    source, target = tmp_path / "atlas", tmp_path / "relabelled"
    maps = _atlas(source, affine=np.eye(4))  # RAS, 1 mm: the preprocessed grid is the input grid
    relabel_dataset(source, target, log=lambda *a: None)
    pre = plan_dataset(scan_dataset(target), cache=tmp_path / "cache").preprocessing
    assert pre.original_labels == (0, 17, 2001, 4000)
    image, meta = load_for_inference([target / "imagesTr" / "a_0000.nii.gz"], pre)
    relabelled, _ = read_label(target / "labelsTr" / "a.nii.gz")
    classes = np.where(relabelled == 3, 0, relabelled).astype(np.int64)  # the ignore voxel predicted as background
    probs = torch.nn.functional.one_hot(torch.as_tensor(classes), 3)
    probs = probs.permute(3, 0, 1, 2).float()  # a perfect prediction on the input grid (no ignore class)
    assert tuple(probs.shape[1:]) == tuple(image.shape[1:])
    out = _save_label_map(probs, meta, tmp_path / "a.nii.gz", None, False)
    written, _ = read_label(out)
    expected = np.where(maps["a"] == 4000, 0, maps["a"])
    assert np.array_equal(written, expected)  # 17 and 2001, as in the source atlas
    meta["preprocessing"] = replace(
        meta["preprocessing"], original_labels=None
    )  # predict_files(..., original_labels=False)
    written, _ = read_label(_save_label_map(probs, meta, tmp_path / "b.nii.gz", None, False))
    assert np.array_equal(written, classes)
