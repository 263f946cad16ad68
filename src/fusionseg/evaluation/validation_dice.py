"""Validation during training: sliding-window Dice of preprocessed cases, per class or region.

Softmax models are scored per foreground class on the argmax; region models (sigmoid) per region
on probabilities > 0.5 against ``isin(label, region)``. Voxels with the dataset's ignore label are
left out. A class/region absent from both prediction and label scores 1. Cases are predicted slab by
slab within ``memory`` bytes (default :func:`~fusionseg.runtime.memory_budget.default_memory_budget`;
:mod:`fusionseg.inference.slab_inference`): the class scores of a whole case never exist.

Example:
    >>> scores = case_dice(model, items, pre, torch.device("cpu"))   # one mean foreground Dice per case
    >>> mean, per_class = validation_scores(model, items, pre, torch.device("cpu"))   # per_class: {name: Dice}
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fusionseg.data.io import label_dtype
from fusionseg.data.labels import LabelLayout, labels_to_regions
from fusionseg.data.preprocessing import Preprocessing
from fusionseg.data.transforms import plain_tensor
from fusionseg.evaluation.metrics import class_dice, dice_iou
from fusionseg.inference.slab_inference import SlabPlan, blended_slabs
from fusionseg.runtime.memory_budget import default_memory_budget

__all__ = [
    "case_dice",
    "case_scores",
    "predicted_masks",
    "prediction_dice",
    "probability_dice",
    "score_names",
    "validation_dice",
    "validation_scores",
]


def score_names(layout: LabelLayout) -> list[str]:
    """Names of what validation scores: the foreground classes, or the regions."""
    if layout.has_regions:
        return list(layout.output_names)
    return [layout.names[k] for k in range(1, layout.num_classes)]


def probability_dice(probabilities: torch.Tensor, label: torch.Tensor, layout: LabelLayout) -> np.ndarray:
    """Dice per foreground class / region of probabilities (C, *S) against a label map (*S) → (N,)."""
    pred = (probabilities > 0.5) if layout.has_regions else probabilities.argmax(0)
    return prediction_dice(pred.numpy(), label, layout)


@torch.no_grad()
def predicted_masks(
    model: nn.Module,
    image: torch.Tensor,
    pre: Preprocessing,
    device: torch.device,
    overlap: float = 0.25,
    amp_dtype: torch.dtype | None = None,
    memory: int | None = None,
) -> np.ndarray:
    """Argmax label map (*S), or region masks (R, *S) bool for region models, of a preprocessed image (C, *S),
    predicted slab by slab within ``memory`` bytes."""
    layout = pre.label_layout
    plan = SlabPlan.build([model], [pre], image.shape[1:], overlap=overlap, device=device, amp_dtype=amp_dtype)
    spatial = tuple(image.shape[1:])
    if layout.has_regions:
        pred = np.zeros((plan.num_classes, *spatial), dtype=bool)
    else:
        pred = np.zeros(spatial, dtype=label_dtype(plan.num_classes - 1))
    budget = memory if memory is not None else default_memory_budget()
    plan.fit_batch(budget)
    rows = plan.rows_within(budget)
    for lo, hi, scores in blended_slabs(plan, image.float(), plan.ranges(rows)):
        index = [slice(None)] * len(spatial)
        index[plan.axis] = slice(lo, hi)
        if layout.has_regions:
            every_region = (slice(None), *index)
            pred[every_region] = (scores > 0.5).cpu().numpy()
        else:
            pred[tuple(index)] = scores.argmax(0).cpu().numpy()
    return pred


def prediction_dice(pred: np.ndarray, label: torch.Tensor, layout: LabelLayout) -> np.ndarray:
    """Dice per foreground class / region of a label map (*S) or region masks (R, *S) against a label map → (N,)."""
    label_np = plain_tensor(label).long().numpy()
    valid = layout.valid_mask(label_np)
    if layout.regions is None:
        return class_dice(pred, label_np, layout.num_classes, valid)
    gt = labels_to_regions(label_np, layout.regions).astype(bool)
    if valid is not None:
        pred, gt = pred & valid, gt & valid
    return np.array([dice_iou(p, g)[0] for p, g in zip(pred, gt)])


@torch.no_grad()
def case_scores(
    model: nn.Module,
    items: list[dict],
    pre: Preprocessing,
    device: torch.device,
    overlap: float = 0.25,
    amp_dtype: torch.dtype | None = None,
    memory: int | None = None,
) -> list[np.ndarray]:
    """Dice per foreground class / region (:func:`score_names` order) of each preprocessed {"image", "label"} item."""
    layout = pre.label_layout
    scores = []
    for item in items:
        image, label = plain_tensor(item["image"]), plain_tensor(item["label"])[0].long()
        pred = predicted_masks(model, image, pre, device, overlap, amp_dtype, memory)
        scores.append(prediction_dice(pred, label, layout))
    return scores


def case_dice(
    model: nn.Module,
    items: list[dict],
    pre: Preprocessing,
    device: torch.device,
    overlap: float = 0.25,
    amp_dtype: torch.dtype | None = None,
) -> list[float]:
    """Mean foreground Dice (over classes / regions) of each item."""
    return [float(np.mean(s)) for s in case_scores(model, items, pre, device, overlap, amp_dtype)]


def validation_scores(
    model: nn.Module,
    items: list[dict],
    pre: Preprocessing,
    device: torch.device,
    overlap: float = 0.25,
    amp_dtype: torch.dtype | None = None,
) -> tuple[float, dict[str, float]]:
    """(mean Dice over cases and classes / regions, {class or region name: mean Dice over cases}); NaN without cases."""
    scores = case_scores(model, items, pre, device, overlap, amp_dtype)
    names = score_names(pre.label_layout)
    if not scores:
        return math.nan, {}
    per_class = np.mean(np.stack(scores), axis=0)
    return float(np.mean([np.mean(s) for s in scores])), {n: float(v) for n, v in zip(names, per_class)}


def validation_dice(
    model: nn.Module,
    items: list[dict],
    pre: Preprocessing,
    device: torch.device,
    overlap: float = 0.25,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Mean foreground Dice over cases and classes (NaN without cases)."""
    return validation_scores(model, items, pre, device, overlap, amp_dtype)[0]
