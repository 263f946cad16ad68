"""Label layouts: dataset.json parsing (classes, regions, ignore label), labels ↔ regions, targets, bad entries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fusionseg.data import LabelLayout, labels_to_regions, regions_to_labels, valid_mask
from fusionseg.errors import InputError

BRATS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing": 3}


def _reference_regions_to_labels(probs: np.ndarray, order: list[int]) -> np.ndarray:
    """nnU-Net's loop, written out: paint each region's label in order, later ones on top."""
    seg = np.zeros(probs.shape[1:], dtype=np.uint8)
    for i, c in enumerate(order):
        seg[probs[i] > 0.5] = c
    return seg


def test_brats_regions_with_ignore_label():
    layout = LabelLayout.from_dataset_json({**BRATS, "ignore": 4}, [1, 2, 3])
    assert layout.has_regions and layout.activation == "sigmoid"
    assert (layout.num_classes, layout.out_channels, layout.ignore_label) == (4, 3, 4)
    assert layout.regions == ((1, 2, 3), (2, 3), (3,)) and layout.regions_class_order == (1, 2, 3)
    assert layout.region_names == ("whole tumor", "tumor core", "enhancing")
    assert layout.names == {0: "background", 1: "label1", 2: "label2", 3: "enhancing"}
    assert layout.allowed_values == [0, 1, 2, 3, 4]
    pre = layout.to_preprocessing()
    assert json.loads(json.dumps(pre)) == pre and LabelLayout.from_preprocessing(pre) == layout


@pytest.mark.parametrize(
    ("labels", "classes", "ignore"),
    [
        ({"background": 0, "liver": 1, "tumour": 2}, 3, None),
        ({"0": "background", "1": "edema", "2": "tumour"}, 3, None),  # MSD dialect
        ({"background": 0, "a": [1], "b": 2, "ignore": 3}, 3, 3),  # one-element lists are plain classes
        ({"background": 0, **{f"c{k}": k for k in range(1, 120)}}, 120, None),
    ],
)
def test_plain_layouts(labels, classes, ignore):
    layout = LabelLayout.from_dataset_json(labels)
    assert (layout.num_classes, layout.out_channels, layout.ignore_label) == (classes, classes, ignore)
    assert not layout.has_regions and layout.activation == "softmax" and layout.names[0] == "background"
    assert LabelLayout.from_preprocessing(layout.to_preprocessing()) == layout


def test_old_preprocessing_dicts_read_as_plain_classes():
    old = {"num_classes": 3, "labels": {"0": "background", "1": "a", "2": "b"}}
    layout = LabelLayout.from_preprocessing(old)
    assert layout.num_classes == 3 and layout.regions is None and layout.ignore_label is None


@pytest.mark.parametrize("use_torch", [False, True])
def test_labels_to_regions_and_back_follow_nnunet(use_torch):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (6, 7, 5))
    layout = LabelLayout.from_dataset_json(BRATS, [1, 2, 3])
    regions = labels_to_regions(torch.from_numpy(label) if use_torch else label, layout.regions)
    regions = regions.numpy() if use_torch else regions
    assert regions.shape == (3, 6, 7, 5)
    np.testing.assert_array_equal(regions[0], label > 0)
    np.testing.assert_array_equal(regions[1], (label == 2) | (label == 3))
    np.testing.assert_array_equal(regions[2], label == 3)
    probs = regions * 0.8 + rng.uniform(0, 0.15, regions.shape)  # "confident" probabilities
    probs_in = torch.from_numpy(probs) if use_torch else probs
    back = regions_to_labels(probs_in, layout.regions_class_order)
    back = back.numpy() if use_torch else back
    np.testing.assert_array_equal(back, label)  # nested regions: the round trip is exact
    np.testing.assert_array_equal(back, _reference_regions_to_labels(probs, [1, 2, 3]))


def test_regions_class_order_later_regions_overwrite():
    probs = np.zeros((2, 1, 3))
    probs[0, 0, :2] = 0.9  # region 0 on voxels 0, 1
    probs[1, 0, 1:] = 0.7  # region 1 on voxels 1, 2
    np.testing.assert_array_equal(regions_to_labels(probs, [5, 2])[0], [5, 2, 2])
    np.testing.assert_array_equal(regions_to_labels(probs, [2, 5])[0], [2, 5, 5])
    np.testing.assert_array_equal(regions_to_labels(probs > 0.5, [2, 5])[0], [2, 5, 5])  # masks work too
    with pytest.raises(ValueError, match="2 region channels but regions_class_order has 3"):
        regions_to_labels(probs, [1, 2, 3])


def test_batched_regions_and_label_maps():
    label = torch.randint(0, 4, (2, 5, 6))
    layout = LabelLayout.from_dataset_json(BRATS, [1, 2, 3])
    targets, valid = layout.targets(label, dim=1)
    assert targets.shape == (2, 3, 5, 6) and targets.dtype == torch.float32 and valid is None
    assert torch.equal(layout.to_label_map(targets, dim=1).long(), label)


def test_targets_with_ignore_label():
    label = np.array([[0, 1, 2, 3], [3, 1, 0, 2]])
    plain = LabelLayout.from_dataset_json({"background": 0, "a": 1, "b": 2, "ignore": 3})
    target, valid = plain.targets(label)
    np.testing.assert_array_equal(valid, label != 3)
    np.testing.assert_array_equal(target, np.where(label == 3, 0, label))
    t_target, t_valid = plain.targets(torch.from_numpy(label))
    assert torch.equal(t_target, torch.from_numpy(target)) and torch.equal(t_valid, torch.from_numpy(valid))
    assert valid_mask(label, None) is None
    regional = LabelLayout.from_dataset_json({"background": 0, "fg": [1, 2], "b": 2, "ignore": 3}, [1, 2])
    regions, valid = regional.targets(label)
    np.testing.assert_array_equal(regions[0], np.isin(label, [1, 2]))  # the ignore value is in no region
    np.testing.assert_array_equal(valid, label != 3)


def test_softmax_label_map_is_argmax():
    probs = torch.softmax(torch.randn(4, 3, 3), 0)
    layout = LabelLayout.from_dataset_json({"background": 0, "a": 1, "b": 2, "c": 3})
    assert torch.equal(layout.to_label_map(probs), probs.argmax(0))


@pytest.mark.parametrize(
    ("labels", "order", "message"),
    [
        ({"background": 0, "a": 2}, None, r"label values must be consecutive from 0 \(background\), got \[0, 2\]"),
        ({"background": 0, "a": 1, "ignore": 5}, None, r'"ignore" = 5 must be the highest label value \(2\)'),
        ({"background": 0, "a": 1, "ignore": [2, 3]}, None, '"ignore" = \\[2, 3\\] must be one integer'),
        (BRATS, None, r'region labels need "regions_class_order" \(one label value per region, e\.g\. \[1, 2, 3\]\)'),
        (BRATS, [1, 2], r'"regions_class_order" has 2 entries but there are 3 regions'),
        (BRATS, [1, 2, 7], r'"regions_class_order" values \[7\] are not label values \[0, 1, 2, 3\]'),
        ({"background": 0, "a": 1.5}, None, r"label 'a' = 1\.5; use a non-negative integer or a list"),
        ({"background": 0, "a": -1}, None, r"label 'a' = -1"),
        ({"background": 0, "a": True}, None, r"label 'a' = True"),
        ({"background": 0, "a": 1, "b": 1}, None, r"labels 'a' and 'b' share the value 1"),
        ({"background": 0}, None, "needs at least one foreground label"),
        ([0, 1], None, '"labels" must be a non-empty object'),
    ],
)
def test_bad_labels_give_one_line_errors(labels, order, message):
    with pytest.raises(InputError, match=message) as err:
        LabelLayout.from_dataset_json(labels, order, source="ds/dataset.json")
    text = str(err.value)
    assert text.startswith("ds/dataset.json: ") and "\n" not in text


def test_non_consecutive_label_error_lists_a_few_values_and_points_to_relabel():
    """An atlas with 725 labels: the one-line error shows 6 values and the count, and names the fix."""
    labels = {"background": 0, **{f"region{v}": v for v in range(2001, 2001 + 3 * 724, 3)}}
    with pytest.raises(InputError) as err:
        LabelLayout.from_dataset_json(labels)
    message = str(err.value)
    assert "[0, 2001, 2004, 2007, 2010, 2013, ...] (725 values)" in message and len(message) < 250
    assert "fusionseg relabel --data DATASET --output NEW_DATASET" in message and "\n" not in message
