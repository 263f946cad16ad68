"""Validation Dice during training: per class (softmax argmax) or per region (sigmoid > 0.5), ignore label left out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionseg.data.labels import LabelLayout
from fusionseg.evaluation.metrics import class_dice
from fusionseg.evaluation.validation_dice import probability_dice, score_names


def _onehot(label: np.ndarray, k: int) -> torch.Tensor:
    return torch.from_numpy(np.eye(k, dtype=np.float32)[label]).movedim(-1, 0)


def test_softmax_dice_per_class_leaves_out_the_ignore_label():
    label = np.zeros((6, 6), np.int64)
    label[1:4, 1:4] = 1  # 9 voxels
    label[5, :] = 3  # ignore
    pred = np.zeros_like(label)
    pred[1:4, 1:3] = 1  # 6 voxels, all inside
    pred[5, :] = 2  # class 2 predicted only on ignore voxels: must not count
    layout = LabelLayout(names={0: "bg", 1: "a", 2: "b"}, ignore_label=3)
    dice = probability_dice(_onehot(pred, 3), torch.from_numpy(label), layout)
    assert dice == pytest.approx([2 * 6 / 15, 1.0])
    assert score_names(layout) == ["a", "b"]
    plain = probability_dice(_onehot(pred, 3), torch.from_numpy(np.where(label == 3, 0, label)), layout)
    assert plain[1] == 0.0  # the same prediction scored without the ignore row: class 2 is wrong everywhere


def test_region_dice_thresholds_sigmoid_probabilities():
    layout = LabelLayout.from_dataset_json(
        {"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}, regions_class_order=[1, 2]
    )
    label = np.zeros((8, 8), np.int64)
    label[1:7, 1:7] = 1  # whole: 36
    label[3:5, 3:5] = 2  # core: 4
    label[0, :] = 3
    probs = torch.zeros(2, 8, 8)
    probs[0, 1:7, 1:4] = 0.9  # whole: 18 of 36
    probs[0, 0, :] = 0.9  # on ignore voxels
    probs[1, 3:5, 3:5] = 0.7  # core exact
    probs[1, 6, 6] = 0.5  # not above the threshold
    dice = probability_dice(probs, torch.from_numpy(label), layout)
    assert dice == pytest.approx([2 * 18 / 54, 1.0])
    assert score_names(layout) == ["whole", "core"]


def test_class_dice_by_confusion_counts_equals_per_class_masks():
    rng = np.random.default_rng(0)
    pred, gt = rng.integers(0, 120, (40, 40)), rng.integers(0, 120, (40, 40))
    gt[:5] = 119
    valid = rng.random((40, 40)) > 0.2
    ref = []
    for c in range(1, 120):
        p, g = (pred == c) & valid, (gt == c) & valid
        total = p.sum() + g.sum()
        ref.append(1.0 if total == 0 else 2 * (p & g).sum() / total)
    np.testing.assert_allclose(class_dice(pred, gt, 120, valid), ref, rtol=1e-12)
