"""Losses chosen from the labels: softmax Dice + CE, masked for the ignore label, sigmoid Dice + BCE per region."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusionseg.data.labels import LabelLayout
from fusionseg.training.losses import (
    DeepSupervised,
    DeepSupervisedDiceCE,
    MaskedDiceCE,
    RegionDiceBCE,
    deep_supervision_weights,
    loss_for_labels,
)

REGIONS = ((1, 2, 3), (2, 3), (3,))
SHAPES = {2: (2, 1, 12, 10), 3: (2, 1, 8, 6, 4)}


def _labels(dims: int, top: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, top + 1, SHAPES[dims], generator=torch.Generator().manual_seed(seed))


def _logits(dims: int, channels: int, seed: int = 1) -> torch.Tensor:
    shape = (SHAPES[dims][0], channels, *SHAPES[dims][2:])
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), requires_grad=True)


def _batch_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Plain reference: 1 - batch Dice per channel (sums over batch and space), averaged over channels."""
    dims = [0, *range(2, probs.ndim)]
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return (1 - (2 * inter + smooth) / (total + smooth)).mean()


@pytest.mark.parametrize("dims", [2, 3])
def test_region_loss_matches_a_plain_reference(dims):
    label, logits = _labels(dims, 3), _logits(dims, 3)
    target = torch.stack([torch.isin(label[:, 0], torch.tensor(r)) for r in REGIONS], 1).float()
    probs = torch.sigmoid(logits)
    ref = _batch_dice_loss(probs, target) + F.binary_cross_entropy_with_logits(logits, target)
    loss = RegionDiceBCE(REGIONS)(logits, label.float())
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_region_loss_with_ignore_label_matches_reference_and_ignores_those_voxels(dims):
    label, logits = _labels(dims, 4), _logits(dims, 3)  # 4 = ignore
    valid = (label != 4).float()
    target = torch.stack([torch.isin(label[:, 0], torch.tensor(r)) for r in REGIONS], 1).float()
    probs = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    ref = _batch_dice_loss(probs * valid, target * valid) + (bce * valid).sum() / (valid.sum() * 3)
    loss_fn = RegionDiceBCE(REGIONS, ignore_label=4)
    loss = loss_fn(logits, label.float())
    torch.testing.assert_close(loss, ref)
    loss.backward()
    ignored = (label == 4).expand_as(logits)
    assert ignored.any() and torch.all(logits.grad[ignored] == 0) and torch.any(logits.grad[~ignored] != 0)
    with torch.no_grad():  # anything predicted on ignore voxels leaves the loss unchanged
        changed = logits.detach() + 50.0 * ignored
    torch.testing.assert_close(loss_fn(changed, label.float()), loss.detach())


@pytest.mark.parametrize("dims", [2, 3])
def test_masked_dice_ce_matches_reference_and_ignores_those_voxels(dims):
    label, logits = _labels(dims, 3), _logits(dims, 3)  # classes 0..2, 3 = ignore
    valid = (label != 3).float()
    target = torch.where(label == 3, 0, label)
    onehot = F.one_hot(target[:, 0], 3).movedim(-1, 1).float()
    probs = torch.softmax(logits, 1)
    dice = _batch_dice_loss((probs * valid)[:, 1:], (onehot * valid)[:, 1:])
    ce = F.cross_entropy(logits, target[:, 0], reduction="none")
    ref = dice + (ce * valid[:, 0]).sum() / valid.sum()
    loss_fn = MaskedDiceCE(ignore_label=3)
    loss = loss_fn(logits, label.float())
    torch.testing.assert_close(loss, ref)
    loss.backward()
    ignored = (label == 3).expand_as(logits)
    assert ignored.any() and torch.all(logits.grad[ignored] == 0)
    with torch.no_grad():
        changed = logits.detach() - 30.0 * ignored
    torch.testing.assert_close(loss_fn(changed, label.float()), loss.detach())


def test_masked_dice_ce_without_ignore_voxels_equals_monai_dice_ce():
    from monai.losses import DiceCELoss

    label, logits = _labels(2, 2), _logits(2, 3)
    ref = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)(logits, label.float())
    torch.testing.assert_close(MaskedDiceCE(ignore_label=3)(logits, label.float()), ref)


def test_all_voxels_ignored_gives_a_finite_loss():
    label = torch.full((1, 1, 6, 6), 4.0)
    logits = torch.randn(1, 3, 6, 6, requires_grad=True)
    loss = RegionDiceBCE(REGIONS, ignore_label=4)(logits, label)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_deep_supervision_downsamples_the_label_map_for_every_scale():
    label = _labels(2, 4)
    outputs = (_logits(2, 3, 1), _logits(2, 3, 2)[..., ::2, ::2], _logits(2, 3, 3)[..., ::4, ::4])
    inner = RegionDiceBCE(REGIONS, ignore_label=4)
    ref = sum(
        w * inner(o, F.interpolate(label.float(), size=o.shape[2:], mode="nearest-exact"))
        for w, o in zip(deep_supervision_weights(3), outputs)
    )
    torch.testing.assert_close(DeepSupervised(inner)(outputs, label), ref)
    torch.testing.assert_close(DeepSupervised(inner)(outputs[0], label), inner(outputs[0], label.float()))


def test_loss_for_labels_picks_by_layout():
    plain = LabelLayout(names={0: "bg", 1: "a", 2: "b"})
    ignore = LabelLayout(names={0: "bg", 1: "a"}, ignore_label=2)
    regions = LabelLayout.from_dataset_json(
        {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enh": 3, "ignore": 4}, regions_class_order=[1, 2, 3]
    )
    assert type(loss_for_labels(plain)) is DeepSupervisedDiceCE
    masked = loss_for_labels(ignore)
    assert isinstance(masked.loss.loss, MaskedDiceCE) and masked.loss.loss.ignore_label == 2
    region = loss_for_labels(regions).loss.loss
    assert isinstance(region, RegionDiceBCE) and region.regions == REGIONS and region.ignore_label == 4


def test_region_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="region"):
        RegionDiceBCE([])
    with pytest.raises(ValueError, match="3 regions"):
        RegionDiceBCE(REGIONS)(torch.randn(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))
