"""Training losses over one output or a deep-supervision tuple, chosen from the dataset's labels.

- plain classes: Dice + cross-entropy on softmax outputs (:class:`DeepSupervisedDiceCE`, MONAI ``DiceCELoss``);
- with an ignore label: the same, averaged over annotated voxels only (:class:`MaskedDiceCE`);
- regions: per-region Dice + binary cross-entropy on sigmoid outputs (:class:`RegionDiceBCE`), ignore
  voxels excluded.

:func:`loss_for_labels` picks one from a :class:`~fusionseg.data.labels.LabelLayout`. Every loss takes
the logits (B, C, *S) — or a tuple of them, full resolution first — and the integer label map
(B, 1, *S) from the data pipeline; deep-supervision weights halve per scale (normalised to sum 1)
and the label map is resized to each output with nearest-exact interpolation (MONAI
``DeepSupervisionLoss``), so ignore voxels stay ignore voxels at every scale.

Example:
    >>> loss = DeepSupervisedDiceCE()
    >>> loss((torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)), torch.randint(0, 3, (2, 1, 8, 8))).ndim
    0
    >>> loss = loss_for_labels(pre.label_layout)   # regions → RegionDiceBCE, ...
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusionseg.data.labels import LabelLayout, labels_to_regions

__all__ = [
    "DeepSupervised",
    "DeepSupervisedDiceCE",
    "MaskedDiceCE",
    "RegionDiceBCE",
    "deep_supervision_weights",
    "loss_for_labels",
]


def deep_supervision_weights(levels: int) -> list[float]:
    """Weights 1, 1/2, 1/4, ... normalised to sum 1 (full resolution first)."""
    raw = [0.5**i for i in range(levels)]
    total = sum(raw)
    return [w / total for w in raw]


class DeepSupervised(nn.Module):
    """``loss(logits, label_map)`` over one output or a deep-supervision tuple (MONAI ``DeepSupervisionLoss``).

    A tuple gets :func:`deep_supervision_weights`; logits in a lower precision (autocast) are scored in float32.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        from monai.losses import DeepSupervisionLoss

        # MONAI annotates _Loss; it only calls the module, and the masked / region losses here are plain modules
        self.loss = DeepSupervisionLoss(loss, weight_mode="exp")  # type: ignore[arg-type]

    def forward(self, outputs: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, list | tuple):
            self.loss.weights = deep_supervision_weights(len(outputs))
            return self.loss([o.float() for o in outputs], target.float())
        return self.loss(outputs.float(), target.float())


class DeepSupervisedDiceCE(DeepSupervised):
    """MONAI ``DiceCELoss`` (softmax, one-hot target, batch Dice) over one or several outputs."""

    def __init__(self, include_background: bool = False) -> None:
        from monai.losses import DiceCELoss

        super().__init__(DiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True, batch=True))


def _masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over voxels where ``valid`` (broadcast) is true; 0 when none is."""
    if valid is None:
        return values.mean()
    weights = valid.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


class MaskedDiceCE(nn.Module):
    """Softmax Dice + cross-entropy of one output that leaves out voxels labelled ``ignore_label``.

    Dice: MONAI ``MaskedDiceLoss`` (softmax first, then probabilities and one-hot target are zeroed
    outside the annotation; batch Dice, background excluded); cross-entropy: the mean over annotated
    voxels. ``forward(logits (B, K, *S), label (B, 1, *S))``; use :class:`DeepSupervised` around it.
    """

    def __init__(self, ignore_label: int, include_background: bool = False) -> None:
        super().__init__()
        from monai.losses import MaskedDiceLoss

        self.ignore_label = int(ignore_label)
        self.dice = MaskedDiceLoss(include_background=include_background, to_onehot_y=True, softmax=True, batch=True)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        label = label.round().long()
        valid = label != self.ignore_label  # (B, 1, *S)
        target = label * valid  # ignore → background; masked out below
        dice = self.dice(logits, target, mask=valid.to(logits.dtype))
        ce = F.cross_entropy(logits, target[:, 0], reduction="none")  # (B, *S)
        return dice + _masked_mean(ce, valid[:, 0])


class RegionDiceBCE(nn.Module):
    """Sigmoid Dice + binary cross-entropy per region (nnU-Net's region training), ignore voxels left out.

    Region r's target is ``isin(label, regions[r])``. Dice: MONAI ``DiceLoss`` (sigmoid, batch Dice,
    every channel — regions are foreground), or ``MaskedDiceLoss`` with an ignore label; BCE with
    logits: the mean over annotated voxels and regions. ``forward(logits (B, R, *S), label (B, 1, *S))``.
    """

    def __init__(self, regions: Sequence[Sequence[int]], ignore_label: int | None = None) -> None:
        super().__init__()
        from monai.losses import DiceLoss, MaskedDiceLoss

        if not regions:
            raise ValueError("RegionDiceBCE needs at least one region (a list of label values)")
        self.regions = tuple(tuple(int(v) for v in r) for r in regions)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        kind = DiceLoss if self.ignore_label is None else MaskedDiceLoss
        self.dice = kind(include_background=True, sigmoid=True, batch=True)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != len(self.regions):
            raise ValueError(f"{logits.shape[1]} output channels for {len(self.regions)} regions")
        label = label.round().long()
        target = labels_to_regions(label[:, 0], self.regions, dim=1).to(logits.dtype)  # (B, R, *S)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        if self.ignore_label is None:
            return self.dice(logits, target) + bce.mean()
        valid = label != self.ignore_label  # (B, 1, *S)
        dice = self.dice(logits, target, mask=valid.to(logits.dtype))
        return dice + _masked_mean(bce, valid)


def loss_for_labels(layout: LabelLayout) -> nn.Module:
    """The training loss of ``layout``: regions → :class:`RegionDiceBCE`, an ignore label →
    :class:`MaskedDiceCE`, else :class:`DeepSupervisedDiceCE` — each over deep-supervision tuples."""
    if layout.regions is not None:
        return DeepSupervised(RegionDiceBCE(layout.regions, layout.ignore_label))
    if layout.ignore_label is not None:
        return DeepSupervised(MaskedDiceCE(layout.ignore_label))
    return DeepSupervisedDiceCE()
